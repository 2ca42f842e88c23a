package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder collects what the client reports through its callbacks.
type recorder struct {
	mu         sync.Mutex
	states     []State
	errs       []error
	welcomes   []wire.Frame
	subscribed []wire.Frame
	msgs       []Message
	directs    []Direct
	moves      []string
}

func (r *recorder) add(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn()
}

func get[T any](r *recorder, fn func() T) T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fn()
}

func (r *recorder) onMessage(m Message) { r.add(func() { r.msgs = append(r.msgs, m) }) }

func (r *recorder) messages() []Message {
	return get(r, func() []Message { return slices.Clone(r.msgs) })
}

// testConfig returns a config for srv that records every callback, with short
// backoffs.
func testConfig(t testing.TB, url, id string) (Config, *recorder) {
	r := &recorder{}
	cfg := DefaultConfig()
	cfg.URL, cfg.ClientID = url, id
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	cfg.Log = zaptest.NewLogger(t)
	cfg.OnState = func(s State, err error) {
		r.add(func() { r.states, r.errs = append(r.states, s), append(r.errs, err) })
	}
	cfg.OnWelcome = func(f wire.Frame) { r.add(func() { r.welcomes = append(r.welcomes, f) }) }
	cfg.OnSubscribed = func(f wire.Frame) { r.add(func() { r.subscribed = append(r.subscribed, f) }) }
	cfg.OnDirect = func(d Direct) { r.add(func() { r.directs = append(r.directs, d) }) }
	cfg.OnReconnectRequest = func(reason string, after time.Duration) {
		r.add(func() { r.moves = append(r.moves, reason+" "+after.String()) })
	}
	return cfg, r
}

// start runs a client until the test ends; prep may adjust it before Run.
func start(t testing.TB, cfg Config, prep ...func(*Client)) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, p := range prep {
		p(c)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	t.Cleanup(func() {
		c.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run still running 5s after Close")
		}
	})
	return c
}

func connected(t testing.TB, c *Client) {
	t.Helper()
	if !testkit.Until(2*time.Second, func() bool { return c.State() == StateConnected }) {
		t.Fatalf("state = %v, want connected", c.State())
	}
}

func subscribe(t testing.TB, c *Client, channel string, fn func(Message)) *Subscription {
	t.Helper()
	s, err := c.Subscribe(channel, fn)
	if err != nil {
		t.Fatalf("Subscribe(%q) = %v", channel, err)
	}
	select {
	case <-s.Ready():
	case <-time.After(2 * time.Second):
		t.Fatalf("Subscribe(%q): no subscribed reply within 2s", channel)
	}
	return s
}

func TestConnectAndClose(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	c := start(t, cfg)
	connected(t, c)
	if got := c.Node(); got != "n1" {
		t.Errorf("Node() = %q, want n1", got)
	}
	// OnWelcome runs after the state is set, outside the client's lock: wait for it.
	welcomes := func() []wire.Frame { return get(r, func() []wire.Frame { return slices.Clone(r.welcomes) }) }
	testkit.Until(2*time.Second, func() bool { return len(welcomes()) > 0 })
	if w := welcomes(); len(w) != 1 || w[0].ClientID != "alice" {
		t.Errorf("welcomes = %+v, want one for alice", w)
	}
	c.Close()
	want := []State{StateConnecting, StateConnected, StateClosed}
	states := func() []State { return get(r, func() []State { return slices.Clone(r.states) }) }
	if !testkit.Until(2*time.Second, func() bool { return slices.Equal(states(), want) }) {
		t.Fatalf("states = %v, want %v", states(), want)
	}
	if err := c.Publish(context.Background(), "room", 1); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Publish after Close = %v, want ErrNotConnected", err)
	}
	if _, err := c.Subscribe("room", func(Message) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
}

