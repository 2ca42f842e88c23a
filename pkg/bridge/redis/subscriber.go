package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
)

// A subscriber connection carries the pub/sub channels the node has
// interest in: one channel per channel with subscribers here, one per client
// held here. On one server (or a Sentinel primary) a single connection
// carries them all; on a cluster there is one connection per partition,
// using sharded pub/sub (SSUBSCRIBE) on the primary of the partition's slot.
// Subscribe and Hold record the interest and wait until Redis confirms it;
// the syncer sends (S)SUBSCRIBE/(S)UNSUBSCRIBE in batches; the receive loop
// reads messages and confirmations. When the connection is lost (or, on a
// cluster, its slot moves or its primary fails over), a fresh one replaces
// it and the syncer subscribes everything again.
//
// Messages published while a connection was down are missed. The connection
// then has a gap: it drops channel messages until every connection is back
// and recv.Lost has run (the node refills every subscription from history,
// or tells it recovered:false). While recv.Lost runs, no connection delivers
// a channel message (they wait), so refilled and live messages cannot
// cross, and a live one never overtakes the missed ones.

// subConn is one subscriber connection and the subscriptions it carries.
type subConn struct {
	b      *Bridge
	idx    int
	anchor string        // cluster: a sharded channel of the partition, subscribed first so go-redis dials the slot's primary
	kick   chan struct{} // subscription changes for the syncer
	up     atomic.Bool   // the connection answered since it was last lost
	gap    atomic.Bool   // channel messages are dropped until recv.Lost ran; written under b.lostMu

	mu     sync.Mutex
	ps     *goredis.PubSub // the connection; nil once closed
	subs   map[string]*sub // pub/sub channel → state
	dirty  map[string]struct{}
	failed bool // the connection was lost and is not back
	lost   bool // messages may have been missed: ping for resubscribed once it is back
	closed bool
}

func (b *Bridge) newSubConn(idx int) *subConn {
	c := &subConn{b: b, idx: idx, kick: make(chan struct{}, 1), subs: map[string]*sub{}, dirty: map[string]struct{}{}}
	if b.cluster != nil {
		c.anchor = b.cfg.Prefix + b.tag(idx) + "anchor"
	}
	return c
}

// down returns an error wrapping bridge.ErrUnavailable while the
// connection is not up.
func (c *subConn) down() error {
	if c.up.Load() {
		return nil
	}
	return fmt.Errorf("%w: redis subscriber connection %d of %d down", bridge.ErrUnavailable, c.idx+1, len(c.b.conns))
}

// open makes the first connection; Run calls it.
func (c *subConn) open() {
	c.mu.Lock()
	c.ps = c.newPubSub()
	c.mu.Unlock()
}

// shut closes the connection for good.
func (c *subConn) shut() {
	c.mu.Lock()
	c.closed = true
	c.up.Store(false)
	ps := c.ps
	c.ps = nil
	c.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
}

// newPubSub returns an unconnected PubSub; the receive loop dials it.
func (c *subConn) newPubSub() *goredis.PubSub {
	if c.b.cluster != nil {
		return c.b.cluster.SSubscribe(context.Background())
	}
	return c.b.client.Subscribe(context.Background())
}

// dial connects a fresh ps: on a cluster by subscribing the anchor, which
// picks the primary of the partition's slot.
func (c *subConn) dial(ctx context.Context, ps *goredis.PubSub) error {
	if c.anchor != "" {
		return ps.SSubscribe(ctx, c.anchor)
	}
	return ps.Ping(ctx)
}

func (c *subConn) subscribe(ctx context.Context, ps *goredis.PubSub, names ...string) error {
	if c.b.cluster != nil {
		return ps.SSubscribe(ctx, names...)
	}
	return ps.Subscribe(ctx, names...)
}

func (c *subConn) unsubscribe(ctx context.Context, ps *goredis.PubSub, names ...string) error {
	if c.b.cluster != nil {
		return ps.SUnsubscribe(ctx, names...)
	}
	return ps.Unsubscribe(ctx, names...)
}

// sub is the state of one pub/sub channel on the current connection.
// Invariant: live == (ready is closed) == (sent && inflight == 0).
type sub struct {
	want     bool // some caller wants it
	sent     bool // the last command sent for it was SUBSCRIBE
	inflight int  // commands sent, not yet confirmed
	live     bool
	ready    chan struct{}
}

func (e *sub) settle() {
	ok := e.sent && e.inflight == 0
	if ok && !e.live {
		close(e.ready)
	} else if !ok && e.live {
		e.ready = make(chan struct{})
	}
	e.live = ok
}

// maxSubscribeArgs bounds the channels named in one command.
const maxSubscribeArgs = 1024

// lostPing is the payload of the PING the syncer sends after subscribing
// everything again on a new connection: its reply means Redis has the
// subscriptions back.
const lostPing = "ringcast-resubscribed"

// Subscribe implements bridge.Bridge: it returns once Redis confirmed the
// subscription, or with an error wrapping bridge.ErrUnavailable after at
// most OpTimeout.
func (b *Bridge) Subscribe(ctx context.Context, channel string) error {
	if err := b.conns[b.partition(channel)].add(ctx, b.channelTopic(channel)); err != nil {
		return fmt.Errorf("subscribe %s: %w", channel, err)
	}
	return nil
}

