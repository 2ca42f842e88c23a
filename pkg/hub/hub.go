// Package hub is a node's local fan-out: channel → subscribers, client id →
// connection; every publish goes hub → bridge → hub and never blocks the publisher.
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Sink is one local connection as the hub sees it.
type Sink interface {
	// ClientID is the connection's client id. It never changes.
	ClientID() string
	// Send queues an encoded frame without blocking. A sink that cannot
	// keep up closes itself (4008) and returns false. Called concurrently.
	Send(frame []byte) bool
}

// Sessioned is a Sink that belongs to a session (a browser tab, a Client):
// a newer sink with the same client id and session replaces it.
type Sessioned interface {
	Session() string // "" = none: never replaced
}

func sessionOf(s Sink) string {
	if ss, ok := s.(Sessioned); ok {
		return ss.Session()
	}
	return ""
}

// Config configures a Hub.
type Config struct {
	MaxChannels int // channels one connection may subscribe to; default 128
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config { return Config{MaxChannels: 128} }

// Hub is a node's local fan-out. Safe for concurrent use.
type Hub struct {
	cfg Config
	br  bridge.Bridge
	log *zap.Logger
	met *metrics

	mu       sync.RWMutex
	channels map[string]*channel
	// clients holds every attached sink: client id → its first connection
	// here, the others (tabs, devices) chained behind it in attach order.
	clients map[string]*attached
	n       int // attached sinks
}

// attached is one attached sink (32 bytes) and its subscriptions, chained
// through member.next: most connections hold a handful of channels (at
// most MaxChannels), so a list walk is as quick as a map and costs nothing
// more than the members. A connection's hub state is this, its member per
// channel and a slot in clients (and in each channel's members): no
// per-sink map entry. Guarded by Hub.mu.
type attached struct {
	s    Sink
	next *attached // the next sink of the same client id
	subs *member   // its subscriptions
}

// sub returns the subscription to name, or nil.
func (a *attached) sub(name string) *member {
	for m := a.subs; m != nil; m = m.next {
		if m.ch.name == name {
			return m
		}
	}
	return nil
}

// nsubs is how many channels a is subscribed to.
func (a *attached) nsubs() int {
	n := 0
	for m := a.subs; m != nil; m = m.next {
		n++
	}
	return n
}

// find returns s's entry, or nil when s is not attached. Called with h.mu held.
func (h *Hub) find(s Sink) *attached {
	for a := h.clients[s.ClientID()]; a != nil; a = a.next {
		if a.s == s {
			return a
		}
	}
	return nil
}

type channel struct {
	name    string        // the one copy its subscriptions share
	members []*member     // guarded by Hub.mu; each member's idx is its index
	ready   chan struct{} // closed once the bridge subscription settled
	err     error         // the bridge subscription's error, set before ready closes

	// fanout is a copy of members that Deliver reads without a lock. A
	// membership change drops it (under Hub.mu); the next Deliver rebuilds
	// it once, so a storm of subscribes costs one copy per publish, not
	// one per subscribe.
	fanout atomic.Pointer[[]*member]
}

// member is one sink's subscription to one channel. Until it is live,
// deliveries are parked in pending so that recovered history and live
// messages meet without gap. Every delivery that carries a position goes
// through send, which drops what the subscriber already has: a live message
// can arrive after the history read already returned it.
//
// An idle subscription is 64 bytes: what only a subscription being set up
// needs is in rec, and a position only channels with history have in last.
type member struct {
	s     Sink
	ch    *channel
	next  *member       // the sink's next subscription; guarded by Hub.mu
	idx   int32         // its index in ch.members; guarded by Hub.mu
	state atomic.Uint32 // memberGone, memberLive
	mu    sync.Mutex
	// last is the position the subscriber has reached (nil = none: made
	// with the first position, then updated in place); guarded by mu.
	last *wire.Position
	// rec is the subscription's setup state, nil once it is live; guarded
	// by mu. A member that is not live always has one.
	rec *recovery
}

// pos is the position the subscriber has reached. Called with m.mu held.
func (m *member) pos() wire.Position {
	if m.last == nil {
		return wire.Position{}
	}
	return *m.last
}

// setPos records the position the subscriber has reached. Called with
// m.mu held.
func (m *member) setPos(p wire.Position) {
	switch {
	case m.last != nil:
		*m.last = p
	case p != wire.Position{}:
		m.last = &p
	}
}

// The bits of member.state.
const (
	memberGone = 1 << iota // unsubscribed: a fan-out holding an old copy skips it
	memberLive             // set up: deliveries go straight to the sink
)

func (m *member) gone() bool { return m.state.Load()&memberGone != 0 }
func (m *member) live() bool { return m.state.Load()&memberLive != 0 }

// recovery is what arrives for a member while it is being set up.
type recovery struct {
	pending  []bridge.Message
	overflow bool // more than pendingLimit arrived while recovering
	lost     bool // the bridge lost messages while recovering (Repair)
}

// send sends msg to s unless it carries a position s already reached. It
// reports whether a frame went out (false for a duplicate or a refusing
// sink). Called with m.mu held; frame, when non-nil, is msg encoded.
func (m *member) send(s Sink, msg bridge.Message, frame []byte) (sent, ok bool) {
	if msg.Epoch != "" {
		if last := m.pos(); msg.Epoch == last.Epoch && msg.Offset <= last.Offset {
			return false, true // already delivered
		}
		m.setPos(wire.Position{Epoch: msg.Epoch, Offset: msg.Offset})
	}
	if frame == nil {
		frame = messageFrame(msg)
	}
	ok = s.Send(frame)
	return ok, ok
}

// snapshot returns the members to fan out to, rebuilding the copy when
// membership changed since the last one.
func (h *Hub) snapshot(ch *channel) []*member {
	if p := ch.fanout.Load(); p != nil {
		return *p
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if p := ch.fanout.Load(); p != nil {
		return *p
	}
	ms := slices.Clone(ch.members)
	// Under the read lock nobody changes members, so no change can be lost:
	// a writer drops the copy under the write lock after this returns.
	ch.fanout.Store(&ms)
	return ms
}

// ErrOverflow is returned by Subscribe when more live messages arrived
// during recovery than the hub parks: the caller closes the connection as a
// slow consumer, and the client recovers again.
var ErrOverflow = errors.New("too many messages during recovery")

// ErrTooManyChannels is returned by Subscribe past Config.MaxChannels.
var ErrTooManyChannels = errors.New("too many channels")

// validate fills zero fields with their defaults and rejects negative ones.
func (c *Config) validate() error {
	if err := defaults.Set("MaxChannels", &c.MaxChannels, DefaultConfig().MaxChannels); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

// New returns a hub publishing into br.
func New(cfg Config, br bridge.Bridge, log *zap.Logger, reg prometheus.Registerer) (*Hub, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if br == nil {
		return nil, errors.New("hub: bridge is required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	h := &Hub{
		cfg:      cfg,
		br:       br,
		log:      log.Named("hub"),
		channels: map[string]*channel{},
		clients:  map[string]*attached{},
	}
	h.met = newMetrics(h, reg)
	return h, nil
}

// Attach registers s under its client id, next to the id's other sinks,
// and announces it to the bridge. If a sink of the same id and session
// (Sessioned) is here, it is detached and returned: the caller closes it.
func (h *Hub) Attach(ctx context.Context, s Sink) (Sink, error) {
	id := s.ClientID()
	h.mu.Lock()
	var prev Sink
	sess := sessionOf(s)
	tail := h.clients[id]
	for a := tail; a != nil; a = a.next {
		if sess != "" && prev == nil && sessionOf(a.s) == sess {
			prev = a.s
		}
		tail = a
	}
	if a := (&attached{s: s}); tail == nil {
		h.clients[id] = a
	} else {
		tail.next = a
	}
	h.n++
	h.mu.Unlock()
	if prev != nil {
		h.detach(prev, false)
	}
	if err := h.br.Hold(ctx, id); err != nil {
		h.Detach(s)
		return prev, fmt.Errorf("announce client: %w", err)
	}
	h.mu.Lock()
	if h.clients[id] == nil {
		// s left while Hold was in flight: its Release may have reached the
		// bridge before the Hold did.
		h.br.Release(id)
	}
	h.mu.Unlock()
	return prev, nil
}

// Detach removes s and its subscriptions.
func (h *Hub) Detach(s Sink) { h.detach(s, true) }

func (h *Hub) detach(s Sink, release bool) {
	h.mu.Lock()
	id := s.ClientID()
	var a, before *attached
	for x := h.clients[id]; x != nil; before, x = x, x.next {
		if x.s == s {
			a = x
			break
		}
	}
	switch {
	case a == nil:
		release = false
	case before != nil:
		before.next = a.next
	case a.next != nil:
		h.clients[id] = a.next
	default:
		delete(h.clients, id)
	}
	if h.clients[id] != nil {
		release = false // the id is still connected here
	}
	if a != nil {
		h.n--
		for m := a.subs; m != nil; m = m.next {
			h.leave(m.ch, m)
		}
	}
	if release {
		// Under h.mu, like leave: a later Attach's Hold comes after it.
		h.br.Release(s.ClientID())
	}
	h.mu.Unlock()
}

// Subscribe subscribes s to name. With since, it recovers missed messages:
// s receives the subscribed reply, then every recovered message, then live
// messages, with no gap and no duplicate at the seam.
func (h *Hub) Subscribe(ctx context.Context, s Sink, name string, since *wire.Position, id json.RawMessage) error {
	h.mu.Lock()
	a := h.find(s)
	if a == nil {
		h.mu.Unlock()
		return errors.New("connection is not attached")
	}
	m := a.sub(name)
	if m == nil && a.nsubs() >= h.cfg.MaxChannels {
		h.mu.Unlock()
		return fmt.Errorf("%w: the limit is %d", ErrTooManyChannels, h.cfg.MaxChannels)
	}
	ch := h.channels[name]
	first := ch == nil
	if first {
		ch = &channel{name: strings.Clone(name), ready: make(chan struct{})}
		h.channels[name] = ch
	}
	if m == nil {
		m = &member{s: s, ch: ch, next: a.subs, idx: int32(len(ch.members)), rec: &recovery{}}
		a.subs = m
		ch.members = append(ch.members, m)
		ch.fanout.Store(nil)
	} else {
		m.mu.Lock()
		m.state.And(^uint32(memberLive))
		m.rec = &recovery{}
		m.mu.Unlock()
	}
	name = ch.name
	h.mu.Unlock()

	if first {
		ch.err = h.br.Subscribe(ctx, name)
		h.mu.Lock()
		if h.channels[name] == nil {
			// Every member left while Subscribe was in flight: their
			// Unsubscribe may have reached the bridge before it did.
			h.br.Unsubscribe(name)
		}
		h.mu.Unlock()
		close(ch.ready)
	}
	select {
	case <-ch.ready:
	case <-ctx.Done():
		h.Unsubscribe(s, name)
		return ctx.Err()
	}
	if ch.err != nil {
		h.Unsubscribe(s, name)
		h.mu.Lock()
		if h.channels[name] == ch && len(ch.members) == 0 {
			delete(h.channels, name)
		}
		h.mu.Unlock()
		return ch.err
	}

	backlog, top, recovered, err := h.br.History(ctx, name, since)
	if err != nil {
		h.Unsubscribe(s, name)
		return err
	}
	reply := &wire.Frame{Op: wire.OpSubscribed, ID: id, Channel: name, Epoch: top.Epoch}
	if top.Epoch != "" {
		reply.Offset = wire.Uint64(top.Offset)
	}
	if since != nil {
		reply.Recovered = wire.Bool(recovered)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !s.Send(wire.Encode(reply)) {
		return nil
	}
	m.setPos(wire.Position{})
	if since != nil && recovered {
		m.setPos(*since)
	}
	if recovered {
		for _, msg := range backlog {
			if _, ok := m.send(s, msg, nil); !ok {
				return nil
			}
		}
	}
	if m.pos().Epoch == "" && top.Epoch != "" {
		m.setPos(top)
	}
	if m.rec.overflow {
		// More arrived than could be parked: never a silent gap.
		m.rec.pending, m.rec.overflow = nil, false
		return ErrOverflow
	}
	if m.rec.lost {
		// The bridge dropped messages that neither the backlog nor
		// pending holds: never a silent gap.
		m.rec.pending, m.rec.lost = nil, false
		return ErrLost
	}
	for _, msg := range m.rec.pending {
		if _, ok := m.send(s, msg, nil); !ok {
			return nil
		}
	}
	m.rec = nil
	m.state.Or(memberLive)
	return nil
}

// Unsubscribe removes s from name and reports whether it was subscribed.
func (h *Hub) Unsubscribe(s Sink, name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	a := h.find(s)
	if a == nil {
		return false
	}
	for p := &a.subs; *p != nil; p = &(*p).next {
		if m := *p; m.ch.name == name {
			*p = m.next
			h.leave(m.ch, m)
			return true
		}
	}
	return false
}

// leave removes member m from ch and drops the bridge interest with the
// last member. Called with h.mu held, so the bridge sees a channel's
// Unsubscribe before a later first subscriber's Subscribe (Unsubscribe does
// not block).
func (h *Hub) leave(ch *channel, m *member) {
	m.state.Or(memberGone)
	last := len(ch.members) - 1
	moved := ch.members[last]
	ch.members[m.idx], moved.idx = moved, m.idx
	ch.members[last] = nil
	ch.members = ch.members[:last]
	if c := cap(ch.members); c >= 64 && len(ch.members) < c/4 {
		// A channel that shrank gives its peak-size array back.
		ch.members = append(make([]*member, 0, 2*len(ch.members)), ch.members...)
	}
	ch.fanout.Store(nil)
	if len(ch.members) == 0 {
		if h.channels[ch.name] == ch {
			delete(h.channels, ch.name)
		}
		h.br.Unsubscribe(ch.name)
	}
}

// Publish sends m to every subscriber in the cluster.
func (h *Hub) Publish(ctx context.Context, m bridge.Message) (bridge.Message, error) {
	h.met.published.Inc()
	return h.br.Publish(ctx, m)
}

// Send sends d to the client d.To wherever it is connected.
func (h *Hub) Send(ctx context.Context, d bridge.Direct) (bool, error) {
	return h.br.Send(ctx, d)
}

// Deliver fans m out to local subscribers. It is the bridge's return leg:
// it never blocks and may be called concurrently. The frame is encoded once;
// the fan-out walks a copy of the member list and holds no hub lock, so a
// big channel does not hold up Subscribe, Attach or other channels.
func (h *Hub) Deliver(msg bridge.Message) {
	h.mu.RLock()
	ch := h.channels[msg.Channel]
	h.mu.RUnlock()
	if ch == nil {
		return
	}
	frame := messageFrame(msg)
	n := 0
	for _, m := range h.snapshot(ch) {
		st := m.state.Load()
		if st&memberGone != 0 {
			continue
		}
		if msg.Epoch == "" && st&memberLive != 0 {
			// No position, nothing to de-duplicate: the lock-free path.
			m.s.Send(frame)
			n++
			continue
		}
		m.mu.Lock()
		if m.live() {
			if sent, _ := m.send(m.s, msg, frame); sent {
				n++
			}
		} else if len(m.rec.pending) < pendingLimit {
			m.rec.pending = append(m.rec.pending, msg)
		} else {
			m.rec.overflow = true
		}
		m.mu.Unlock()
	}
	h.met.delivered.Add(float64(n))
}

// pendingLimit bounds messages parked for one recovering subscription.
const pendingLimit = 10000

// DeliverDirect hands d to every local connection of d.To and reports
// whether at least one took it.
func (h *Hub) DeliverDirect(d bridge.Direct) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	a := h.clients[d.To]
	if a == nil {
		return false
	}
	frame := wire.Encode(&wire.Frame{Op: wire.OpDirect, From: d.From, Data: d.Data})
	n := 0
	for ; a != nil; a = a.next {
		if a.s.Send(frame) {
			n++
		}
	}
	h.met.delivered.Add(float64(n))
	return n > 0
}

// Conns returns a snapshot of the local connections of client id.
func (h *Hub) Conns(id string) []Sink {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []Sink
	for a := h.clients[id]; a != nil; a = a.next {
		out = append(out, a.s)
	}
	return out
}

// Sinks returns a snapshot of the attached connections.
func (h *Hub) Sinks() []Sink {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]Sink, 0, h.n)
	for _, a := range h.clients {
		for ; a != nil; a = a.next {
			out = append(out, a.s)
		}
	}
	return out
}

// Len returns the number of attached connections.
func (h *Hub) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.n
}

func messageFrame(m bridge.Message) []byte {
	f := &wire.Frame{Op: wire.OpMessage, Channel: m.Channel, Data: m.Data, From: m.From}
	if m.Epoch != "" {
		f.Epoch = m.Epoch
		f.Offset = wire.Uint64(m.Offset)
	}
	return wire.Encode(f)
}