func TestPublishAndSend(t *testing.T) {
	srv := startServer(t)
	aliceCfg, alice := testConfig(t, srv.url, "alice")
	bobCfg, bob := testConfig(t, srv.url, "bob")
	a, b := start(t, aliceCfg), start(t, bobCfg)
	connected(t, a)
	connected(t, b)
	subscribe(t, a, "room", alice.onMessage)
	subscribe(t, b, "room", bob.onMessage)

	ctx := context.Background()
	if err := a.Publish(ctx, "room", map[string]int{"n": 1}); err != nil {
		t.Fatalf("Publish = %v, want nil", err)
	}
	want := Message{Channel: "room", Data: json.RawMessage(`{"n":1}`), From: "alice", Offset: 1, Epoch: "e1", HasOffset: true}
	for name, r := range map[string]*recorder{"alice": alice, "bob": bob} {
		if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) == 1 }) {
			t.Fatalf("%s got %v, want 1 message", name, offsets(r.messages()))
		}
		if got := r.messages()[0]; !equalMessage(got, want) {
			t.Errorf("%s got %+v, want %+v", name, got, want)
		}
	}

	if err := b.Send(ctx, "alice", "hi"); err != nil {
		t.Fatalf("Send = %v, want nil", err)
	}
	if !testkit.Until(2*time.Second, func() bool { return len(get(alice, func() []Direct { return alice.directs })) == 1 }) {
		t.Fatal("no direct message")
	}
	if d := get(alice, func() Direct { return alice.directs[0] }); d.From != "bob" || string(d.Data) != `"hi"` {
		t.Errorf("direct = {%q %s}, want {bob \"hi\"}", d.From, d.Data)
	}
}

func equalMessage(a, b Message) bool {
	return a.Channel == b.Channel && string(a.Data) == string(b.Data) && a.From == b.From &&
		a.Offset == b.Offset && a.Epoch == b.Epoch && a.HasOffset == b.HasOffset
}

func TestPublishErrors(t *testing.T) {
	srv := startServer(t)
	cfg, _ := testConfig(t, srv.url, "alice")
	cfg.RequestTimeout = 200 * time.Millisecond
	c := start(t, cfg)
	connected(t, c)
	ctx := context.Background()

	srv.set(func(s *fakeServer) { s.publishErr = wire.CodeBridgeUnavailable })
	var we *wire.Error
	if err := c.Publish(ctx, "room", 1); !errors.As(err, &we) || we.Code != wire.CodeBridgeUnavailable {
		t.Errorf("Publish refused by server = %v, want *wire.Error %s", err, wire.CodeBridgeUnavailable)
	}
	if err := c.Publish(ctx, "no room", 1); !errors.As(err, &we) || we.Code != wire.CodeBadChannel {
		t.Errorf("Publish(%q) = %v, want *wire.Error %s", "no room", err, wire.CodeBadChannel)
	}

	srv.set(func(s *fakeServer) { s.noReply = true })
	if err := c.Publish(ctx, "room", 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish without reply = %v, want DeadlineExceeded", err)
	}

	// A link that drops fails the pending request; the client does not re-send it.
	before := srv.count(&srv.publishes)
	done := make(chan error, 1)
	go func() { done <- c.Publish(ctx, "room", 1) }()
	if !testkit.Until(2*time.Second, func() bool { return srv.count(&srv.publishes) == before+1 }) {
		t.Fatal("publish never reached the server")
	}
	srv.drop()
	if err := <-done; !errors.Is(err, ErrDisconnected) {
		t.Errorf("Publish across a drop = %v, want ErrDisconnected", err)
	}
	if !testkit.Until(2*time.Second, func() bool { return c.Reconnects() == 1 }) {
		t.Fatalf("Reconnects() = %d, want 1", c.Reconnects())
	}
	if got := srv.count(&srv.publishes); got != before+1 {
		t.Errorf("server got %d publishes, want %d: the client re-sent", got, before+1)
	}

	idle, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := idle.Publish(ctx, "room", 1); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Publish before Run = %v, want ErrNotConnected", err)
	}
}

func offsets(msgs []Message) []string {
	var out []string
	for _, m := range msgs {
		if m.HasOffset {
			out = append(out, fmt.Sprintf("%s:%d", m.Epoch, m.Offset))
		} else {
			out = append(out, "-:"+string(m.Data))
		}
	}
	return out
}

