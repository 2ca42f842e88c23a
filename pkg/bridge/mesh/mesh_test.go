package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type server struct {
	addr string
	h    http.Handler

	mu    sync.Mutex
	hs    *http.Server
	conns []net.Conn
	done  chan struct{}
}

func (s *server) Accept(ln net.Listener) (net.Conn, error) {
	c, err := ln.Accept()
	if err == nil {
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
	}
	return c, err
}

type trackListener struct {
	net.Listener
	s *server
}

func (l trackListener) Accept() (net.Conn, error) { return l.s.Accept(l.Listener) }

func (s *server) start(t *testing.T) {
	t.Helper()
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("GET /v1/mesh", s.h)
	s.mu.Lock()
	s.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.done = make(chan struct{})
	hs, done := s.hs, s.done
	s.mu.Unlock()
	go func() { defer close(done); hs.Serve(trackListener{ln, s}) }()
}

func (s *server) stop() {
	s.mu.Lock()
	hs, done, conns := s.hs, s.done, s.conns
	s.hs, s.conns = nil, nil
	s.mu.Unlock()
	if hs == nil {
		return
	}
	hs.Close()
	for _, c := range conns {
		c.Close()
	}
	<-done
}

// peer is one mesh with its HTTP server and what it was handed.
type peer struct {
	id  string
	m   *Mesh
	srv *server

	mu        sync.Mutex
	delivered []bridge.Message
	directs   []bridge.Direct
	local     map[string]bool // client ids connected "here"
}

func (p *peer) count(channel string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.delivered {
		if m.Channel == channel {
			n++
		}
	}
	return n
}

func (p *peer) directCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.directs)
}

// startPeer runs a mesh with fast timings until the test ends.
func startPeer(t *testing.T, id string, key string) *peer {
	t.Helper()
	p := &peer{id: id, local: map[string]bool{}}
	cfg := Config{ID: id, Ping: 200 * time.Millisecond, Redial: 50 * time.Millisecond, DialTimeout: time.Second}
	if key != "" {
		cfg.Key = []byte(key)
	}
	m, err := New(cfg, bridge.Receiver{
		Deliver: func(msg bridge.Message) {
			p.mu.Lock()
			p.delivered = append(p.delivered, msg)
			p.mu.Unlock()
		},
		DeliverDirect: func(d bridge.Direct) bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.local[d.To] {
				return false
			}
			p.directs = append(p.directs, d)
			return true
		},
	})
	if err != nil {
		t.Fatalf("New(%s) error = %v", id, err)
	}
	p.m = m
	p.srv = &server{h: m.Handler()}
	p.srv.start(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run(%s) = %v, want nil", id, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run(%s) did not return within 5s of cancel", id)
		}
		p.srv.stop()
	})
	return p
}

// connect gives every peer the full peer set and waits for a full mesh.
func connect(t *testing.T, ps ...*peer) {
	t.Helper()
	all := map[string]string{}
	for _, p := range ps {
		all[p.id] = p.srv.addr
	}
	for _, p := range ps {
		p.m.SetPeers(all)
	}
	for _, p := range ps {
		testkit.Eventually(t, 5*time.Second, func() bool { return p.m.Links() == len(ps)-1 },
			"%s has %d links, want %d", p.id, p.m.Links(), len(ps)-1)
	}
}

// peerHas reports whether p's link to other has other's interest in key.
func peerHas(p *peer, other, key string) bool {
	p.m.mu.Lock()
	l := p.m.links[other]
	p.m.mu.Unlock()
	return l != nil && l.has(key)
}

func pub(t *testing.T, p *peer, channel string, data string) {
	t.Helper()
	if _, err := p.m.Publish(context.Background(), bridge.Message{Channel: channel, Data: json.RawMessage(data)}); err != nil {
		t.Fatalf("Publish(%s) on %s error = %v", channel, p.id, err)
	}
}

func TestNew(t *testing.T) {
	recv := bridge.Receiver{Deliver: func(bridge.Message) {}, DeliverDirect: func(bridge.Direct) bool { return false }}
	if _, err := New(Config{}, recv); err == nil {
		t.Errorf("New(no ID) error = nil, want an error")
	}
	if _, err := New(Config{ID: "a"}, bridge.Receiver{}); err == nil {
		t.Errorf("New(empty receiver) error = nil, want an error")
	}
}

