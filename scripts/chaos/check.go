package main

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ringcast/ringcast/pkg/wire"
)

// Times in a history are offsets from the moment the fleet started.
const (
	// open is the end of a session still up when recording stopped.
	open = time.Duration(math.MaxInt64)
	// deliveryGrace is how long after its acknowledgement a message may
	// still be on its way: a session that ended sooner may have lost it.
	deliveryGrace = 2 * time.Second
	// quietBefore and quietAfter widen each fault into its fault window:
	// detection, reconnects, rebalancing and mesh links settle within it.
	quietBefore = 500 * time.Millisecond
	quietAfter  = 5 * time.Second
	// maxExamples bounds the examples kept per anomaly.
	maxExamples = 10
)

// Publish and send outcomes.
const (
	statusOK      = "ok"       // acknowledged (for a send over HTTP: delivered:true)
	statusFailed  = "failed"   // error or timeout: may or may not have been applied
	statusNotSent = "not_sent" // never left the publisher
	statusNobody  = "nobody"   // a send answered delivered:false
	// statusUnavailable is a failure told as such: 503 or an error frame
	// with code bridge_unavailable. Like statusFailed, the operation may
	// still have been applied (Redis died after running it).
	statusUnavailable = "unavailable"
)

// history is everything the harness recorded, the checker's only input.
type history struct {
	HistoryOn bool
	Publishes []op // channel publishes
	Sends     []op // direct messages
	Clients   []clientLog
	Faults    []fault
}

// op is one publish or send attempt. Pub and Seq are carried in its data.
type op struct {
	Pub     string
	Seq     int64
	Channel string // publishes
	To      string // sends
	Start   time.Duration
	End     time.Duration
	Status  string
}

type clientLog struct {
	ID       string
	Balancer string
	Channels []string
	Sessions []session // in welcome order
	Replies  []reply   // subscribed replies, in arrival order
	Messages []delivery
	Directs  []delivery
	// WireRepeats are message frames the server sent again within one
	// subscription (an offset at or below one already received since the
	// channel's last subscribed reply): what a client without its own
	// de-duplication would have delivered twice.
	WireRepeats []delivery
}

// session is one welcomed connection.
type session struct {
	Node    string
	Welcome time.Duration
	End     time.Duration            // open while up
	Reason  string                   // why it ended; see reason
	Subs    map[string]time.Duration // channel → first subscribed reply
}

type reply struct {
	At        time.Duration
	Channel   string
	Recovered *bool  // absent unless the subscribe carried since
	Epoch     string // the channel's position at the reply (history on)
	Offset    uint64
}

type delivery struct {
	At      time.Duration
	Channel string // empty for directs
	Pub     string // "" when the data was not ours
	Seq     int64
	Epoch   string // history on: the message's position
	Offset  uint64
}

type fault struct {
	Kind   string        `json:"kind"`
	Target string        `json:"target"`
	Start  time.Duration `json:"-"`
	End    time.Duration `json:"-"` // when healed; open if never
	Note   string        `json:"note,omitempty"`
	// Readiness is measured around a Redis fault.
	Readiness *readiness `json:"readiness,omitempty"`
}

// hits reports whether the fault concerns a session on node through balancer.
func (f fault) hits(node, balancer string) bool {
	return f.Kind == faultRedis || f.Target == node || f.Target == balancer
}

// tally counts what became of the operations of one kind.
type tally struct {
	Expected      int `json:"expected"`      // acknowledged operation × subscribed client
	Delivered     int `json:"delivered"`     // of those, delivered once
	Lost          int `json:"lost"`          // violation: see README
	LostAllowed   int `json:"lost_allowed"`  // at-most-once: lost across a fault
	LostTold      int `json:"lost_told"`     // the client was told recovered:false
	Duplicated    int `json:"duplicated"`    // delivered more than once
	WireRepeated  int `json:"wire_repeated"` // sent again by the server within one subscription (messages only)
	OutOfOrder    int `json:"out_of_order"`  // after a later acknowledged op of its publisher
	Unexpected    int `json:"unexpected"`    // never attempted, or not our data
	Indeterminate int `json:"indeterminate"` // delivered, from a failed attempt: fine either way
	lostExamples  []string
	otherExamples []string
}