func TestResubscribeRecovers(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	c := start(t, cfg)
	connected(t, c)
	subscribe(t, c, "room", r.onMessage)
	ctx := context.Background()
	for i := range 2 {
		if err := c.Publish(ctx, "room", i); err != nil {
			t.Fatalf("Publish = %v", err)
		}
	}
	if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) == 2 }) {
		t.Fatalf("got %v, want 2 messages", offsets(r.messages()))
	}

	// Drop the link and publish while the client is away: it resubscribes
	// from offset 2 and recovers offset 3.
	srv.set(func(s *fakeServer) {
		s.dropLocked()
		s.publishLocked("room", json.RawMessage(`2`), "bob")
	})
	if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) == 3 }) {
		t.Fatalf("got %v, want 3 messages", offsets(r.messages()))
	}
	if got := srv.lastSubscribe().Since; got == nil || *got != (wire.Position{Epoch: "e1", Offset: 2}) {
		t.Errorf("resubscribe since = %+v, want {e1 2}", got)
	}
	if s := get(r, func() wire.Frame { return r.subscribed[len(r.subscribed)-1] }); s.Recovered == nil || !*s.Recovered {
		t.Errorf("subscribed after drop = %+v, want recovered", s)
	}

	// History lost: recovered:false, and the new epoch's offsets count from
	// the reply's position rather than being taken for duplicates.
	srv.set(func(s *fakeServer) {
		s.dropLocked()
		s.epoch, s.history = "e2", map[string][]wire.Frame{}
	})
	if !testkit.Until(2*time.Second, func() bool { return len(get(r, func() []wire.Frame { return r.subscribed })) == 3 }) {
		t.Fatal("no subscribed reply after the history loss")
	}
	if s := get(r, func() wire.Frame { return r.subscribed[2] }); s.Recovered == nil || *s.Recovered || s.Epoch != "e2" {
		t.Errorf("subscribed after history loss = %+v, want recovered false in e2", s)
	}
	if err := c.Publish(ctx, "room", 4); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	want := []string{"e1:1", "e1:2", "e1:3", "e2:1"}
	if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) == 4 }) {
		t.Fatalf("got %v, want %v", offsets(r.messages()), want)
	}
	if got := offsets(r.messages()); !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	if got := c.Reconnects(); got != 2 {
		t.Errorf("Reconnects() = %d, want 2", got)
	}
}

func TestDuplicatesDropped(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	c := start(t, cfg)
	connected(t, c)
	subscribe(t, c, "room", r.onMessage) // position e1:0

	msg := func(channel, epoch string, offset int, data string) wire.Frame {
		f := wire.Frame{Op: wire.OpMessage, Channel: channel, Epoch: epoch, Data: json.RawMessage(data)}
		if offset >= 0 {
			f.Offset = wire.Uint64(uint64(offset))
		}
		return f
	}
	for _, f := range []wire.Frame{
		msg("room", "e1", 1, "1"),
		msg("room", "e1", 2, "2"),
		msg("room", "e1", 2, "2"), // duplicate
		msg("room", "e1", 1, "1"), // older
		msg("room", "e1", 3, "3"),
		msg("other", "e1", 9, "9"), // not subscribed
		msg("room", "", -1, `"x"`), // no history: delivered as is
		msg("room", "", -1, `"x"`),
	} {
		srv.inject(f)
	}
	want := []string{"e1:1", "e1:2", "e1:3", `-:"x"`, `-:"x"`}
	if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) >= len(want) }) {
		t.Fatalf("got %v, want %v", offsets(r.messages()), want)
	}
	if got := offsets(r.messages()); !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
}

