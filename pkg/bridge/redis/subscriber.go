package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
)

// The node's one subscriber connection carries the pub/sub channels it has
// interest in: "<prefix>c:<channel>" per channel, "<prefix>u:<client id>" per
// client held here. Subscribe and Hold record the interest and wait until
// Redis confirms it; the syncer sends SUBSCRIBE/UNSUBSCRIBE in batches; the
// receive loop reads messages and confirmations. When the connection is
// lost, a fresh one replaces it and the syncer subscribes everything again.

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
// subscriptions back, and recv.Lost is called. From the lost connection
// until then, channel messages are dropped: recv.Lost refills them from
// history (whatever it cannot fill, it reports), and a live one delivered
// before that would overtake the missed ones.
const lostPing = "ringcast-resubscribed"

// Subscribe implements bridge.Bridge: it returns once Redis confirmed the
// subscription, or with an error wrapping bridge.ErrUnavailable after at
// most OpTimeout.
func (b *Bridge) Subscribe(ctx context.Context, channel string) error {
	if err := b.add(ctx, b.cfg.Prefix+"c:"+channel); err != nil {
		return fmt.Errorf("subscribe %s: %w", channel, err)
	}
	return nil
}

// Unsubscribe implements bridge.Bridge.
func (b *Bridge) Unsubscribe(channel string) { b.remove(b.cfg.Prefix + "c:" + channel) }

// Hold implements bridge.Bridge like Subscribe, for the client's channel.
func (b *Bridge) Hold(ctx context.Context, clientID string) error {
	if err := b.add(ctx, b.cfg.Prefix+"u:"+clientID); err != nil {
		return fmt.Errorf("hold %s: %w", clientID, err)
	}
	return nil
}

// Release implements bridge.Bridge.
func (b *Bridge) Release(clientID string) { b.remove(b.cfg.Prefix + "u:" + clientID) }

func (b *Bridge) add(ctx context.Context, name string) error {
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return fmt.Errorf("%w: bridge stopped", bridge.ErrUnavailable)
	case b.failed:
		b.mu.Unlock()
		return fmt.Errorf("%w: redis subscriber connection down", bridge.ErrUnavailable)
	}
	e := b.subs[name]
	if e == nil {
		e = &sub{ready: make(chan struct{})}
		b.subs[name] = e
	}
	if !e.want {
		e.want = true
		b.markDirty(name)
	}
	ready := e.ready
	b.mu.Unlock()

	t := time.NewTimer(b.cfg.OpTimeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: redis did not confirm within %v", bridge.ErrUnavailable, b.cfg.OpTimeout)
	}
}

func (b *Bridge) remove(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.subs[name]
	if e == nil || !e.want {
		return
	}
	e.want = false
	if !e.sent && e.inflight == 0 {
		delete(b.subs, name)
		return
	}
	b.markDirty(name)
}

// markDirty queues name for the syncer. Callers hold b.mu.
func (b *Bridge) markDirty(name string) {
	b.dirty[name] = struct{}{}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Bridge) syncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
			b.sync(ctx)
		}
	}
}