// failover is the time from fault to resubscribed, over the affected clients,
// and the two steps before it: the client saw its link end, and the next
// node welcomed it. (A step that takes long for every client points at the
// step; all three close together at a large p50 point at a machine that
// serves every handshake at once, too slowly.)
type failover struct {
	Faults       int     `json:"faults"`
	Affected     int     `json:"affected"`
	Never        int     `json:"never"`             // affected clients not resubscribed by the end
	Dropped      int     `json:"dropped,omitempty"` // term: affected clients cut off without a drain request
	P50MS        float64 `json:"p50_ms"`
	P99MS        float64 `json:"p99_ms"`
	MaxMS        float64 `json:"max_ms"`
	EndP99MS     float64 `json:"link_end_p99_ms"` // the client saw its link end
	WelcomeP99MS float64 `json:"welcome_p99_ms"`  // the next session was welcomed
	// Outage counts, by outcome, the publishes that overlapped a Redis
	// fault until the nodes were ready again.
	Outage map[string]int `json:"outage_publishes,omitempty"`
	// CPU is what the recovery cost the machine (one fault, not a kind).
	CPU      *recoveryCPU `json:"cpu,omitempty"`
	took     []time.Duration
	ended    []time.Duration
	welcomed []time.Duration
}

type distribution struct {
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
	Total float64 `json:"total"`
}

// result is the checker's verdict on a history.
type result struct {
	Unprovoked         int                  `json:"unprovoked"` // sessions cut with no fault on their node or balancer and no request to move
	UnprovokedExamples []string             `json:"unprovoked_examples,omitempty"`
	Messages           tally                `json:"messages"`
	Directs            tally                `json:"directs"`
	PerFault           []*failover          `json:"-"`        // one per fault of the history
	Failover           map[string]*failover `json:"failover"` // by fault kind, plus "all"
	Reconnects         distribution         `json:"reconnects"`
	// DrainedAgain counts the clients drained more than once: moved onto
	// a node that drained before they moved back (a rolling restart that
	// outran the rebalance).
	DrainedAgain int `json:"drained_again"`
	// Unready lists the Redis faults /readyz did not report, or after
	// which the nodes did not become ready again.
	Unready  []string `json:"unready,omitempty"`
	Examples []string `json:"examples,omitempty"`
}

type opKey struct {
	pub string
	seq int64
}

func index(ops []op) map[opKey]*op {
	m := make(map[opKey]*op, len(ops))
	for i := range ops {
		m[opKey{ops[i].Pub, ops[i].Seq}] = &ops[i]
	}
	return m
}

