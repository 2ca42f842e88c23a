package client

import (
	"fmt"

	"github.com/ringcast/ringcast/pkg/wire"
)

// Subscription is a channel subscription; it survives reconnects.
type Subscription struct {
	c       *Client
	channel string
	fn      func(Message)
	ready   chan struct{} // closed at the first subscribed reply

	// Guarded by c.mu.
	pos     wire.Position // last delivered message, or the subscribed reply's position
	hasPos  bool
	isReady bool
	resync  bool // a gap was seen: drop messages until the next subscribed reply
}

// Subscribe subscribes to channel and calls fn with each message, in order,
// one at a time on the Run goroutine; fn must not block long. Without a link
// the subscription is recorded and sent after the next welcome; after every
// reconnect it is renewed from the last delivered position, and messages seen
// before are dropped. Each subscribed reply, recovered or not, goes to
// Config.OnSubscribed.
func (c *Client) Subscribe(channel string, fn func(Message)) (*Subscription, error) {
	if err := wire.ValidateChannel(channel); err != nil {
		return nil, err
	}
	if fn == nil {
		return nil, fmt.Errorf("subscribe %s: nil handler", channel)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.subs[channel] != nil {
		return nil, fmt.Errorf("subscribe %s: %w", channel, ErrSubscribed)
	}
	s := &Subscription{c: c, channel: channel, fn: fn, ready: make(chan struct{})}
	c.subs[channel] = s
	if c.link != nil {
		_ = c.link.sendFrame(s.subscribeFrame()) // a failed write drops the link; the next welcome resubscribes
	}
	return s, nil
}

// Ready is closed once the server has confirmed the subscription: from then
// on every publish to the channel reaches it.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Channel returns the subscribed channel.
func (s *Subscription) Channel() string { return s.channel }

// Unsubscribe stops delivery (a message being delivered may still complete)
// and tells the server when linked. Calling it again does nothing.
func (s *Subscription) Unsubscribe() error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subs[s.channel] != s {
		return nil
	}
	delete(c.subs, s.channel)
	if c.link == nil {
		return nil
	}
	if err := c.link.sendFrame(&wire.Frame{Op: wire.OpUnsubscribe, Channel: s.channel}); err != nil {
		return fmt.Errorf("unsubscribe %s: %w", s.channel, err)
	}
	return nil
}

// subscribeFrame asks for the channel from the known position. Call with c.mu held.
func (s *Subscription) subscribeFrame() *wire.Frame {
	f := &wire.Frame{Op: wire.OpSubscribe, Channel: s.channel}
	if s.hasPos {
		pos := s.pos
		f.Since = &pos
	}
	return f
}

// subscribed records a subscribed reply. Unless it recovered the gap, the
// reply's position becomes the new starting point.
func (c *Client) subscribed(f *wire.Frame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[f.Channel]
	if s == nil {
		return
	}
	if f.Recovered == nil || !*f.Recovered {
		s.hasPos = f.Offset != nil
		if s.hasPos {
			s.pos = wire.Position{Epoch: f.Epoch, Offset: *f.Offset}
		}
	}
	s.resync = false
	if !s.isReady {
		s.isReady = true
		close(s.ready)
	}
}

// deliver hands a message to its subscription, dropping ones already seen in
// the same epoch.
func (c *Client) deliver(f *wire.Frame) {
	m := Message{Channel: f.Channel, Data: f.Data, From: f.From, Epoch: f.Epoch}
	c.mu.Lock()
	s := c.subs[f.Channel]
	if s == nil {
		c.mu.Unlock()
		return
	}
	if f.Offset != nil {
		m.Offset, m.HasOffset = *f.Offset, true
		if s.resync || s.hasPos && f.Epoch == s.pos.Epoch && m.Offset <= s.pos.Offset {
			c.mu.Unlock()
			return
		}
		if s.hasPos && (f.Epoch != s.pos.Epoch || m.Offset > s.pos.Offset+1) {
			// A gap: never skip it silently. Subscribe again from the last
			// position; the reply recovers the gap or says recovered:false,
			// and messages until then arrive again through it.
			s.resync = true
			if c.link != nil {
				_ = c.link.sendFrame(s.subscribeFrame()) // a failed write drops the link; the next welcome resubscribes
			}
			c.mu.Unlock()
			return
		}
		s.pos, s.hasPos = wire.Position{Epoch: f.Epoch, Offset: m.Offset}, true
	}
	c.mu.Unlock()
	s.fn(m)
}