// Unsubscribe implements bridge.Bridge.
func (b *Bridge) Unsubscribe(channel string) {
	b.conns[b.partition(channel)].remove(b.channelTopic(channel))
}

// Hold implements bridge.Bridge like Subscribe, for the client's channel.
func (b *Bridge) Hold(ctx context.Context, clientID string) error {
	if err := b.conns[b.partition(clientID)].add(ctx, b.clientTopic(clientID)); err != nil {
		return fmt.Errorf("hold %s: %w", clientID, err)
	}
	return nil
}

// Release implements bridge.Bridge.
func (b *Bridge) Release(clientID string) {
	b.conns[b.partition(clientID)].remove(b.clientTopic(clientID))
}

func (c *subConn) add(ctx context.Context, name string) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return fmt.Errorf("%w: bridge stopped", bridge.ErrUnavailable)
	case c.failed:
		c.mu.Unlock()
		return fmt.Errorf("%w: redis subscriber connection down", bridge.ErrUnavailable)
	}
	e := c.subs[name]
	if e == nil {
		e = &sub{ready: make(chan struct{})}
		c.subs[name] = e
	}
	if !e.want {
		e.want = true
		c.markDirty(name)
	}
	ready := e.ready
	c.mu.Unlock()

	t := time.NewTimer(c.b.cfg.OpTimeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: redis did not confirm within %v", bridge.ErrUnavailable, c.b.cfg.OpTimeout)
	}
}

func (c *subConn) remove(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.subs[name]
	if e == nil || !e.want {
		return
	}
	e.want = false
	if !e.sent && e.inflight == 0 {
		delete(c.subs, name)
		return
	}
	c.markDirty(name)
}

// markDirty queues name for the syncer. Callers hold c.mu.
func (c *subConn) markDirty(name string) {
	c.dirty[name] = struct{}{}
	c.poke()
}

func (c *subConn) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *subConn) syncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			c.sync(ctx)
		}
	}
}

// sync sends the commands that bring the connection to the wanted set. It
// waits while the connection is down: the receive loop re-kicks it when the
// connection answers.
func (c *subConn) sync(ctx context.Context) {
	c.mu.Lock()
	ps := c.ps
	if ps == nil || !c.up.Load() {
		c.mu.Unlock()
		return
	}
	lost := c.lost
	var add, del []string
	for name := range c.dirty {
		delete(c.dirty, name)
		e := c.subs[name]
		switch {
		case e == nil:
			continue
		case e.want && !e.sent:
			add = append(add, name)
			e.sent = true
		case !e.want && e.sent:
			del = append(del, name)
			e.sent = false
		default:
			continue
		}
		e.inflight++
		e.settle()
	}
	c.mu.Unlock()

	for _, cmd := range []struct {
		names []string
		do    func(context.Context, *goredis.PubSub, ...string) error
	}{{add, c.subscribe}, {del, c.unsubscribe}} {
		for len(cmd.names) > 0 {
			n := min(len(cmd.names), maxSubscribeArgs)
			cctx, cancel := context.WithTimeout(ctx, c.b.cfg.OpTimeout)
			err := cmd.do(cctx, ps, cmd.names[:n]...)
			cancel()
			if err != nil {
				// The connection is broken or was never made: replace it so
				// that no command is left unconfirmed.
				c.fail(ps, err)
				return
			}
			cmd.names = cmd.names[n:]
		}
	}
	if lost {
		cctx, cancel := context.WithTimeout(ctx, c.b.cfg.OpTimeout)
		err := ps.Ping(cctx, lostPing)
		cancel()
		if err != nil {
			c.fail(ps, err)
		}
	}
}

// confirm counts a subscribe or unsubscribe reply for name on ps. A reply
// nobody asked for is Redis dropping the subscription (on a cluster: the
// slot moved away), so the connection is replaced.
func (c *subConn) confirm(ps *goredis.PubSub, m *goredis.Subscription) {
	c.mu.Lock()
	e := c.subs[m.Channel]
	if c.ps != ps {
		c.mu.Unlock()
		return
	}
	dropped := strings.HasSuffix(m.Kind, "unsubscribe") && (m.Channel == c.anchor || e != nil && e.sent && e.inflight == 0)
	if !dropped && e != nil && e.inflight > 0 {
		e.inflight--
		e.settle()
		if !e.want && !e.sent && e.inflight == 0 {
			delete(c.subs, m.Channel)
		}
	}
	c.mu.Unlock()
	if dropped {
		c.fail(ps, fmt.Errorf("redis dropped the subscription to %s", m.Channel))
	}
}