// check judges a history; the top-level README ("Reading the report") has the rules.
func check(h *history) result {
	var res result
	pubs, sends := index(h.Publishes), index(h.Sends)
	positions := positionsOf(h)
	windows := faultWindows(h.Faults)
	quiet := func(o *op) bool {
		for _, w := range windows {
			if o.Start < w[1] && o.End > w[0] {
				return false
			}
		}
		return true
	}
	var reconnects []float64
	for i := range h.Clients {
		c := &h.Clients[i]
		reconnects = append(reconnects, float64(max(len(c.Sessions)-1, 0)))
		drains := 0
		for _, s := range c.Sessions {
			if s.Reason == "reconnect "+wire.ReasonDrain {
				drains++
			}
		}
		if drains > 1 {
			res.DrainedAgain++
		}
		for _, s := range c.Sessions {
			if s.End != open && !strings.HasPrefix(s.Reason, "reconnect ") && !faulted(h.Faults, s.End, s.Node, c.Balancer) {
				res.Unprovoked++
				if len(res.UnprovokedExamples) < maxExamples {
					res.UnprovokedExamples = append(res.UnprovokedExamples, fmt.Sprintf("%s on %s at %v: %s", c.ID, s.Node, s.End.Round(time.Millisecond), s.Reason))
				}
			}
		}
		subscribed := map[string]bool{}
		for _, ch := range c.Channels {
			subscribed[ch] = true
		}

		// Channel messages.
		seen := map[string]map[opKey]int{}
		last := map[string]map[string]int64{} // channel → publisher → last acknowledged seq
		for _, d := range c.Messages {
			p := pubs[opKey{d.Pub, d.Seq}]
			if p == nil || p.Status == statusNotSent || p.Channel != d.Channel {
				res.Messages.Unexpected++
				res.Messages.note(false, "unexpected: %s got %s/%d on %s at %v", c.ID, d.Pub, d.Seq, d.Channel, d.At)
				continue
			}
			res.Messages.judgeDelivery(c.ID, d, p, seen, last, d.Channel)
		}
		for j := range h.Publishes {
			p := &h.Publishes[j]
			if p.Status != statusOK || !subscribed[p.Channel] {
				continue
			}
			res.Messages.Expected++
			if seen[p.Channel][opKey{p.Pub, p.Seq}] > 0 {
				res.Messages.Delivered++
				continue
			}
			connected := c.connectedThrough(p.Channel, p.Start, p.End)
			told := h.HistoryOn && c.told(p, positions[opKey{p.Pub, p.Seq}])
			switch {
			case connected && quiet(p):
				res.Messages.Lost++
				res.Messages.note(true, "lost while connected and quiet: %s/%d on %s to %s, published %v..%v", p.Pub, p.Seq, p.Channel, c.ID, p.Start, p.End)
			case h.HistoryOn && told:
				res.Messages.LostTold++
			case h.HistoryOn:
				res.Messages.Lost++
				res.Messages.note(true, "lost without recovered:false: %s/%d on %s to %s, published %v..%v", p.Pub, p.Seq, p.Channel, c.ID, p.Start, p.End)
			default:
				res.Messages.LostAllowed++
			}
		}

		for _, d := range c.WireRepeats {
			res.Messages.WireRepeated++
			res.Messages.note(false, "sent twice: %s got %s/%d on %s at offset %s/%d again at %v", c.ID, d.Pub, d.Seq, d.Channel, d.Epoch, d.Offset, d.At)
		}

		// Direct messages: no history in any mode.
		dseen := map[string]map[opKey]int{}
		dlast := map[string]map[string]int64{}
		for _, d := range c.Directs {
			s := sends[opKey{d.Pub, d.Seq}]
			if s == nil || s.Status == statusNotSent || s.To != c.ID {
				res.Directs.Unexpected++
				res.Directs.note(false, "unexpected direct: %s got %s/%d at %v", c.ID, d.Pub, d.Seq, d.At)
				continue
			}
			res.Directs.judgeDelivery(c.ID, d, s, dseen, dlast, "")
		}
		for j := range h.Sends {
			s := &h.Sends[j]
			if s.Status != statusOK || s.To != c.ID {
				continue
			}
			res.Directs.Expected++
			if dseen[""][opKey{s.Pub, s.Seq}] > 0 {
				res.Directs.Delivered++
				continue
			}
			if c.connectedThrough("", s.Start, s.End) && quiet(s) {
				res.Directs.Lost++
				res.Directs.note(true, "direct lost while connected and quiet: %s/%d to %s, sent %v..%v", s.Pub, s.Seq, c.ID, s.Start, s.End)
			} else {
				res.Directs.LostAllowed++
			}
		}
	}
	res.Reconnects = distributionOf(reconnects)
	res.PerFault, res.Failover = failovers(h)
	for i, f := range h.Faults {
		if f.Readiness == nil {
			continue
		}
		at := fmt.Sprintf("%s at %v (%s)", f.Kind, f.Start.Round(time.Millisecond), f.Note)
		if f.Readiness.NotReadyMS < 0 {
			res.Unready = append(res.Unready, fmt.Sprintf("%s: /readyz did not report it within %v", at, notReadyWait))
		}
		end := f.End
		if f.Readiness.ReadyMS < 0 {
			res.Unready = append(res.Unready, fmt.Sprintf("%s: nodes not ready again within %v", at, readyWait))
		} else {
			end = f.Start + time.Duration(f.Readiness.ReadyMS*float64(time.Millisecond))
		}
		res.PerFault[i].Outage = map[string]int{}
		for _, p := range h.Publishes {
			if p.Start < end && p.End > f.Start {
				res.PerFault[i].Outage[p.Status]++
			}
		}
	}
	res.Examples = append(append(append(append([]string{},
		res.Messages.lostExamples...), res.Messages.otherExamples...),
		res.Directs.lostExamples...), res.Directs.otherExamples...)
	return res
}