func TestLinksUp(t *testing.T) {
	a, b, c := startPeer(t, "a", ""), startPeer(t, "b", ""), startPeer(t, "c", "")
	for _, p := range []*peer{a, b, c} {
		if err := p.m.Ready(); err != nil {
			t.Errorf("%s.Ready() with no peers = %v, want nil", p.id, err)
		}
	}
	connect(t, a, b, c)
	for _, p := range []*peer{a, b, c} {
		if err := p.m.Ready(); err != nil {
			t.Errorf("%s.Ready() = %v, want nil", p.id, err)
		}
		p.m.mu.Lock()
		for id, l := range p.m.links {
			if want := p.id < id; l.dialed != want {
				t.Errorf("link %s→%s dialed = %v, want %v (the smaller id dials)", p.id, id, l.dialed, want)
			}
		}
		p.m.mu.Unlock()
	}
}

func TestInterestRouting(t *testing.T) {
	a, b, c := startPeer(t, "a", ""), startPeer(t, "b", ""), startPeer(t, "c", "")
	connect(t, a, b, c)
	ctx := context.Background()
	if err := b.m.Subscribe(ctx, "x"); err != nil {
		t.Fatalf("Subscribe error = %v", err)
	}
	for _, p := range []*peer{b, c} {
		if err := p.m.Subscribe(ctx, "fence-"+p.id); err != nil {
			t.Fatalf("Subscribe error = %v", err)
		}
	}
	pub(t, a, "x", `1`)
	// Frames on one link arrive in order: once the fences are in, x would
	// have been too.
	pub(t, a, "fence-b", `0`)
	pub(t, a, "fence-c", `0`)
	testkit.Eventually(t, 5*time.Second, func() bool { return b.count("fence-b") == 1 && c.count("fence-c") == 1 }, "fences not delivered")
	for _, tt := range []struct {
		p    *peer
		want int
	}{{a, 1}, {b, 1}, {c, 0}} {
		if got := tt.p.count("x"); got != tt.want {
			t.Errorf("%s got %d deliveries of x, want %d", tt.p.id, got, tt.want)
		}
	}

	b.m.Unsubscribe("x")
	testkit.Eventually(t, 5*time.Second, func() bool { return !peerHas(a, "b", "c:x") }, "a still sees b's interest in x")
	pub(t, a, "x", `2`)
	pub(t, a, "fence-b", `0`)
	testkit.Eventually(t, 5*time.Second, func() bool { return b.count("fence-b") == 2 }, "second fence not delivered")
	if got := b.count("x"); got != 1 {
		t.Errorf("b got %d deliveries of x after unsubscribing, want 1", got)
	}
}

// TestSubscribeWaitsForPeers: a publish on another node right after
// Subscribe returns must be delivered.
func TestSubscribeWaitsForPeers(t *testing.T) {
	a, b, c := startPeer(t, "a", ""), startPeer(t, "b", ""), startPeer(t, "c", "")
	connect(t, a, b, c)
	const n = 30
	for i := range n {
		ch := fmt.Sprint("ch", i)
		if err := b.m.Subscribe(context.Background(), ch); err != nil {
			t.Fatalf("Subscribe(%s) error = %v", ch, err)
		}
		pub(t, a, ch, `1`) // a dials b
		pub(t, c, ch, `1`) // c is dialled by b
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		for i := range n {
			if b.count(fmt.Sprint("ch", i)) < 2 {
				return false
			}
		}
		return true
	}, "b missed publishes made right after Subscribe returned")
}

func TestSubscribeCanceled(t *testing.T) {
	a, b := startPeer(t, "a", ""), startPeer(t, "b", "")
	connect(t, a, b)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.m.Subscribe(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe(canceled ctx) error = %v, want context.Canceled", err)
	}
}