// fail replaces the connection ps after err. Every subscription is
// forgotten by Redis and sent again once the new connection answers.
func (c *subConn) fail(ps *goredis.PubSub, err error) {
	c.b.lostMu.Lock()
	defer c.b.lostMu.Unlock()
	c.mu.Lock()
	if c.ps != ps || c.closed {
		c.mu.Unlock()
		return
	}
	if c.up.Swap(false) {
		c.lost = true
		c.gap.Store(true)
		c.b.log.Warn("subscriber connection lost", zap.Int("conn", c.idx), zap.Error(err))
	}
	c.failed = true
	for name, e := range c.subs {
		if !e.want {
			delete(c.subs, name)
			continue
		}
		e.sent, e.inflight = false, 0
		e.settle()
	}
	c.ps = c.newPubSub()
	c.mu.Unlock()
	_ = ps.Close()
	if c.b.cluster != nil {
		c.b.cluster.ReloadState(context.Background()) // the slot may have moved
	}
}

// answered records that ps answered: the syncer subscribes everything
// wanted again, then, if messages may have been missed meanwhile, pings for
// resubscribed.
func (c *subConn) answered(ps *goredis.PubSub) {
	c.mu.Lock()
	if c.ps != ps || c.closed {
		c.mu.Unlock()
		return
	}
	c.up.Store(true)
	c.failed = false
	for name, e := range c.subs {
		if e.want && !e.sent {
			c.dirty[name] = struct{}{}
		}
	}
	c.mu.Unlock()
	c.poke()
	c.b.log.Info("subscriber connection up", zap.Int("conn", c.idx))
}

// resubscribed handles the reply to lostPing on ps: once every connection
// is back, recv.Lost runs and the gaps close.
func (c *subConn) resubscribed(ps *goredis.PubSub) {
	c.mu.Lock()
	ok := c.ps == ps && c.lost
	if ok {
		c.lost = false
	}
	c.mu.Unlock()
	if ok {
		c.b.closeGaps()
	}
}

// closeGaps runs recv.Lost and clears every gap, unless a connection is
// still down or not yet resubscribed: the last one to come back does it.
// Channel deliveries wait meanwhile.
func (b *Bridge) closeGaps() {
	b.lostMu.Lock()
	defer b.lostMu.Unlock()
	gaps := false
	for _, c := range b.conns {
		c.mu.Lock()
		pending := c.lost || !c.up.Load()
		c.mu.Unlock()
		if pending {
			return
		}
		gaps = gaps || c.gap.Load()
	}
	if !gaps {
		return
	}
	b.deliverMu.Lock()
	defer b.deliverMu.Unlock()
	if b.recv.Lost != nil {
		b.recv.Lost()
	}
	for _, c := range b.conns {
		c.gap.Store(false)
	}
}

// receiveLoop reads the current connection. A fresh connection is dialled
// first; a connection silent for three PingEvery intervals after a ping is
// treated as lost.
func (c *subConn) receiveLoop(ctx context.Context) {
	const minBackoff = 50 * time.Millisecond
	backoff := minBackoff
	var dialled *goredis.PubSub
	silent := 0
	for {
		c.mu.Lock()
		ps := c.ps
		c.mu.Unlock()
		if ps == nil || ctx.Err() != nil {
			return
		}
		var err error
		var msg any
		if ps != dialled {
			dialled, silent = ps, 0
			dctx, cancel := context.WithTimeout(ctx, c.b.cfg.OpTimeout)
			err = c.dial(dctx, ps)
			cancel()
		}
		if err == nil {
			msg, err = ps.ReceiveTimeout(ctx, c.b.cfg.PingEvery)
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				if silent < 2 {
					silent++
					err = ps.Ping(ctx)
				} else {
					err = fmt.Errorf("no reply to ping: %w", err)
				}
				if err == nil {
					continue
				}
			}
		}
		if err == nil {
			silent, backoff = 0, minBackoff
			if !c.up.Load() {
				c.answered(ps)
			}
			c.handle(ps, msg)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		c.fail(ps, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.b.cfg.PingEvery)
	}
}

func (c *subConn) handle(ps *goredis.PubSub, msg any) {
	b := c.b
	switch m := msg.(type) {
	case *goredis.Subscription:
		c.confirm(ps, m)
	case *goredis.Pong:
		if m.Payload == lostPing {
			c.resubscribed(ps)
		}
	case *goredis.Message:
		name := strings.TrimPrefix(m.Channel, b.cfg.Prefix)
		if strings.HasPrefix(name, "{") { // a cluster partition's tag
			_, name, _ = strings.Cut(name, "}")
		}
		switch {
		case strings.HasPrefix(name, "c:"):
			if msg, no := b.channelMessage(name[2:], m.Payload); no != "" {
				b.drop(m.Channel, no)
			} else {
				b.deliver(c, msg)
			}
		case strings.HasPrefix(name, "u:"):
			if d, no := b.directMessage(name[2:], m.Payload); no != "" {
				b.drop(m.Channel, no)
			} else {
				b.recv.DeliverDirect(d)
			}
		}
	}
}

// deliver hands msg to recv.Deliver unless c has a gap: recv.Lost refills
// it from history with the messages missed before it. It waits while
// recv.Lost runs.
func (b *Bridge) deliver(c *subConn, msg bridge.Message) {
	b.deliverMu.RLock()
	defer b.deliverMu.RUnlock()
	if !c.gap.Load() {
		b.recv.Deliver(msg)
	}
}