func TestUnsubscribe(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	c := start(t, cfg)
	connected(t, c)
	s := subscribe(t, c, "room", r.onMessage)
	if _, err := c.Subscribe("room", r.onMessage); !errors.Is(err, ErrSubscribed) {
		t.Errorf("second Subscribe(room) = %v, want ErrSubscribed", err)
	}
	if err := s.Unsubscribe(); err != nil {
		t.Fatalf("Unsubscribe = %v", err)
	}
	if err := s.Unsubscribe(); err != nil {
		t.Errorf("second Unsubscribe = %v, want nil", err)
	}
	// A message the server still sends is dropped; a reconnect does not
	// bring the subscription back.
	srv.inject(wire.Frame{Op: wire.OpMessage, Channel: "room", Data: json.RawMessage(`1`)})
	srv.drop()
	if !testkit.Until(2*time.Second, func() bool { return c.Reconnects() == 1 }) {
		t.Fatalf("Reconnects() = %d, want 1", c.Reconnects())
	}
	subscribe(t, c, "marker", func(Message) {}) // its reply follows anything sent before it
	var channels []string
	srv.set(func(s *fakeServer) {
		for _, f := range s.subscribes {
			channels = append(channels, f.Channel)
		}
	})
	if want := []string{"room", "marker"}; !slices.Equal(channels, want) {
		t.Errorf("server got subscribes %q, want %q", channels, want)
	}
	if got := r.messages(); len(got) != 0 {
		t.Errorf("delivered %v after Unsubscribe, want nothing", offsets(got))
	}
}

func TestSubscribeBeforeConnect(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	var sub *Subscription
	c := start(t, cfg, func(c *Client) {
		var err error
		if sub, err = c.Subscribe("room", r.onMessage); err != nil {
			t.Fatalf("Subscribe before Run = %v", err)
		}
	})
	select {
	case <-sub.Ready():
	case <-time.After(2 * time.Second):
		t.Fatal("no subscribed reply after connecting")
	}
	if f := srv.lastSubscribe(); f.Channel != "room" || f.Since != nil {
		t.Errorf("subscribe = %+v, want room without since", f)
	}
	if err := c.Publish(context.Background(), "room", 1); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) == 1 }) {
		t.Fatalf("got %v, want 1 message", offsets(r.messages()))
	}
}

// A handler may publish and wait for the ack: the ack does not queue behind
// the handler.
func TestPublishFromHandler(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	cfg.RequestTimeout = time.Second
	c := start(t, cfg)
	connected(t, c)
	errc := make(chan error, 1)
	subscribe(t, c, "in", func(m Message) { errc <- c.Publish(context.Background(), "out", m.Data) })
	subscribe(t, c, "out", r.onMessage)
	if err := c.Publish(context.Background(), "in", "x"); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	if err := <-errc; err != nil {
		t.Errorf("Publish from handler = %v, want nil", err)
	}
	if !testkit.Until(2*time.Second, func() bool { return len(r.messages()) == 1 }) {
		t.Fatal("echo not delivered")
	}
}

// TestReconnectBackoff: only a reconnect frame brings the client back
// without its backoff; every close code, 4009 and 4010 included, waits.
func TestReconnectBackoff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backoff  time.Duration // every backoff sleep takes exactly this long
		fault    func(*fakeServer)
		minDelay time.Duration // the reconnect cannot come sooner
		moves    []string      // OnReconnectRequest calls
	}{
		{"reconnect frame", time.Minute, func(s *fakeServer) {
			s.inject(wire.Frame{Op: wire.OpReconnect, Reason: wire.ReasonRebalance, AfterMS: wire.Int(150)})
		}, 150 * time.Millisecond, []string{"rebalance 150ms"}},
		{"close 4009 moved backs off", 300 * time.Millisecond, func(s *fakeServer) { s.closeWith(wire.CloseMoved) }, 300 * time.Millisecond, nil},
		{"close 4010 replaced backs off", 300 * time.Millisecond, func(s *fakeServer) { s.closeWith(wire.CloseReplaced) }, 300 * time.Millisecond, nil},
		{"close 1001 going away backs off", 300 * time.Millisecond, func(s *fakeServer) { s.closeWith(wire.CloseGoingAway) }, 300 * time.Millisecond, nil},
		{"close 1012 restart backs off", 300 * time.Millisecond, func(s *fakeServer) { s.closeWith(wire.CloseServiceRestart) }, 300 * time.Millisecond, nil},
		{"close 1011 backs off", 300 * time.Millisecond, func(s *fakeServer) { s.closeWith(wire.CloseInternal) }, 300 * time.Millisecond, nil},
		{"drop backs off", 300 * time.Millisecond, (*fakeServer).drop, 300 * time.Millisecond, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			cfg, r := testConfig(t, srv.url, "alice")
			cfg.MinBackoff, cfg.MaxBackoff = tc.backoff, tc.backoff
			c := start(t, cfg, func(c *Client) { c.jitter = func(n int64) int64 { return n - 1 } })
			connected(t, c)
			t0 := time.Now()
			tc.fault(srv)
			if !testkit.Until(3*time.Second, func() bool { return c.Reconnects() == 1 }) {
				t.Fatalf("Reconnects() = %d, want 1", c.Reconnects())
			}
			d := time.Since(t0)
			if d < tc.minDelay {
				t.Errorf("reconnected after %v, want at least %v", d, tc.minDelay)
			}
			t.Logf("reconnected after %v", d)
			if got := get(r, func() []string { return r.moves }); !slices.Equal(got, tc.moves) {
				t.Errorf("OnReconnectRequest calls = %q, want %q", got, tc.moves)
			}
		})
	}
}