func TestDirect(t *testing.T) {
	a, b, c := startPeer(t, "a", ""), startPeer(t, "b", ""), startPeer(t, "c", "")
	connect(t, a, b, c)
	ctx := context.Background()
	b.mu.Lock()
	b.local["bob"] = true
	b.mu.Unlock()
	if err := b.m.Hold(ctx, "bob"); err != nil {
		t.Fatalf("Hold error = %v", err)
	}
	for _, from := range []*peer{a, c, b} {
		ok, err := from.m.Send(ctx, bridge.Direct{To: "bob", From: from.id, Data: json.RawMessage(`"hi"`)})
		if err != nil || !ok {
			t.Errorf("Send(bob) from %s = %v, %v, want true, nil", from.id, ok, err)
		}
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return b.directCount() == 3 }, "b got %d directs, want 3", b.directCount())
	if ok, err := a.m.Send(ctx, bridge.Direct{To: "nobody", Data: json.RawMessage(`1`)}); err != nil || ok {
		t.Errorf("Send(nobody) = %v, %v, want false, nil", ok, err)
	}

	b.m.Release("bob")
	testkit.Eventually(t, 5*time.Second, func() bool { return !peerHas(a, "b", "u:bob") }, "a still sees bob on b")
	if ok, _ := a.m.Send(ctx, bridge.Direct{To: "bob", Data: json.RawMessage(`1`)}); ok {
		t.Errorf("Send(bob) after Release = true, want false")
	}
}

func TestAuth(t *testing.T) {
	a, b := startPeer(t, "a", "secret"), startPeer(t, "b", "secret")
	connect(t, a, b)

	// A peer with the wrong key, or none, is refused.
	for _, key := range []string{"wrong", ""} {
		cfg := Config{ID: "a", Key: []byte(key)}
		cfg.validate()
		nc, _, err := dial(context.Background(), cfg, "b", b.srv.addr)
		if err == nil {
			nc.Close()
			t.Errorf("dial with key %q succeeded, want a refusal", key)
		} else if !strings.Contains(err.Error(), "403") {
			t.Errorf("dial with key %q error = %v, want 403", key, err)
		}
	}
}