// sync sends the commands that bring the connection to the wanted set. It
// waits while the connection is down: the receive loop re-kicks it when the
// connection answers.
func (b *Bridge) sync(ctx context.Context) {
	b.mu.Lock()
	ps := b.ps
	if ps == nil || !b.subUp.Load() {
		b.mu.Unlock()
		return
	}
	lost := b.lost
	var add, del []string
	for name := range b.dirty {
		delete(b.dirty, name)
		e := b.subs[name]
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
	b.mu.Unlock()

	for _, c := range []struct {
		names []string
		do    func(context.Context, ...string) error
	}{{add, ps.Subscribe}, {del, ps.Unsubscribe}} {
		for len(c.names) > 0 {
			n := min(len(c.names), maxSubscribeArgs)
			cctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
			err := c.do(cctx, c.names[:n]...)
			cancel()
			if err != nil {
				// The connection is broken or was never made: replace it so
				// that no command is left unconfirmed.
				b.fail(ps, err)
				return
			}
			c.names = c.names[n:]
		}
	}
	if lost {
		cctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
		err := ps.Ping(cctx, lostPing)
		cancel()
		if err != nil {
			b.fail(ps, err)
		}
	}
}

// confirm counts a SUBSCRIBE or UNSUBSCRIBE reply for name on ps.
func (b *Bridge) confirm(ps *goredis.PubSub, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.subs[name]
	if b.ps != ps || e == nil || e.inflight == 0 {
		return
	}
	e.inflight--
	e.settle()
	if !e.want && !e.sent && e.inflight == 0 {
		delete(b.subs, name)
	}
}

// fail replaces the subscriber connection ps after err. Every subscription
// is forgotten by Redis and sent again once the new connection answers.
func (b *Bridge) fail(ps *goredis.PubSub, err error) {
	b.mu.Lock()
	if b.ps != ps || b.closed {
		b.mu.Unlock()
		return
	}
	if b.subUp.Swap(false) {
		b.lost = true
		b.gap.Store(true)
		b.log.Warn("subscriber connection lost", zap.Error(err))
	}
	b.failed = true
	for name, e := range b.subs {
		if !e.want {
			delete(b.subs, name)
			continue
		}
		e.sent, e.inflight = false, 0
		e.settle()
	}
	b.ps = b.client.Subscribe(context.Background())
	b.mu.Unlock()
	_ = ps.Close()
}

// up records that ps answered: the syncer subscribes everything wanted
// again, then, if messages may have been missed meanwhile, pings for
// recv.Lost.
func (b *Bridge) up(ps *goredis.PubSub) {
	b.mu.Lock()
	if b.ps != ps || b.closed {
		b.mu.Unlock()
		return
	}
	b.subUp.Store(true)
	b.failed = false
	for name, e := range b.subs {
		if e.want && !e.sent {
			b.dirty[name] = struct{}{}
		}
	}
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	b.log.Info("subscriber connection up")
}

// resubscribed handles the reply to lostPing on ps.
func (b *Bridge) resubscribed(ps *goredis.PubSub) {
	b.mu.Lock()
	lost := b.ps == ps && b.lost
	if lost {
		b.lost = false
	}
	b.mu.Unlock()
	if lost && b.recv.Lost != nil {
		// On the receive loop: nothing more is delivered until it returns.
		b.recv.Lost()
	}
	if lost {
		b.gap.Store(false)
	}
}

// receiveLoop reads the current subscriber connection. A fresh connection is
// pinged first so it dials at once; a connection silent for three
// PingEvery intervals after a ping is treated as lost.
func (b *Bridge) receiveLoop(ctx context.Context) {
	const minBackoff = 50 * time.Millisecond
	backoff := minBackoff
	var pinged *goredis.PubSub
	silent := 0
	for {
		b.mu.Lock()
		ps := b.ps
		b.mu.Unlock()
		if ps == nil || ctx.Err() != nil {
			return
		}
		var err error
		var msg any
		if ps != pinged {
			pinged, silent = ps, 0
			err = ps.Ping(ctx)
		}
		if err == nil {
			msg, err = ps.ReceiveTimeout(ctx, b.cfg.PingEvery)
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
			if !b.subUp.Load() {
				b.up(ps)
			}
			b.handle(ps, msg)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		b.fail(ps, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, b.cfg.PingEvery)
	}
}

func (b *Bridge) handle(ps *goredis.PubSub, msg any) {
	switch m := msg.(type) {
	case *goredis.Subscription:
		b.confirm(ps, m.Channel)
	case *goredis.Pong:
		if m.Payload == lostPing {
			b.resubscribed(ps)
		}
	case *goredis.Message:
		name := strings.TrimPrefix(m.Channel, b.cfg.Prefix)
		var err error
		switch {
		case strings.HasPrefix(name, "c:") && b.gap.Load():
			// Between a lost connection and recv.Lost, a live message
			// would overtake the ones missed before it; recv.Lost refills
			// it from history with them.
		case strings.HasPrefix(name, "c:"):
			var msg bridge.Message
			if err = json.Unmarshal([]byte(m.Payload), &msg); err == nil {
				b.recv.Deliver(msg)
			}
		case strings.HasPrefix(name, "u:"):
			var d bridge.Direct
			if err = json.Unmarshal([]byte(m.Payload), &d); err == nil {
				b.recv.DeliverDirect(d)
			}
		}
		if err != nil {
			b.log.Warn("drop undecodable message", zap.String("channel", m.Channel), zap.Error(err))
		}
	}
}