// judgeDelivery counts one delivery of a known operation o to client id.
func (t *tally) judgeDelivery(id string, d delivery, o *op, seen map[string]map[opKey]int, last map[string]map[string]int64, ch string) {
	if seen[ch] == nil {
		seen[ch], last[ch] = map[opKey]int{}, map[string]int64{}
	}
	k := opKey{o.Pub, o.Seq}
	seen[ch][k]++
	switch {
	case seen[ch][k] > 1:
		t.Duplicated++
		t.note(false, "duplicated: %s got %s/%d %s again at %v", id, o.Pub, o.Seq, ch, d.At)
	case o.Status != statusOK:
		t.Indeterminate++
	default:
		prev, ok := last[ch][o.Pub]
		if ok && o.Seq < prev {
			t.OutOfOrder++
			t.note(false, "out of order: %s got %s/%d %s at %v after %s/%d", id, o.Pub, o.Seq, ch, d.At, o.Pub, prev)
			return
		}
		last[ch][o.Pub] = o.Seq
	}
}

func (t *tally) note(lost bool, format string, args ...any) {
	ex := &t.otherExamples
	if lost {
		ex = &t.lostExamples
	}
	if len(*ex) < maxExamples {
		*ex = append(*ex, fmt.Sprintf(format, args...))
	}
}

// violations lists what broke, empty when every invariant held.
func (r *result) violations() []string {
	var v []string
	for _, k := range []struct {
		name string
		t    *tally
	}{{"messages", &r.Messages}, {"directs", &r.Directs}} {
		for _, f := range []struct {
			what string
			n    int
		}{{"lost", k.t.Lost}, {"duplicated", k.t.Duplicated}, {"sent twice", k.t.WireRepeated}, {"out of order", k.t.OutOfOrder}, {"unexpected", k.t.Unexpected}} {
			if f.n > 0 {
				v = append(v, fmt.Sprintf("%s %s: %d", k.name, f.what, f.n))
			}
		}
	}
	if len(r.Unready) > 0 {
		v = append(v, fmt.Sprintf("readiness: %s", strings.Join(r.Unready, "; ")))
	}
	return v
}

// connectedThrough reports whether the client had a session subscribed to
// channel (or, for channel "", welcomed) before start that lasted past end
// plus the delivery grace: the operation had to reach it on that session.
func (c *clientLog) connectedThrough(channel string, start, end time.Duration) bool {
	for _, s := range c.Sessions {
		from := s.Welcome
		if channel != "" {
			t, ok := s.Subs[channel]
			if !ok {
				continue
			}
			from = t
		}
		if from <= start && (s.End == open || s.End >= end+deliveryGrace) {
			return true
		}
	}
	return false
}

// positionsOf returns the {epoch, offset} of every publish some client
// received with one.
func positionsOf(h *history) map[opKey]*wire.Position {
	pos := map[opKey]*wire.Position{}
	for i := range h.Clients {
		for _, d := range h.Clients[i].Messages {
			if k := (opKey{d.Pub, d.Seq}); d.Epoch != "" && pos[k] == nil {
				pos[k] = &wire.Position{Epoch: d.Epoch, Offset: d.Offset}
			}
		}
	}
	return pos
}

// told reports whether the client was told recovered:false about p, which
// it never received: a reply on p's channel after p started that said
// recovered:false and whose starting point lies at or past p, so that no
// later subscription owed p to the client. A reply that recovered, or that
// starts before p, leaves p owed: a later reply must cover it.
//
// pos is p's position when some client received it. Without it, a
// recovered:false after p was acknowledged covers p (p was in history
// before it), and one while p was in flight covers it unless a later reply
// recovered, which then owed p.
func (c *clientLog) told(p *op, pos *wire.Position) bool {
	told := false
	for _, r := range c.Replies {
		if r.Channel != p.Channel || r.At < p.Start {
			continue
		}
		unrecovered := r.Recovered != nil && !*r.Recovered
		switch {
		case pos != nil && unrecovered:
			if r.Epoch != pos.Epoch || r.Offset >= pos.Offset {
				return true
			}
		case pos != nil:
		case unrecovered && r.At >= p.End:
			return true
		case unrecovered:
			told = true
		case r.Recovered != nil:
			told = false
		}
	}
	return told
}

// faulted reports whether a fault on node or balancer was in its window at t.
func faulted(fs []fault, t time.Duration, node, balancer string) bool {
	for i, w := range faultWindows(fs) {
		if fs[i].hits(node, balancer) && w[0] <= t && t <= w[1] {
			return true
		}
	}
	return false
}