func TestHeartbeatDetectsSilentServer(t *testing.T) {
	const hb = 200 * time.Millisecond
	srv := startServer(t)
	srv.set(func(s *fakeServer) { s.heartbeatMS = int(hb / time.Millisecond) })
	cfg, r := testConfig(t, srv.url, "alice")
	c := start(t, cfg)
	connected(t, c)

	// Pongs keep the link alive past 2× heartbeat.
	if !testkit.Until(2*time.Second, func() bool { return srv.count(&srv.pings) >= 3 }) {
		t.Fatalf("server got %d pings, want 3", srv.count(&srv.pings))
	}
	if n := c.Reconnects(); n != 0 {
		t.Fatalf("Reconnects() = %d while the server answered, want 0", n)
	}

	t0 := time.Now()
	srv.blackhole()
	within := 2*hb + cfg.MaxBackoff + 300*time.Millisecond
	if !testkit.Until(within, func() bool { return c.Reconnects() == 1 }) {
		t.Fatalf("Reconnects() = %d %v after the server went silent, want 1", c.Reconnects(), within)
	}
	t.Logf("heartbeat %v: reconnected %v after the server went silent", hb, time.Since(t0))
	errs := get(r, func() []error { return slices.Clone(r.errs) })
	if !slices.ContainsFunc(errs, func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }) {
		t.Errorf("state errors = %v, want a read deadline", errs)
	}
}

