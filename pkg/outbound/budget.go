package outbound

import (
	"cmp"
	"slices"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringcast/ringcast/pkg/wire"
)

// Outbound bytes and slow consumers. Every byte queued for a client, or
// taken by a writer and not yet accepted by the socket, counts in the
// node-wide budget (Config.MaxOutbound). A connection is a slow consumer,
// closed 4008 with its queue dropped, when
//
//   - its queue passes SendQueue frames or SendQueueBytes bytes,
//   - its oldest unwritten frame is older than MaxLag (a bounded socket
//     send buffer, SendBuffer, keeps the kernel from hiding that lag), or
//   - the node is over its budget and it is among the slowest: once the
//     total passes MaxOutbound, the connections whose sockets are full
//     are closed, largest backlog first (oldest frame on a tie), until the
//     total is back under 3/4 of it. Until then the node is overloaded and
//     refuses new work (Pool.Overloaded). A frame that would take the
//     total past 5/4 of the budget is not queued: its connection is closed.

// Reasons a connection was closed as a slow consumer (the metric's label).
const (
	reasonQueue  = "queue"
	reasonLag    = "lag"
	reasonBudget = "budget"
)

// outState is a connection's outbound accounting beyond its queue, guarded
// by Queue.mu.
type outState struct {
	inflight   int   // payload bytes taken from the queue and not yet written
	inflightAt int64 // Clock() when the first frame in flight was queued; 0 = none
	cut        int64 // Clock() of a shed connection's write deadline; 0 = none
}

// collectors are the budget's gauges.
func (b *budget) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_outbound_bytes",
			Help: "Bytes queued for clients or being written to them, node-wide (bounded by the outbound budget).",
		}, func() float64 { return float64(b.bytes.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_outbound_budget_bytes",
			Help: "The node-wide outbound budget (-max-outbound): past it the slowest consumers are closed 4008.",
		}, func() float64 { return float64(b.max) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_overloaded",
			Help: "1 while the node sheds slow consumers and refuses new connections and publishes (over its outbound budget).",
		}, func() float64 {
			if b.over.Load() {
				return 1
			}
			return 0
		}),
	}
}

// reserve counts n more bytes, starting a shedding pass when the total
// passes the budget. It reports false, counting nothing, when the total
// would pass 5/4 of the budget.
func (p *Pool) reserve(n int) bool {
	b := &p.b
	v := b.bytes.Add(int64(n))
	if v > b.max+b.max/4 {
		b.bytes.Add(-int64(n))
		return false
	}
	if v > b.max && b.over.CompareAndSwap(false, true) {
		p.wg.Add(1)
		go p.shed()
	}
	return true
}

func (p *Pool) release(n int) {
	if n != 0 {
		p.b.bytes.Add(-int64(n))
	}
}

// setBlocked records whether s's writes block (it is in writeLoop).
func (p *Pool) setBlocked(s Sink, on bool) {
	b := &p.b
	b.mu.Lock()
	if on {
		b.blocked[s] = struct{}{}
	} else {
		delete(b.blocked, s)
	}
	b.mu.Unlock()
}

// shedPause is how long a shedding pass waits for the bytes of the
// connections it closed to come back (their writes end within CloseGrace)
// before it looks again.
const shedPause = 50 * time.Millisecond

// shed closes the slowest consumers until the total is under 3/4 of the
// budget, then ends the overload.
func (p *Pool) shed() {
	defer p.wg.Done()
	b := &p.b
	low := b.max * 3 / 4
	t := time.NewTimer(0)
	defer t.Stop()
	for range t.C {
		if excess := b.bytes.Load() - low; excess > 0 {
			p.closeSlowest(excess)
			if b.bytes.Load() > low {
				t.Reset(shedPause)
				continue
			}
		}
		b.over.Store(false)
		// A reserve that passed max between the load and the store saw
		// over set and started no pass: this one goes on for it.
		if b.bytes.Load() <= b.max || !b.over.CompareAndSwap(false, true) {
			return
		}
		t.Reset(0)
	}
}

// closeSlowest closes blocked connections, largest backlog first, until
// excess bytes are on their way back. Connections shed earlier whose
// writes have not ended yet count as on their way.
func (p *Pool) closeSlowest(excess int64) {
	type victim struct {
		s       Sink
		bytes   int
		at      int64
		closing bool
	}
	p.b.mu.Lock()
	vs := make([]victim, 0, len(p.b.blocked))
	for s := range p.b.blocked {
		vs = append(vs, victim{s: s})
	}
	p.b.mu.Unlock()
	for i := range vs {
		v := &vs[i]
		q := v.s.Queue()
		q.mu.Lock()
		v.bytes, v.at, v.closing = q.queued+q.out.inflight, q.oldest(), q.closing
		q.mu.Unlock()
		if v.closing {
			excess -= int64(v.bytes)
		}
	}
	slices.SortFunc(vs, func(a, b victim) int {
		if a.bytes != b.bytes {
			return cmp.Compare(b.bytes, a.bytes)
		}
		return cmp.Compare(a.at, b.at)
	})
	for _, v := range vs {
		if excess <= 0 {
			return
		}
		if !v.closing && p.closeSlow(v.s, reasonBudget) {
			excess -= int64(v.bytes)
		}
	}
}