// faultWindows widens each fault by quietBefore and quietAfter.
func faultWindows(fs []fault) [][2]time.Duration {
	w := make([][2]time.Duration, 0, len(fs))
	for _, f := range fs {
		end := f.End
		if end != open {
			end += quietAfter
		}
		w = append(w, [2]time.Duration{f.Start - quietBefore, end})
	}
	return w
}

// failovers measures, for each fault, the clients it cut off (connected to
// the faulted node or through the faulted balancer, and disconnected within
// the fault window, before another fault concerned them) and how long each
// took to be subscribed again. Faults must be sorted by start. It
// returns one entry per fault, in order, and one per kind plus "all".
func failovers(h *history) ([]*failover, map[string]*failover) {
	per := make([]*failover, len(h.Faults))
	byKind := map[string]*failover{"all": {}}
	for j, f := range h.Faults {
		fo := &failover{Faults: 1}
		per[j] = fo
		until := open
		if f.End != open {
			until = f.End + quietAfter
		}
		for i := range h.Clients {
			c := &h.Clients[i]
			k := slices.IndexFunc(c.Sessions, func(s session) bool { return s.Welcome <= f.Start && f.Start < s.End })
			if k < 0 {
				continue
			}
			s := c.Sessions[k]
			if !f.hits(s.Node, c.Balancer) || s.End > min(until, nextHit(h.Faults, j, s.Node, c.Balancer)) {
				continue
			}
			fo.Affected++
			if f.Kind == faultTerm && s.Reason != "reconnect "+wire.ReasonDrain {
				fo.Dropped++
			}
			fo.ended = append(fo.ended, s.End-f.Start)
			if k+1 < len(c.Sessions) {
				fo.welcomed = append(fo.welcomed, c.Sessions[k+1].Welcome-f.Start)
			}
			if took, ok := c.resubscribed(k + 1); ok {
				fo.took = append(fo.took, took-f.Start)
			} else {
				fo.Never++
			}
		}
		for _, k := range []string{f.Kind, "all"} {
			agg := byKind[k]
			if agg == nil {
				agg = &failover{}
				byKind[k] = agg
			}
			agg.Faults++
			agg.Affected += fo.Affected
			agg.Never += fo.Never
			agg.Dropped += fo.Dropped
			agg.took = append(agg.took, fo.took...)
			agg.ended = append(agg.ended, fo.ended...)
			agg.welcomed = append(agg.welcomed, fo.welcomed...)
		}
	}
	for _, fo := range append(per, slices.Collect(maps.Values(byKind))...) {
		fo.summarize()
	}
	return per, byKind
}

// nextHit returns when the first fault after faults[j] concerning a session
// on node through balancer started: a disconnect after it is not faults[j]'s.
func nextHit(faults []fault, j int, node, balancer string) time.Duration {
	for _, g := range faults[j+1:] {
		if g.Start > faults[j].Start && g.hits(node, balancer) {
			return g.Start
		}
	}
	return open
}

func (fo *failover) summarize() {
	d := distributionOf(millis(fo.took))
	fo.P50MS, fo.P99MS, fo.MaxMS = d.P50, d.P99, d.Max
	fo.EndP99MS = distributionOf(millis(fo.ended)).P99
	fo.WelcomeP99MS = distributionOf(millis(fo.welcomed)).P99
}

func millis(ds []time.Duration) []float64 {
	ms := make([]float64, len(ds))
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
	}
	return ms
}

// resubscribed returns when the client was first subscribed to all its
// channels in a session from index k on.
func (c *clientLog) resubscribed(k int) (time.Duration, bool) {
	for _, s := range c.Sessions[k:] {
		var at time.Duration
		all := true
		for _, ch := range c.Channels {
			t, ok := s.Subs[ch]
			if !ok {
				all = false
				break
			}
			at = max(at, t)
		}
		if all {
			return at, true
		}
	}
	return 0, false
}

// distributionOf returns nearest-rank percentiles of v.
func distributionOf(v []float64) distribution {
	if len(v) == 0 {
		return distribution{}
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	var total float64
	for _, x := range s {
		total += x
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return s[max(i, 0)]
	}
	return distribution{P50: rank(50), P99: rank(99), Max: s[len(s)-1], Total: total}
}