func TestHungHandshake(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"no handshake", func(t *testing.T) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var conns []net.Conn
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					conns = append(conns, conn) // held open, never answered
				}
			})
			t.Cleanup(func() {
				ln.Close()
				wg.Wait()
				for _, c := range conns {
					c.Close()
				}
			})
			return "ws://" + ln.Addr().String() + "/ws"
		}},
		{"no welcome", func(t *testing.T) string {
			srv := startServer(t)
			srv.set(func(s *fakeServer) { s.noWelcome = true })
			return srv.url
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			cfg, r := testConfig(t, url, "alice")
			cfg.DialTimeout = 200 * time.Millisecond
			start(t, cfg)
			// Two attempts in 2s: the client gives up on each and keeps trying.
			var errs []error
			if !testkit.Until(2*time.Second, func() bool {
				errs = get(r, func() []error {
					return slices.DeleteFunc(slices.Clone(r.errs), func(err error) bool { return err == nil })
				})
				return len(errs) >= 2
			}) {
				t.Fatalf("disconnects = %v, want two", errs)
			}
			for _, err := range errs {
				if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("disconnect error = %v, want a timeout", err)
				}
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	const minD, maxD = 100 * time.Millisecond, 20 * time.Second
	top := func(n int64) int64 { return n - 1 }
	for _, tc := range []struct {
		outage time.Duration
		want   time.Duration // the ceiling: half the outage, within [minD, maxD]
	}{
		{0, minD},
		{150 * time.Millisecond, minD},
		{time.Second, 500 * time.Millisecond},
		{3 * time.Second, 1500 * time.Millisecond},
		{40 * time.Second, maxD},
		{time.Hour, maxD},
		{math.MaxInt64, maxD},
	} {
		if got := backoff(minD, maxD, tc.outage, top); got != tc.want {
			t.Errorf("backoff(%v) ceiling = %v, want %v", tc.outage, got, tc.want)
		}
		if got := backoff(minD, maxD, tc.outage, func(int64) int64 { return 0 }); got != 0 {
			t.Errorf("backoff(%v) floor = %v, want 0", tc.outage, got)
		}
	}
	// Full jitter: samples spread over [0, ceiling].
	rng := rand.New(rand.NewPCG(1, 2))
	for _, outage := range []time.Duration{0, 2 * time.Second, time.Minute} {
		ceil := backoff(minD, maxD, outage, top)
		var lo, hi int
		for range 1000 {
			d := backoff(minD, maxD, outage, rng.Int64N)
			if d < 0 || d > ceil {
				t.Fatalf("backoff(%v) = %v, outside [0, %v]", outage, d, ceil)
			}
			if d < ceil/4 {
				lo++
			}
			if d > ceil*3/4 {
				hi++
			}
		}
		if lo < 150 || hi < 150 {
			t.Errorf("backoff(%v): %d samples in the lowest quarter, %d in the highest, want about 250 each", outage, lo, hi)
		}
	}
}

// TestBackoffShortOutage simulates a server that is gone for 1.5 s: with
// the default bounds, 99% of 10,000 clients retrying in this shape are
// back within 2.25 s of the outage's start (half an outage late at worst).
func TestBackoffShortOutage(t *testing.T) {
	d := DefaultConfig()
	rng := rand.New(rand.NewPCG(3, 4))
	const outage = 1500 * time.Millisecond
	var back []time.Duration
	for range 10000 {
		at := time.Duration(0)
		for at < outage {
			at += backoff(d.MinBackoff, d.MaxBackoff, at, rng.Int64N)
		}
		back = append(back, at)
	}
	slices.Sort(back)
	p99, worst := back[len(back)*99/100], back[len(back)-1]
	if p99 > outage*3/2 || worst > outage*3/2 {
		t.Errorf("back after a %v outage: p99 %v, max %v; want at most %v", outage, p99, worst, outage*3/2)
	}
	t.Logf("back after a %v outage: p50 %v p99 %v max %v", outage, back[len(back)/2], p99, worst)
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		resp string
		want time.Duration
	}{
		{"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n", 2 * time.Second},
		{"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 86400\r\n\r\n", maxRetryAfter},
		{"HTTP/1.1 503 Service Unavailable\r\n\r\n", 0},
		{"HTTP/1.1 503 Service Unavailable\r\nRetry-After: soon\r\n\r\n", 0},
		{"HTTP/1.1 503 Service Unavailable\r\nRetry-After: Mon, 02 Jan 2006 15:04:05 GMT\r\n\r\n", 0}, // passed
		{"garbage", 0},
	} {
		if got := retryAfter(strings.NewReader(tc.resp)); got != tc.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tc.resp, got, tc.want)
		}
	}
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"bad client id", func(c *Config) { c.ClientID = "a b" }},
		{"empty client id", func(c *Config) { c.ClientID = "" }},
		{"http url", func(c *Config) { c.URL = "http://127.0.0.1:8080/ws" }},
		{"no host", func(c *Config) { c.URL = "ws:///ws" }},
		{"unparsable url", func(c *Config) { c.URL = "ws://[::1/ws" }},
		{"negative timeout", func(c *Config) { c.DialTimeout = -time.Second }},
		{"negative heartbeat", func(c *Config) { c.Heartbeat = -time.Second }},
		{"min above max backoff", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }},
	} {
		cfg := Config{URL: "ws://127.0.0.1:8080/ws", ClientID: "alice"}
		if _, err := New(cfg); err != nil {
			t.Fatalf("New(valid) = %v", err)
		}
		tc.edit(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%s) = nil error, want one", tc.name)
		}
	}
	c, err := New(Config{URL: "ws://h:1/ws?x=1", ClientID: "a@b", Token: "t&u"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "ws://h:1/ws?client_id=a%40b&x=1&session=" + c.Session() + "&token=t%26u"; c.sessionURL("t&u") != want {
		t.Errorf("dial url = %q, want %q", c.sessionURL("t&u"), want)
	}
	if c.cfg.DialTimeout != 5*time.Second || c.cfg.MaxMessageSize != 1<<20 {
		t.Errorf("defaults not applied: %+v", c.cfg)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{
		StateDisconnected: "disconnected", StateConnecting: "connecting",
		StateConnected: "connected", StateClosed: "closed", State(9): "state(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

// BenchmarkPublish measures a publish round trip (publish, ack, delivery to
// the publisher's own subscription) over loopback.
func BenchmarkPublish(b *testing.B) {
	srv := startServer(b)
	cfg, _ := testConfig(b, srv.url, "alice")
	cfg.Log = nil
	got := make(chan struct{}, 1)
	c := start(b, cfg)
	connected(b, c)
	subscribe(b, c, "room", func(Message) { got <- struct{}{} })
	ctx := context.Background()
	data := json.RawMessage(`{"text":"hello"}`)
	for b.Loop() {
		if err := c.Publish(ctx, "room", data); err != nil {
			b.Fatal(err)
		}
		<-got
	}
}

// A gap in offsets, or a new epoch, is never skipped: the client subscribes
// again from its last position and drops messages until the reply.
func TestGapResubscribes(t *testing.T) {
	srv := startServer(t)
	cfg, r := testConfig(t, srv.url, "alice")
	c := start(t, cfg)
	connected(t, c)
	subscribe(t, c, "room", r.onMessage) // position e1:0
	before := len(srv.subscribesCopy())

	for _, tc := range []struct {
		epoch  string
		offset uint64
		since  wire.Position
	}{
		{"e1", 3, wire.Position{Epoch: "e1", Offset: 1}}, // offset 2 is missing
		{"e9", 7, wire.Position{Epoch: "e1", Offset: 1}}, // history was lost
	} {
		srv.inject(wire.Frame{Op: wire.OpMessage, Channel: "room", Epoch: "e1", Offset: wire.Uint64(1), Data: json.RawMessage("1")})
		srv.inject(wire.Frame{Op: wire.OpMessage, Channel: "room", Epoch: tc.epoch, Offset: wire.Uint64(tc.offset), Data: json.RawMessage("0")})
		if !testkit.Until(2*time.Second, func() bool { return len(srv.subscribesCopy()) > before }) {
			t.Fatalf("message %s:%d after e1:1: no resubscribe", tc.epoch, tc.offset)
		}
		subs := srv.subscribesCopy()
		before = len(subs)
		if got := subs[len(subs)-1].Since; got == nil || *got != tc.since {
			t.Errorf("message %s:%d after e1:1: resubscribed since %+v, want %+v", tc.epoch, tc.offset, got, tc.since)
		}
	}
	for _, m := range r.messages() {
		if string(m.Data) == "0" {
			t.Errorf("message after a gap delivered: %+v", m)
		}
	}
}

// jwtWithExp builds an unsigned JWT-shaped token carrying exp, and the
// marker the fake server reads it back from.
func jwtWithExp(n int, exp time.Time) string {
	payload := fmt.Sprintf(`{"sub":"alice","exp":%d}`, exp.Unix())
	return "e30." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + fmt.Sprintf(".sig-%d-exp-%d", n, exp.Unix())
}

func TestTokenFuncAndSession(t *testing.T) {
	srv := startServer(t)
	cfg, _ := testConfig(t, srv.url, "alice")
	var calls atomic.Int32
	cfg.TokenFunc = func(ctx context.Context) (string, error) {
		n := calls.Add(1)
		if n == 2 {
			return "", errors.New("token service down") // one failed attempt: retried with backoff
		}
		return fmt.Sprintf("tok-%d", n), nil
	}
	c := start(t, cfg)
	connected(t, c)
	srv.closeWith(wire.CloseInternal)
	if !testkit.Until(3*time.Second, func() bool { return c.Reconnects() == 1 }) {
		t.Fatalf("Reconnects() = %d, want 1", c.Reconnects())
	}
	first := c.Session()
	srv.closeWith(wire.CloseReplaced)
	if !testkit.Until(3*time.Second, func() bool { return c.Reconnects() == 2 }) {
		t.Fatalf("Reconnects() = %d, want 2", c.Reconnects())
	}
	qs := srv.queriesCopy()
	if len(qs) != 3 {
		t.Fatalf("%d upgrades, want 3", len(qs))
	}
	for i, want := range []string{"tok-1", "tok-3", "tok-4"} {
		if got := qs[i].Get("token"); got != want {
			t.Errorf("upgrade %d: token %q, want %q (TokenFunc is asked before each connect)", i, got, want)
		}
	}
	if qs[0].Get("session") == "" || qs[0].Get("session") != qs[1].Get("session") || qs[1].Get("session") != first {
		t.Errorf("sessions %q, %q: want one session kept across an ordinary reconnect", qs[0].Get("session"), qs[1].Get("session"))
	}
	if qs[2].Get("session") == first || qs[2].Get("session") == "" {
		t.Errorf("session after 4010 = %q, want a new one (was %q)", qs[2].Get("session"), first)
	}
	if err := wire.ValidateSession(qs[2].Get("session")); err != nil {
		t.Errorf("session %q: %v", qs[2].Get("session"), err)
	}
}

func TestTokenRefreshBeforeExp(t *testing.T) {
	srv := startServer(t)
	cfg, _ := testConfig(t, srv.url, "alice")
	var calls atomic.Int32
	cfg.TokenFunc = func(ctx context.Context) (string, error) {
		n := int(calls.Add(1))
		return jwtWithExp(n, time.Now().Add(3*time.Second)), nil
	}
	c := start(t, cfg)
	connected(t, c)
	t0 := time.Now()
	// 3 s tokens renewed a fifth ahead: a refresh every ~2.4 s, never a reconnect.
	if !testkit.Until(8*time.Second, func() bool { return len(srv.refreshesCopy()) >= 2 }) {
		t.Fatalf("%d refreshes in %v, want 2", len(srv.refreshesCopy()), time.Since(t0))
	}
	if c.Reconnects() != 0 {
		t.Errorf("Reconnects() = %d, want 0: refresh keeps the link", c.Reconnects())
	}
	if r := srv.refreshesCopy(); r[0] == r[1] {
		t.Errorf("refresh tokens %q: want a fresh token each time", r)
	}
}

// TestHonoursRetryAfter: a connect refused with 503 and Retry-After: 1 is
// retried after that second (plus the backoff), not at once.
func TestHonoursRetryAfter(t *testing.T) {
	srv := startServer(t)
	refuser, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { refuser.Close(); wg.Wait() })
	refusedAt := make(chan time.Time, 1)
	wg.Go(func() {
		conn, err := refuser.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		conn.Read(buf) // the upgrade request
		io.WriteString(conn, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		refusedAt <- time.Now()
	})
	cfg, r := testConfig(t, srv.url, "alice")
	var dials atomic.Int32
	cfg.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			addr = refuser.Addr().String()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	var welcomedAt atomic.Pointer[time.Time]
	cfg.OnWelcome = func(wire.Frame) { now := time.Now(); welcomedAt.CompareAndSwap(nil, &now) }
	c := start(t, cfg)
	connected(t, c)
	wait := welcomedAt.Load().Sub(<-refusedAt)
	if wait < time.Second || wait > 1500*time.Millisecond {
		t.Errorf("welcomed %v after the 503 with Retry-After: 1, want 1 s plus at most the 50ms backoff", wait)
	}
	var refused *RefusedError
	errs := get(r, func() []error { return r.errs })
	if !slices.ContainsFunc(errs, func(err error) bool { return errors.As(err, &refused) }) || refused.Status != 503 || refused.RetryAfter != time.Second {
		t.Errorf("state errors %v, want a RefusedError 503 retry after 1s", errs)
	}
}