// clockBase makes Clock monotonic: time.Since reads the monotonic clock.
var clockBase = time.Now()

// Clock is a monotonic timestamp in nanoseconds, never 0: what frames and
// closes are stamped with (8 bytes where a time.Time takes 24).
func Clock() int64 { return int64(time.Since(clockBase)) + 1 }

// ClockTime is the time of clock reading t (monotonic, like time.Now's).
func ClockTime(t int64) time.Time { return clockBase.Add(time.Duration(t - 1)) }

// Send queues one frame for s, or closes s as a slow consumer. It reports
// whether the frame was queued.
func (p *Pool) Send(s Sink, op ws.OpCode, b []byte) bool {
	now := Clock()
	q := s.Queue()
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return false
	}
	reason := ""
	switch {
	case len(q.frames) >= p.cfg.SendQueue || q.queued+len(b) > p.cfg.SendQueueBytes:
		reason = reasonQueue
	case p.lagging(q, now):
		reason = reasonLag
	case !p.reserve(len(b)):
		reason = reasonBudget
	}
	if reason != "" {
		p.shedLocked(s, q, reason)
		q.mu.Unlock()
		s.Kick()
		return false
	}
	q.frames = append(q.frames, frame{op, b, now})
	q.queued += len(b)
	p.startWriter(s, q)
	q.mu.Unlock()
	return true
}

// oldest is when the oldest unwritten frame was queued (Clock()), 0 when
// none is. Called with q.mu held.
func (q *Queue) oldest() int64 {
	if q.out.inflightAt != 0 {
		return q.out.inflightAt
	}
	if len(q.frames) > 0 {
		return q.frames[0].at
	}
	return 0
}

// lagging reports whether q's oldest unwritten frame is older than MaxLag.
// Called with q.mu held.
func (p *Pool) lagging(q *Queue, now int64) bool {
	at := q.oldest()
	return at != 0 && time.Duration(now-at) > p.cfg.MaxLag
}

// closeSlow closes s as a slow consumer; false when it was closing already.
func (p *Pool) closeSlow(s Sink, reason string) bool {
	q := s.Queue()
	q.mu.Lock()
	ok := p.shedLocked(s, q, reason)
	q.mu.Unlock()
	if ok {
		s.Kick() // a parked reader drains the peer under the close deadlines
	}
	return ok
}

// shedLocked drops s's queue, gives its bytes back to the budget and
// queues a 4008 close. What a writer holds already goes first, under a
// write deadline of CloseGrace, so a client that does not read gives its
// memory back within that. Called with q.mu held; the caller kicks s
// after unlocking.
func (p *Pool) shedLocked(s Sink, q *Queue, reason string) bool {
	if q.closing {
		return false
	}
	p.slow.WithLabelValues(reason).Inc()
	p.release(q.queued)
	clear(q.frames)
	q.frames, q.queued = q.frames[:0], 0
	q.out.cut = Clock() + int64(p.cfg.CloseGrace)
	s.Conn().SetWriteDeadline(ClockTime(q.out.cut))
	p.queueClose(s, q, wire.CloseSlowConsumer, p.slowReason(reason))
	return true
}

// slowReason is the close reason of a slow consumer shed for reason.
func (p *Pool) slowReason(reason string) string {
	switch reason {
	case reasonQueue:
		return "slow consumer: send queue full"
	case reasonLag:
		return "slow consumer: more than " + p.cfg.MaxLag.String() + " behind"
	case reasonBudget:
		return "slow consumer: node over its outbound budget"
	}
	return "slow consumer: "
}

// queueClose queues a close frame (never refused, counted in the budget)
// and stops accepting frames. Called with q.mu held.
func (p *Pool) queueClose(s Sink, q *Queue, code int, reason string) {
	q.closing, q.closedAt = true, Clock()
	b := ws.NewCloseFrameBody(ws.StatusCode(code), reason)
	p.b.bytes.Add(int64(len(b)))
	q.frames = append(q.frames, frame{ws.OpClose, b, Clock()})
	q.queued += len(b)
	p.startWriter(s, q)
}
