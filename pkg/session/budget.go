package session

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
//     refuses new work (Upgrader.Overloaded). A frame that would take the
//     total past 5/4 of the budget is not queued: its connection is closed.

// Reasons a connection was closed as a slow consumer (the metric's label).
const (
	reasonQueue  = "queue"
	reasonLag    = "lag"
	reasonBudget = "budget"
)

// outState is a connection's outbound accounting beyond its queue, guarded
// by Conn.mu.
type outState struct {
	inflight   int       // payload bytes taken from the queue and not yet written
	inflightAt int64     // clock() when the first frame in flight was queued; 0 = none
	cut        time.Time // write deadline of a shed connection; zero = none
}

// outbound is the node-wide budget.
type outbound struct {
	u     *Upgrader
	max   int64
	bytes atomic.Int64 // queued and in flight, over every connection
	over  atomic.Bool  // shedding: passed max, not yet back under 3/4 of it

	mu      sync.Mutex
	blocked map[*Conn]struct{} // connections whose socket is full: the shedding candidates
}

func newOutbound(u *Upgrader, reg prometheus.Registerer) (*outbound, error) {
	o := &outbound{u: u, max: u.cfg.MaxOutbound, blocked: map[*Conn]struct{}{}}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_outbound_bytes",
			Help: "Bytes queued for clients or being written to them, node-wide (bounded by the outbound budget).",
		}, func() float64 { return float64(o.bytes.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_outbound_budget_bytes",
			Help: "The node-wide outbound budget (-max-outbound): past it the slowest consumers are closed 4008.",
		}, func() float64 { return float64(o.max) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_overloaded",
			Help: "1 while the node sheds slow consumers and refuses new connections and publishes (over its outbound budget).",
		}, func() float64 {
			if o.over.Load() {
				return 1
			}
			return 0
		}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("session: register metrics: %w", err)
		}
	}
	return o, nil
}

// Overloaded reports whether the node is over its outbound budget and
// shedding: new connections and publishes should be refused meanwhile.
func (u *Upgrader) Overloaded() bool { return u.out.over.Load() }

// MaxOutbound is the node-wide outbound budget in effect, in bytes.
func (u *Upgrader) MaxOutbound() int64 { return u.out.max }

// reserve counts n more bytes, starting a shedding pass when the total
// passes the budget. It reports false, counting nothing, when the total
// would pass 5/4 of the budget.
func (o *outbound) reserve(n int) bool {
	v := o.bytes.Add(int64(n))
	if v > o.max+o.max/4 {
		o.bytes.Add(-int64(n))
		return false
	}
	if v > o.max && o.over.CompareAndSwap(false, true) {
		o.u.deps.WG.Add(1)
		go o.shed()
	}
	return true
}

func (o *outbound) release(n int) {
	if n != 0 {
		o.bytes.Add(-int64(n))
	}
}

// setBlocked records whether c's writes block (it is in writeLoop).
func (o *outbound) setBlocked(c *Conn, on bool) {
	o.mu.Lock()
	if on {
		o.blocked[c] = struct{}{}
	} else {
		delete(o.blocked, c)
	}
	o.mu.Unlock()
}

// shedPause is how long a shedding pass waits for the bytes of the
// connections it closed to come back (their writes end within CloseGrace)
// before it looks again.
const shedPause = 50 * time.Millisecond

// shed closes the slowest consumers until the total is under 3/4 of the
// budget, then ends the overload.
func (o *outbound) shed() {
	defer o.u.deps.WG.Done()
	low := o.max * 3 / 4
	t := time.NewTimer(0)
	defer t.Stop()
	for range t.C {
		if excess := o.bytes.Load() - low; excess > 0 {
			o.closeSlowest(excess)
			if o.bytes.Load() > low {
				t.Reset(shedPause)
				continue
			}
		}
		o.over.Store(false)
		// A reserve that passed max between the load and the store saw
		// over set and started no pass: this one goes on for it.
		if o.bytes.Load() <= o.max || !o.over.CompareAndSwap(false, true) {
			return
		}
		t.Reset(0)
	}
}