func TestVerify(t *testing.T) {
	cfg := Config{ID: "m", Key: []byte("k")}
	now := strconv.FormatInt(time.Now().Unix(), 10)
	old := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	tests := []struct {
		name, upgrade, node, peer, ts, auth string
		ok                                  bool
	}{
		{"valid", upgradeToken, "a", "m", now, authToken(cfg.Key, "a", "m", now), true},
		{"not an upgrade", "websocket", "a", "m", now, authToken(cfg.Key, "a", "m", now), false},
		{"larger id dials", upgradeToken, "z", "m", now, authToken(cfg.Key, "z", "m", now), false},
		{"same id", upgradeToken, "m", "m", now, authToken(cfg.Key, "m", "m", now), false},
		{"no node", upgradeToken, "", "m", now, authToken(cfg.Key, "", "m", now), false},
		{"meant for another", upgradeToken, "a", "n", now, authToken(cfg.Key, "a", "n", now), false},
		{"no auth", upgradeToken, "a", "m", now, "", false},
		{"bad time", upgradeToken, "a", "m", "soon", authToken(cfg.Key, "a", "m", "soon"), false},
		{"stale time", upgradeToken, "a", "m", old, authToken(cfg.Key, "a", "m", old), false},
		{"wrong key", upgradeToken, "a", "m", now, authToken([]byte("x"), "a", "m", now), false},
		{"token for another pair", upgradeToken, "a", "m", now, authToken(cfg.Key, "b", "m", now), false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/v1/mesh", nil)
		for k, v := range map[string]string{"Upgrade": tt.upgrade, hdrNode: tt.node, hdrPeer: tt.peer, hdrTime: tt.ts, hdrAuth: tt.auth} {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		peer, err := verify(cfg, r)
		if (err == nil) != tt.ok || (tt.ok && peer != tt.node) {
			t.Errorf("verify(%s) = %q, %v, want ok=%v", tt.name, peer, err, tt.ok)
		}
	}
}

// TestVerifyWithoutKey: an unkeyed mesh links with loopback peers only,
// unless it is told to be open.
func TestVerifyWithoutKey(t *testing.T) {
	for _, tt := range []struct {
		remote   string
		insecure bool
		ok       bool
	}{
		{"127.0.0.1:5000", false, true},
		{"[::1]:5000", false, true},
		{"10.1.2.3:5000", false, false},
		{"192.168.1.9:5000", false, false},
		{"10.1.2.3:5000", true, true},
	} {
		r := httptest.NewRequest("GET", "/v1/mesh", nil)
		r.RemoteAddr = tt.remote
		r.Header.Set("Upgrade", upgradeToken)
		r.Header.Set(hdrNode, "a")
		r.Header.Set(hdrPeer, "m")
		_, err := verify(Config{ID: "m", Insecure: tt.insecure}, r)
		if (err == nil) != tt.ok {
			t.Errorf("verify(from %s, insecure=%v) error = %v, want ok=%v", tt.remote, tt.insecure, err, tt.ok)
		}
	}
}

// TestLinkRecovers kills the accepting side's connections, then brings its
// server back on the same address.
func TestLinkRecovers(t *testing.T) {
	a, b := startPeer(t, "a", ""), startPeer(t, "b", "")
	connect(t, a, b)
	if err := b.m.Subscribe(context.Background(), "x"); err != nil {
		t.Fatalf("Subscribe error = %v", err)
	}
	b.srv.stop()
	for _, p := range []*peer{a, b} {
		testkit.Eventually(t, 5*time.Second, func() bool { return p.m.Ready() != nil }, "%s.Ready() = nil with its only link down", p.id)
		if err := p.m.Ready(); !errors.Is(err, bridge.ErrUnavailable) {
			t.Errorf("%s.Ready() = %v, want ErrUnavailable", p.id, err)
		}
	}
	b.srv.start(t)
	for _, p := range []*peer{a, b} {
		testkit.Eventually(t, 5*time.Second, func() bool { return p.m.Ready() == nil && p.m.Links() == 1 }, "%s: link not re-established", p.id)
	}
	// The new link carries b's interest from before the outage.
	testkit.Eventually(t, 5*time.Second, func() bool { return peerHas(a, "b", "c:x") }, "a lost b's interest in x")
	pub(t, a, "x", `1`)
	testkit.Eventually(t, 5*time.Second, func() bool { return b.count("x") == 1 }, "b got %d deliveries of x, want 1", b.count("x"))
}

func TestSetPeersDropsLinks(t *testing.T) {
	a, b := startPeer(t, "a", ""), startPeer(t, "b", "")
	connect(t, a, b)
	a.m.SetPeers(nil)
	testkit.Eventually(t, 5*time.Second, func() bool { return a.m.Links() == 0 }, "a kept its link to a removed peer")
	if err := a.m.Ready(); err != nil {
		t.Errorf("Ready() with no peers = %v, want nil", err)
	}
}

func TestHandlerAfterStop(t *testing.T) {
	recv := bridge.Receiver{Deliver: func(bridge.Message) {}, DeliverDirect: func(bridge.Direct) bool { return false }}
	m, err := New(Config{ID: "m"}, recv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	r := httptest.NewRequest("GET", "/v1/mesh", nil)
	r.Header.Set("Upgrade", upgradeToken)
	r.Header.Set(hdrNode, "a")
	r.Header.Set(hdrPeer, "m")
	r.RemoteAddr = "127.0.0.1:1234" // a keyless mesh links with loopback peers only
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("Handler after Run returned: status %d, want 503", w.Code)
	}
}

func TestConfigRejectsNegatives(t *testing.T) {
	for _, edit := range []func(*Config){
		func(c *Config) { c.DialTimeout = -1 },
		func(c *Config) { c.Ping = -1 },
		func(c *Config) { c.QueueLen = -1 },
		func(c *Config) { c.MaxFrame = -1 },
		func(c *Config) { c.RedialMax = -1 },
		func(c *Config) { c.Redial, c.RedialMax = time.Second, time.Millisecond },
	} {
		c := Config{ID: "m"}
		edit(&c)
		if err := c.validate(); err == nil {
			t.Errorf("validate(%+v) = nil, want an error", c)
		}
	}
	c := Config{ID: "m"}
	if err := c.validate(); err != nil || c.QueueLen != DefaultConfig().QueueLen || c.Ping != DefaultConfig().Ping {
		t.Errorf("validate(zero) = %v, %+v; want nil and the defaults", err, c)
	}
}
