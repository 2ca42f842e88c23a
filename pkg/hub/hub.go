// Package hub is a node's local fan-out: channel → subscribers, client id →
// connection; every publish goes hub → bridge → hub and never blocks the publisher.
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	clients  map[string][]Sink // client id → its connections here (tabs, devices)
	subs     map[Sink]subs     // every attached sink, with its subscriptions
}

// subs is one sink's subscriptions. A slice, not a map: most connections
// hold a handful of channels (at most MaxChannels), and an idle one costs
// 24 bytes per channel instead of a map's table.
type subs []sub

type sub struct {
	channel string
	m       *member
}

// get returns the subscription to name, or nil.
func (ss subs) get(name string) *member {
	for _, x := range ss {
		if x.channel == name {
			return x.m
		}
	}
	return nil
}

// without returns ss without the subscription to name, and whether it had one.
func (ss subs) without(name string) (subs, bool) {
	for i, x := range ss {
		if x.channel == name {
			return slices.Delete(ss, i, i+1), true
		}
	}
	return ss, false
}

type channel struct {
	members map[Sink]*member // guarded by Hub.mu
	ready   chan struct{}    // closed once the bridge subscription settled
	err     error            // the bridge subscription's error, set before ready closes

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
type member struct {
	s        Sink
	gone     atomic.Bool // unsubscribed: a fan-out holding an old copy skips it
	live     atomic.Bool
	mu       sync.Mutex
	pending  []bridge.Message
	overflow bool          // more than pendingLimit arrived while recovering
	last     wire.Position // the position the subscriber has reached; guarded by mu
	lost     bool          // the bridge lost messages while recovering (Repair); guarded by mu
}

// send sends msg to s unless it carries a position s already reached. It
// reports whether a frame went out (false for a duplicate or a refusing
// sink). Called with m.mu held; frame, when non-nil, is msg encoded.
func (m *member) send(s Sink, msg bridge.Message, frame []byte) (sent, ok bool) {
	if msg.Epoch != "" {
		if msg.Epoch == m.last.Epoch && msg.Offset <= m.last.Offset {
			return false, true // already delivered
		}
		m.last = wire.Position{Epoch: msg.Epoch, Offset: msg.Offset}
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
	ms := make([]*member, 0, len(ch.members))
	for _, m := range ch.members {
		ms = append(ms, m)
	}
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
		clients:  map[string][]Sink{},
		subs:     map[Sink]subs{},
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
	if sess := sessionOf(s); sess != "" {
		for _, o := range h.clients[id] {
			if sessionOf(o) == sess {
				prev = o
				break
			}
		}
	}
	h.clients[id] = append(h.clients[id], s)
	h.subs[s] = nil
	h.mu.Unlock()
	if prev != nil {
		h.detach(prev, false)
	}
	if err := h.br.Hold(ctx, id); err != nil {
		h.Detach(s)
		return prev, fmt.Errorf("announce client: %w", err)
	}
	h.mu.Lock()
	if len(h.clients[id]) == 0 {
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
	if i := slices.Index(h.clients[id], s); i >= 0 {
		h.clients[id] = slices.Delete(h.clients[id], i, i+1)
	} else {
		release = false
	}
	if len(h.clients[id]) == 0 {
		delete(h.clients, id)
	} else {
		release = false // the id is still connected here
	}
	for _, x := range h.subs[s] {
		h.leave(s, x.channel)
	}
	delete(h.subs, s)
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
	mine, ok := h.subs[s]
	if !ok {
		h.mu.Unlock()
		return errors.New("connection is not attached")
	}
	m := mine.get(name)
	if m == nil && len(mine) >= h.cfg.MaxChannels {
		h.mu.Unlock()
		return fmt.Errorf("%w: the limit is %d", ErrTooManyChannels, h.cfg.MaxChannels)
	}
	ch := h.channels[name]
	first := ch == nil
	if first {
		ch = &channel{members: map[Sink]*member{}, ready: make(chan struct{})}
		h.channels[name] = ch
	}
	if m == nil {
		m = &member{s: s}
		h.subs[s] = append(mine, sub{name, m})
		ch.members[s] = m
		ch.fanout.Store(nil)
	} else {
		m.mu.Lock()
		m.live.Store(false)
		m.lost = false
		m.mu.Unlock()
	}
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
	m.last = wire.Position{}
	if since != nil && recovered {
		m.last = *since
	}
	if recovered {
		for _, msg := range backlog {
			if _, ok := m.send(s, msg, nil); !ok {
				return nil
			}
		}
	}
	if m.last.Epoch == "" && top.Epoch != "" {
		m.last = top
	}
	if m.overflow {
		// More arrived than could be parked: never a silent gap.
		m.pending, m.overflow = nil, false
		return ErrOverflow
	}
	if m.lost {
		// The bridge dropped messages that neither the backlog nor
		// pending holds: never a silent gap.
		m.pending, m.lost = nil, false
		return ErrLost
	}
	for _, msg := range m.pending {
		if _, ok := m.send(s, msg, nil); !ok {
			return nil
		}
	}
	m.pending = nil
	m.live.Store(true)
	return nil
}

// Unsubscribe removes s from name and reports whether it was subscribed.
func (h *Hub) Unsubscribe(s Sink, name string) bool {
	h.mu.Lock()
	mine, ok := h.subs[s].without(name)
	if ok {
		h.subs[s] = mine
	}
	h.leave(s, name)
	h.mu.Unlock()
	return ok
}

// leave removes s from channel name and drops the bridge interest with the
// last member. Called with h.mu held, so the bridge sees a channel's
// Unsubscribe before a later first subscriber's Subscribe (Unsubscribe does
// not block).
func (h *Hub) leave(s Sink, name string) {
	ch := h.channels[name]
	if ch == nil {
		return
	}
	if m := ch.members[s]; m != nil {
		m.gone.Store(true)
		delete(ch.members, s)
		ch.fanout.Store(nil)
	}
	if len(ch.members) == 0 {
		delete(h.channels, name)
		h.br.Unsubscribe(name)
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
		if m.gone.Load() {
			continue
		}
		if msg.Epoch == "" && m.live.Load() {
			// No position, nothing to de-duplicate: the lock-free path.
			m.s.Send(frame)
			n++
			continue
		}
		m.mu.Lock()
		if m.live.Load() {
			if sent, _ := m.send(m.s, msg, frame); sent {
				n++
			}
		} else if len(m.pending) < pendingLimit {
			m.pending = append(m.pending, msg)
		} else {
			m.overflow = true
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
	sinks := h.clients[d.To]
	if len(sinks) == 0 {
		return false
	}
	frame := wire.Encode(&wire.Frame{Op: wire.OpDirect, From: d.From, Data: d.Data})
	n := 0
	for _, s := range sinks {
		if s.Send(frame) {
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
	return slices.Clone(h.clients[id])
}

// Sinks returns a snapshot of the attached connections.
func (h *Hub) Sinks() []Sink {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]Sink, 0, len(h.subs))
	for s := range h.subs {
		out = append(out, s)
	}
	return out
}

// Len returns the number of attached connections.
func (h *Hub) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs)
}

func messageFrame(m bridge.Message) []byte {
	f := &wire.Frame{Op: wire.OpMessage, Channel: m.Channel, Data: m.Data, From: m.From}
	if m.Epoch != "" {
		f.Epoch = m.Epoch
		f.Offset = wire.Uint64(m.Offset)
	}
	return wire.Encode(f)
}
