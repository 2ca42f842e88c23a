package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// clock gives offsets from the start of a run.
type clock struct{ t0 time.Time }

func (c clock) now() time.Duration { return time.Since(c.t0) }

// tag is the data of every message the harness publishes or sends.
type tag struct {
	P string `json:"p"` // publisher
	S int64  `json:"s"` // its sequence number
}

func parseTag(b []byte) (tag, bool) {
	var t tag
	if json.Unmarshal(b, &t) != nil || t.P == "" {
		return tag{}, false
	}
	return t, true
}

// member is one client of the fleet and everything it saw. Its hooks run on
// the client's Run goroutine; the harness reads the log under mu.
type member struct {
	c   *client.Client
	clk clock

	mu   sync.Mutex
	log  clientLog
	wire map[string]wire.Position // channel → last offset received since its subscribed reply
}

func newMember(clk clock, id, url, balancer string, channels []string) (*member, error) {
	m := &member{clk: clk, wire: map[string]wire.Position{}}
	m.log = clientLog{ID: id, Balancer: balancer, Channels: channels}
	cfg := client.DefaultConfig()
	cfg.URL, cfg.ClientID = url, id
	cfg.DialTimeout = 2 * time.Second
	cfg.OnWelcome = func(w wire.Frame) {
		m.mu.Lock()
		m.log.Sessions = append(m.log.Sessions, session{Node: w.Node, Welcome: clk.now(), End: open, Subs: map[string]time.Duration{}})
		clear(m.wire)
		m.mu.Unlock()
	}
	cfg.OnState = func(s client.State, err error) {
		if s != client.StateDisconnected {
			return
		}
		m.mu.Lock()
		if n := len(m.log.Sessions); n > 0 && m.log.Sessions[n-1].End == open {
			m.log.Sessions[n-1].End, m.log.Sessions[n-1].Reason = clk.now(), reason(err)
		}
		m.mu.Unlock()
	}
	cfg.OnSubscribed = func(f wire.Frame) {
		at := clk.now()
		m.mu.Lock()
		r := reply{At: at, Channel: f.Channel, Recovered: f.Recovered, Epoch: f.Epoch}
		if f.Offset != nil {
			r.Offset = *f.Offset
		}
		m.log.Replies = append(m.log.Replies, r)
		delete(m.wire, f.Channel)
		if n := len(m.log.Sessions); n > 0 {
			if _, ok := m.log.Sessions[n-1].Subs[f.Channel]; !ok {
				m.log.Sessions[n-1].Subs[f.Channel] = at
			}
		}
		m.mu.Unlock()
	}
	cfg.OnMessageFrame = func(f wire.Frame) {
		// What the server sent on the wire, before the client drops
		// duplicates: within one subscription offsets must rise.
		if f.Offset == nil {
			return
		}
		at := clk.now()
		m.mu.Lock()
		if last, ok := m.wire[f.Channel]; ok && last.Epoch == f.Epoch && *f.Offset <= last.Offset {
			t, _ := parseTag(f.Data)
			m.log.WireRepeats = append(m.log.WireRepeats, delivery{At: at, Channel: f.Channel, Pub: t.P, Seq: t.S, Epoch: f.Epoch, Offset: *f.Offset})
		}
		m.wire[f.Channel] = wire.Position{Epoch: f.Epoch, Offset: *f.Offset}
		m.mu.Unlock()
	}
	cfg.OnDirect = func(d client.Direct) {
		t, _ := parseTag(d.Data)
		m.mu.Lock()
		m.log.Directs = append(m.log.Directs, delivery{At: clk.now(), Pub: t.P, Seq: t.S})
		m.mu.Unlock()
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	m.c = c
	for _, ch := range channels {
		_, err := c.Subscribe(ch, func(msg client.Message) {
			t, _ := parseTag(msg.Data)
			m.mu.Lock()
			m.log.Messages = append(m.log.Messages, delivery{At: clk.now(), Channel: msg.Channel, Pub: t.P, Seq: t.S, Epoch: msg.Epoch, Offset: msg.Offset})
			m.mu.Unlock()
		})
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

// reason names why a session ended, for the report.
func reason(err error) string {
	var ce wsutil.ClosedError
	var ne net.Error
	switch {
	case err == nil:
		return "none"
	case errors.As(err, &ce):
		return "close " + strconv.Itoa(int(ce.Code))
	case strings.HasPrefix(err.Error(), "server asked to reconnect: "):
		return "reconnect " + strings.TrimPrefix(err.Error(), "server asked to reconnect: ")
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "EOF"):
		return "eof"
	case strings.Contains(err.Error(), "reset by peer"):
		return "reset"
	}
	return "other"
}

// snapshot copies the member's log.
func (m *member) snapshot() clientLog {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.log
	l.Sessions = make([]session, len(m.log.Sessions))
	for i, s := range m.log.Sessions {
		s.Subs = copyMap(s.Subs)
		l.Sessions[i] = s
	}
	l.Replies = append([]reply(nil), m.log.Replies...)
	l.Messages = append([]delivery(nil), m.log.Messages...)
	l.Directs = append([]delivery(nil), m.log.Directs...)
	l.WireRepeats = append([]delivery(nil), m.log.WireRepeats...)
	return l
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// current returns the node of the session that is up and whether it is
// subscribed to every channel; node is "" when no session is up.
func (m *member) current() (node string, subscribed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.log.Sessions)
	if n == 0 || m.log.Sessions[n-1].End != open || m.c.State() != client.StateConnected {
		return "", false
	}
	s := m.log.Sessions[n-1]
	for _, ch := range m.log.Channels {
		if _, ok := s.Subs[ch]; !ok {
			return s.Node, false
		}
	}
	return s.Node, true
}

// has reports whether the member received message (pub, seq) on channel.
func (m *member) has(channel, pub string, seq int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := len(m.log.Messages) - 1; i >= 0; i-- {
		d := m.log.Messages[i]
		if d.Channel == channel && d.Pub == pub && d.Seq == seq {
			return true
		}
	}
	return false
}

// fleet runs the members' clients.
type fleet struct {
	members []*member
	wg      sync.WaitGroup
	cancel  context.CancelFunc
}

// startFleet connects n members, member i through urls[i%len(urls)] and
// subscribed to two channels (one when there is only one), and waits until
// every member is subscribed.
func startFleet(ctx context.Context, clk clock, n int, urls, balancers, channels []string) (*fleet, error) {
	rctx, cancel := context.WithCancel(context.Background())
	f := &fleet{cancel: cancel}
	for i := range n {
		chs := []string{channels[i%len(channels)]}
		if len(channels) > 1 {
			chs = append(chs, channels[(i+1)%len(channels)])
		}
		b := i % len(urls)
		m, err := newMember(clk, fmt.Sprintf("c%03d", i), urls[b], balancers[b], chs)
		if err != nil {
			f.close()
			return nil, err
		}
		f.members = append(f.members, m)
		f.wg.Go(func() { m.c.Run(rctx) })
	}
	err := testkit.Wait(ctx, 30*time.Second, func() error {
		for _, m := range f.members {
			if _, ok := m.current(); !ok {
				return fmt.Errorf("client %s is not subscribed yet", m.log.ID)
			}
		}
		return nil
	})
	if err != nil {
		f.close()
		return nil, fmt.Errorf("connect fleet: %w", err)
	}
	return f, nil
}

// close stops every client and waits for them.
func (f *fleet) close() {
	f.cancel()
	for _, m := range f.members {
		m.c.Close()
	}
	f.wg.Wait()
}