// closeSlowest closes blocked connections, largest backlog first, until
// excess bytes are on their way back. Connections shed earlier whose
// writes have not ended yet count as on their way.
func (o *outbound) closeSlowest(excess int64) {
	type victim struct {
		c       *Conn
		bytes   int
		at      int64
		closing bool
	}
	o.mu.Lock()
	vs := make([]victim, 0, len(o.blocked))
	for c := range o.blocked {
		vs = append(vs, victim{c: c})
	}
	o.mu.Unlock()
	for i := range vs {
		v := &vs[i]
		v.c.mu.Lock()
		v.bytes, v.at, v.closing = v.c.queued+v.c.out.inflight, v.c.oldest(), v.c.closing
		v.c.mu.Unlock()
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
		if !v.closing && v.c.shed(reasonBudget) {
			excess -= int64(v.bytes)
		}
	}
}

// clockBase makes clock monotonic: time.Since reads the monotonic clock.
var clockBase = time.Now()

// clock is a monotonic timestamp in nanoseconds, never 0.
func clock() int64 { return int64(time.Since(clockBase)) + 1 }

// clockTime is the time of clock reading t (monotonic, like time.Now's).
func clockTime(t int64) time.Time { return clockBase.Add(time.Duration(t - 1)) }

// enqueue queues one frame for c, or closes c as a slow consumer.
func (c *Conn) enqueue(op ws.OpCode, b []byte) bool {
	now := clock()
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	reason := ""
	switch {
	case len(c.queue) >= c.u.cfg.SendQueue || c.queued+len(b) > c.u.cfg.SendQueueBytes:
		reason = reasonQueue
	case c.lagging(now):
		reason = reasonLag
	case !c.u.out.reserve(len(b)):
		reason = reasonBudget
	}
	if reason != "" {
		c.shedLocked(reason)
		c.mu.Unlock()
		c.kick()
		return false
	}
	c.queue = append(c.queue, outFrame{op, b, now})
	c.queued += len(b)
	c.startWriter()
	c.mu.Unlock()
	return true
}

// oldest is when c's oldest unwritten frame was queued (clock()), 0 when
// none is. Called with c.mu held.
func (c *Conn) oldest() int64 {
	if c.out.inflightAt != 0 {
		return c.out.inflightAt
	}
	if len(c.queue) > 0 {
		return c.queue[0].at
	}
	return 0
}

// lagging reports whether c's oldest unwritten frame is older than MaxLag.
// Called with c.mu held.
func (c *Conn) lagging(now int64) bool {
	at := c.oldest()
	return at != 0 && time.Duration(now-at) > c.u.cfg.MaxLag
}

// shed closes c as a slow consumer; false when it was closing already.
func (c *Conn) shed(reason string) bool {
	c.mu.Lock()
	ok := c.shedLocked(reason)
	c.mu.Unlock()
	if ok {
		c.kick() // a parked reader drains the peer under the close deadlines
	}
	return ok
}

// shedLocked drops c's queue, gives its bytes back to the budget and
// queues a 4008 close. What a writer holds already goes first, under a
// write deadline of CloseGrace, so a client that does not read gives its
// memory back within that. Called with c.mu held; the caller kicks c
// after unlocking.
func (c *Conn) shedLocked(reason string) bool {
	if c.closing {
		return false
	}
	c.u.met.slow.WithLabelValues(reason).Inc()
	c.u.out.release(c.queued)
	clear(c.queue)
	c.queue, c.queued = c.queue[:0], 0
	c.out.cut = time.Now().Add(c.u.cfg.CloseGrace)
	c.nc.SetWriteDeadline(c.out.cut)
	why := map[string]string{
		reasonQueue:  "send queue full",
		reasonLag:    "more than " + c.u.cfg.MaxLag.String() + " behind",
		reasonBudget: "node over its outbound budget",
	}[reason]
	c.queueClose(wire.CloseSlowConsumer, "slow consumer: "+why)
	return true
}

// queueClose queues a close frame (never refused, counted in the budget)
// and stops accepting frames. Called with c.mu held.
func (c *Conn) queueClose(code int, reason string) {
	c.closing, c.closedAt = true, clock()
	b := ws.NewCloseFrameBody(ws.StatusCode(code), reason)
	c.u.out.bytes.Add(int64(len(b)))
	c.queue = append(c.queue, outFrame{ws.OpClose, b, clock()})
	c.queued += len(b)
	c.startWriter()
}
