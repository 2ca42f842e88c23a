package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/bridgetest"
	"github.com/ringcast/ringcast/pkg/hub"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testConfig is what a test may change: the session's Config and the
// hub's channel limit.
type testConfig struct {
	Config
	MaxChannels int
	Auth        *auth.Verifier
}

// testServer serves /ws through an Upgrader on a hub whose bridge is an
// in-process loopback: one node, no network but the client's socket.
type testServer struct {
	srv *httptest.Server
	reg *prometheus.Registry
	u   *Upgrader
	hub *hub.Hub
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns map[*Conn]struct{}
}

// start runs a test server until the test ends; on cleanup every
// connection is closed and every connection goroutine has returned.
func start(t *testing.T, edit func(*testConfig)) *testServer {
	t.Helper()
	cfg := testConfig{Config: Config{Node: "n1"}}
	if edit != nil {
		edit(&cfg)
	}
	n := &testServer{reg: prometheus.NewRegistry(), conns: map[*Conn]struct{}{}}
	var h *hub.Hub
	br := bridgetest.NewLoopback(bridge.Receiver{
		Deliver:       func(m bridge.Message) { h.Deliver(m) },
		DeliverDirect: func(d bridge.Direct) bool { return h.DeliverDirect(d) },
	})
	h, err := hub.New(hub.Config{MaxChannels: cfg.MaxChannels}, br, nil, n.reg)
	if err != nil {
		t.Fatal(err)
	}
	u, err := New(cfg.Config, Deps{
		Hub: h, WG: &n.wg, Registry: n.reg, Auth: cfg.Auth,
		RingEpoch: func() uint64 { return 1 },
		Done: func(c *Conn) {
			n.mu.Lock()
			delete(n.conns, c)
			n.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	n.u, n.hub = u, h
	n.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := u.Upgrade(w, r)
		if c == nil {
			return
		}
		n.mu.Lock()
		n.conns[c] = struct{}{}
		c.Start(context.Background())
		n.mu.Unlock()
	}))
	t.Cleanup(func() {
		n.srv.Close() // hijacked connections stay open: close them below
		n.mu.Lock()
		for c := range n.conns {
			c.Close(wire.CloseGoingAway, "test over")
		}
		n.mu.Unlock()
		n.wg.Wait()
	})
	return n
}

// count is the number of connections not yet done.
func (n *testServer) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

func (n *testServer) addr() string { return strings.TrimPrefix(n.srv.URL, "http://") }

func (n *testServer) dial(t *testing.T, id string, hdr http.Header) (*wstest.Conn, error) {
	t.Helper()
	return wstest.Dial(t, wstest.URL(n.addr(), id), id, hdr)
}

// connect dials as id and reads the welcome.
func (n *testServer) connect(t *testing.T, id string) *wstest.Conn {
	t.Helper()
	return wstest.Connect(t, n.addr(), id)
}

func TestWelcome(t *testing.T) {
	t.Parallel()
	n := start(t, func(c *testConfig) { c.Heartbeat = 7 * time.Second })
	c, err := n.dial(t, "alice@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	w := c.Expect(wire.OpWelcome)
	if w.ClientID != "alice@example.com" || w.Node != "n1" || w.RingEpoch == nil || *w.RingEpoch != 1 || w.HeartbeatMS != 7000 {
		t.Errorf("welcome = %+v, want client_id alice@example.com, node n1, ring_epoch 1, heartbeat_ms 7000", w)
	}
}

func TestConfigRejectsNegatives(t *testing.T) {
	for _, edit := range []func(*Config){
		func(c *Config) { c.Heartbeat = -1 },
		func(c *Config) { c.MaxMessage = -1 },
		func(c *Config) { c.SendQueue = -1 },
		func(c *Config) { c.SendQueueBytes = -1 },
		func(c *Config) { c.WriteTimeout = -1 },
		func(c *Config) { c.RequestTimeout = -1 },
		func(c *Config) { c.HandshakeTimeout = -1 },
		func(c *Config) { c.Node = "" },
	} {
		c := Config{Node: "n1"}
		edit(&c)
		if err := c.validate(); err == nil {
			t.Errorf("validate(%+v) = nil, want an error", c)
		}
	}
	c := Config{Node: "n1"}
	if err := c.validate(); err != nil || c.Heartbeat != DefaultConfig().Heartbeat || c.MaxMessage != DefaultConfig().MaxMessage {
		t.Errorf("validate(zero) = %v, %+v; want nil and the defaults", err, c)
	}
}

func TestPubSub(t *testing.T) {
	t.Parallel()
	n := start(t, nil)
	alice, bob := n.connect(t, "alice"), n.connect(t, "bob")
	alice.Send(`{"op":"subscribe","channel":"room","id":1}`)
	if f := alice.Expect(wire.OpSubscribed); f.Channel != "room" || string(f.ID) != "1" || f.Recovered != nil {
		t.Errorf("subscribed = %+v, want channel room, id 1, no recovered", f)
	}
	bob.Send(`{"op":"subscribe","channel":"room"}`)
	bob.Expect(wire.OpSubscribed)

	alice.Send(`{"op":"publish","channel":"room","data":{"n":1},"id":"p1"}`)
	for _, c := range []*wstest.Conn{alice, bob} {
		m := c.Expect(wire.OpMessage)
		if m.Channel != "room" || m.From != "alice" || string(m.Data) != `{"n":1}` || m.Offset != nil {
			t.Errorf("%s got %+v, want message on room from alice with data {\"n\":1}", c.ID, m)
		}
	}
	if f := alice.Expect(wire.OpAck); string(f.ID) != `"p1"` {
		t.Errorf("ack id = %s, want \"p1\"", f.ID)
	}
	alice.Send(`{"op":"publish","channel":"room","data":2}`) // no id: no ack
	alice.Expect(wire.OpMessage)
	alice.RoundTrip()
	bob.Expect(wire.OpMessage)

	bob.Send(`{"op":"unsubscribe","channel":"room","id":2}`)
	if f := bob.Expect(wire.OpUnsubscribed); f.Channel != "room" || string(f.ID) != "2" {
		t.Errorf("unsubscribed = %+v, want channel room, id 2", f)
	}
	alice.Send(`{"op":"publish","channel":"room","data":3,"id":3}`)
	alice.Expect(wire.OpMessage)
	alice.Expect(wire.OpAck) // fan-out ran before the ack
	bob.RoundTrip()          // nothing for bob before the pong
}

func TestDirect(t *testing.T) {
	t.Parallel()
	n := start(t, nil)
	alice, bob := n.connect(t, "alice"), n.connect(t, "bob")
	alice.Send(`{"op":"send","to":"bob","data":"hi","id":"s1"}`)
	if f := bob.Expect(wire.OpDirect); f.From != "alice" || string(f.Data) != `"hi"` {
		t.Errorf("direct = %+v, want from alice, data \"hi\"", f)
	}
	if f := alice.Expect(wire.OpAck); string(f.ID) != `"s1"` {
		t.Errorf("ack id = %s, want \"s1\"", f.ID)
	}
	alice.Send(`{"op":"send","to":"nobody","data":1,"id":"s2"}`)
	alice.Expect(wire.OpAck)
}

func TestPing(t *testing.T) {
	t.Parallel()
	n := start(t, nil)
	c := n.connect(t, "alice")
	for _, id := range []string{`7`, `"abc"`, `-1.5`} {
		c.Send(`{"op":"ping","id":` + id + `}`)
		if f := c.Expect(wire.OpPong); string(f.ID) != id {
			t.Errorf("pong id = %s, want %s", f.ID, id)
		}
	}
	c.Send(`{"op":"ping"}`)
	if f := c.Expect(wire.OpPong); f.ID != nil {
		t.Errorf("pong id = %s, want none", f.ID)
	}
	// WebSocket-level ping.
	if err := c.WriteFrame(ws.OpPing, true, []byte("hb")); err != nil {
		t.Fatal(err)
	}
	if e, err := c.Read(5 * time.Second); err != nil || string(e.Pong) != "hb" {
		t.Errorf("after a ping control frame: %+v, %v, want pong hb", e, err)
	}
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	n := start(t, func(c *testConfig) { c.MaxChannels = 2 })
	c := n.connect(t, "alice")
	tests := []struct {
		in, code, id string
	}{
		{`{"op":"publish",`, wire.CodeBadJSON, ""},
		{`not json`, wire.CodeBadJSON, ""},
		{`{"op":"dance","id":4}`, wire.CodeUnknownOp, "4"},
		{`{"channel":"room"}`, wire.CodeBadRequest, ""},
		{`{"op":"subscribe","channel":"` + strings.Repeat("c", 129) + `","id":"l"}`, wire.CodeBadChannel, `"l"`},
		{`{"op":"subscribe","channel":"a/b"}`, wire.CodeBadChannel, ""},
		{`{"op":"publish","channel":"room","id":5}`, wire.CodeBadRequest, "5"},
		{`{"op":"send","to":"b b","data":1}`, wire.CodeBadClientID, ""},
		{`{"op":"ping","id":{"x":1}}`, wire.CodeBadRequest, ""},
	}
	for _, tt := range tests {
		c.Send(tt.in)
		f := c.Expect(wire.OpError)
		if f.Code != tt.code || string(f.ID) != tt.id || f.Message == "" {
			t.Errorf("reply to %s = code %q id %s message %q, want code %q id %s and a message", tt.in, f.Code, f.ID, f.Message, tt.code, tt.id)
		}
	}
	c.RoundTrip() // still open

	c.Send(`{"op":"subscribe","channel":"c1"}`)
	c.Expect(wire.OpSubscribed)
	c.Send(`{"op":"subscribe","channel":"c2"}`)
	c.Expect(wire.OpSubscribed)
	c.Send(`{"op":"subscribe","channel":"c3","id":9}`)
	if f := c.Expect(wire.OpError); f.Code != wire.CodeTooManyChannels || string(f.ID) != "9" {
		t.Errorf("third channel: %+v, want too_many_channels with id 9", f)
	}
	c.Send(`{"op":"subscribe","channel":"c2"}`) // already counted
	c.Expect(wire.OpSubscribed)
	c.RoundTrip()
}

func TestFrameLimits(t *testing.T) {
	t.Parallel()
	n := start(t, func(c *testConfig) { c.MaxMessage = 1024 })
	pad := func(k int) string { return `{"op":"ping","id":"` + strings.Repeat("x", k) + `"}` }

	// A message under the limit, in fragments, is fine.
	c := n.connect(t, "ok")
	msg := []byte(`{"op":"ping","id":2}`)
	if c.WriteFrame(ws.OpText, false, msg[:5]) != nil || c.WriteFrame(ws.OpContinuation, false, nil) != nil ||
		c.WriteFrame(ws.OpPing, true, nil) != nil || c.WriteFrame(ws.OpContinuation, true, msg[5:]) != nil {
		t.Fatal("write fragments")
	}
	got := map[string]bool{}
	for range 2 { // the control pong may come before or after the reply
		e, err := c.Read(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got[fmt.Sprintf("%v/%s", e.Pong != nil, e.Frame.Op)] = true
	}
	if !got["true/"] || !got["false/pong"] {
		t.Errorf("fragmented ping with a ping control frame inside: got %v, want a pong frame and a pong reply", got)
	}

	tests := []struct {
		name   string
		frames [][]byte
		code   int
	}{
		{"one frame over the limit", [][]byte{[]byte(pad(1100))}, wire.CloseTooBig},
		{"fragments that each fit", [][]byte{[]byte(pad(1100)[:500]), []byte(pad(1100)[500:1000]), []byte(pad(1100)[1000:])}, wire.CloseTooBig},
		{"invalid UTF-8", [][]byte{[]byte("{\"op\":\"ping\",\"id\":\"\xff\"}")}, int(ws.StatusInvalidFramePayloadData)},
		{"continuation first", nil, int(ws.StatusProtocolError)},
	}
	for i, tt := range tests {
		c := n.connect(t, fmt.Sprint("c", i))
		if tt.frames == nil {
			c.WriteFrame(ws.OpContinuation, true, []byte("{}"))
		}
		for j, p := range tt.frames {
			op := ws.OpText
			if j > 0 {
				op = ws.OpContinuation
			}
			if err := c.WriteFrame(op, j == len(tt.frames)-1, p); err != nil {
				t.Fatalf("%s: write: %v", tt.name, err)
			}
		}
		c.ExpectClose(tt.code, 0, 5*time.Second)
	}

	// An unmasked frame is a protocol error.
	c = n.connect(t, "unmasked")
	c.NC.Write(ws.MustCompileFrame(ws.NewTextFrame([]byte(`{"op":"ping"}`))))
	c.ExpectClose(int(ws.StatusProtocolError), 0, 5*time.Second)
}

func TestHandshakeRefused(t *testing.T) {
	t.Parallel()
	n := start(t, func(c *testConfig) { c.Origins = []string{"https://good.example"} })
	tests := []struct {
		id     string
		origin string
		status int // 0 = accepted
	}{
		{"", "", 400},
		{"a b", "", 400},
		{"a/b", "", 400},
		{strings.Repeat("x", 129), "", 400},
		{"ok", "https://evil.example", 403},
		{"ok", "https://good.example", 0},
		{"ok", "", 0}, // non-browser clients send no Origin
	}
	for _, tt := range tests {
		var hdr http.Header
		if tt.origin != "" {
			hdr = http.Header{"Origin": {tt.origin}}
		}
		c, err := n.dial(t, tt.id, hdr)
		var se ws.StatusError
		switch {
		case tt.status == 0 && err != nil:
			t.Errorf("dial(%q, origin %q) error = %v, want accepted", tt.id, tt.origin, err)
		case tt.status == 0:
			c.Expect(wire.OpWelcome)
		case !errors.As(err, &se) || int(se) != tt.status:
			t.Errorf("dial(%q, origin %q) error = %v, want status %d", tt.id, tt.origin, err, tt.status)
		}
	}
}

func TestSlowConsumer(t *testing.T) {
	t.Parallel()
	n := start(t, func(c *testConfig) {
		c.SendQueue = 16
		c.SendQueueBytes = 256 << 10
		c.WriteTimeout = 5 * time.Second
	})
	slow, pub := n.connect(t, "slow"), n.connect(t, "pub")
	slow.Send(`{"op":"subscribe","channel":"flood"}`)
	slow.Expect(wire.OpSubscribed)
	pub.Send(`{"op":"subscribe","channel":"other"}`)
	pub.Expect(wire.OpSubscribed)

	// slow reads nothing while pub floods. Kernel buffers absorb a few
	// MiB before the node's queue fills.
	data := `"` + strings.Repeat("d", 32<<10) + `"`
	closed := func() bool {
		v, _ := testkit.Metric(t, n.reg, "ringcast_node_slow_consumers_total")
		return v == 1
	}
	sent := 0
	for ; sent < 1000 && (sent%20 != 0 || !closed()); sent++ {
		start := time.Now()
		pub.Send(fmt.Sprintf(`{"op":"publish","channel":"flood","data":%s,"id":%d}`, data, sent))
		if f := pub.Expect(wire.OpAck); string(f.ID) != fmt.Sprint(sent) {
			t.Fatalf("ack id %s, want %d", f.ID, sent)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("publish %d took %v: the publisher is blocked by the slow consumer", sent, d)
		}
	}
	if !closed() {
		t.Fatalf("%d messages of 32 KiB to a client that never reads: not closed as a slow consumer", sent)
	}
	slow.ExpectClose(wire.CloseSlowConsumer, sent, 5*time.Second)
	pub.RoundTrip()
}

func TestHeartbeatTimeout(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{IdleEpoll, IdleGoroutine} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testHeartbeatTimeout(t, mode)
		})
	}
}

func testHeartbeatTimeout(t *testing.T, mode string) {
	const hb = 200 * time.Millisecond
	n := start(t, func(c *testConfig) { c.Heartbeat, c.IdleWait = hb, mode })
	// start precedes the server's first read deadline, however long the
	// handshakes take on a loaded machine.
	start := time.Now()
	silent, alive := n.connect(t, "silent"), n.connect(t, "alive")
	done := make(chan struct{})
	const pings = 6 // spaced hb apart: alive outlives 3 × hb by far
	go func() {
		defer close(done)
		for range pings {
			alive.NC.SetWriteDeadline(time.Now().Add(time.Second))
			if wsutil.WriteClientText(alive.NC, []byte(`{"op":"ping"}`)) != nil {
				return
			}
			time.Sleep(hb)
		}
	}()
	silent.ExpectClose(wire.CloseGoingAway, 0, 10*hb)
	if d := time.Since(start); d < 3*hb-50*time.Millisecond {
		t.Errorf("silent client closed after %v, want about 3 × %v", d, hb)
	}
	<-done
	for range pings {
		alive.Expect(wire.OpPong)
	}
	alive.RoundTrip()
}

func TestReplacedConnection(t *testing.T) {
	t.Parallel()
	n := start(t, nil)
	tab := func() *wstest.Conn {
		c, err := wstest.Dial(t, wstest.URL(n.addr(), "alice")+"&session=tab1", "alice", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Expect(wire.OpWelcome)
		return c
	}
	older := tab()
	older.Send(`{"op":"subscribe","channel":"room"}`)
	older.Expect(wire.OpSubscribed)
	newer := tab()
	older.ExpectClose(wire.CloseReplaced, 0, 5*time.Second)

	bob := n.connect(t, "bob")
	bob.Send(`{"op":"send","to":"alice","data":1,"id":1}`)
	bob.Expect(wire.OpAck)
	if d := newer.Expect(wire.OpDirect); d.From != "bob" {
		t.Errorf("direct = %+v, want from bob", d)
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		v, _ := testkit.Metric(t, n.reg, "ringcast_node_connections")
		return v == 2
	}, "the replaced connection is still attached")
	newer.RoundTrip()
}

// TestWelcomeIsFirst: a direct message racing the connection must not
// reach the client before its welcome.
func TestWelcomeIsFirst(t *testing.T) {
	t.Parallel()
	// bob sends 5,000 directs a second: past the default request rate it
	// would be closed 1008 after its burst and the race would be over;
	// unpaced, alice's queue would pass the slow-consumer bound (4008)
	// before she reads her first frame.
	n := start(t, func(c *testConfig) { c.RequestRate = 1e6 })
	bob := n.connect(t, "bob")
	bobDone := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		pace := time.NewTicker(200 * time.Microsecond)
		defer pace.Stop()
		for {
			select {
			case <-stop:
				return
			case <-pace.C:
			}
			bob.NC.SetWriteDeadline(time.Now().Add(time.Second))
			if wsutil.WriteClientText(bob.NC, []byte(`{"op":"send","to":"alice","data":1}`)) != nil {
				return
			}
		}
	}()
	go func() { // bob's acks are not read: keep its queue moving
		for {
			e, err := bob.Read(5 * time.Second)
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				// Nothing came for bob (its sends carry no id, so
				// nothing is acked): its connection is still up.
				select {
				case <-stop:
					return
				default:
					continue
				}
			case err != nil:
				bobDone <- err
				return
			case e.Closed:
				bobDone <- fmt.Errorf("closed %d", e.CloseCode)
				return
			}
		}
	}()
	for i := range 100 {
		c, err := n.dial(t, "alice", nil)
		if err != nil {
			t.Fatal(err)
		}
		if e, err := c.Read(5 * time.Second); err != nil || e.Frame.Op != wire.OpWelcome {
			t.Fatalf("connection %d: first frame %s closed=%v code=%d (%v), want welcome", i, e.Raw, e.Closed, e.CloseCode, err)
		}
		c.NC.Close()
		// Its end is noticed before the next dial: closed connections not
		// yet detached would pass MaxConnsPerClient (429 under load).
		testkit.Eventually(t, 5*time.Second, func() bool { return n.count() <= 1 }, "connection %d not done after its client closed it", i)
		select {
		case err := <-bobDone:
			t.Fatalf("bob's connection ended before dial %d (%v): the sends no longer race the welcomes", i+1, err)
		default:
		}
	}
}

// TestFullSocketThenIdle fills a client's socket so that its frames leave
// the shared writers for a blocking write under the write deadline, drains
// it, and checks that frames sent after that deadline would have passed
// still go out on the shared writers.
func TestFullSocketThenIdle(t *testing.T) {
	t.Parallel()
	const writeTimeout = 5 * time.Second
	n := start(t, func(c *testConfig) { c.WriteTimeout = writeTimeout })
	slow, pub := n.connect(t, "slow"), n.connect(t, "pub")
	// Small socket buffers on both ends: a few frames fill them.
	if err := slow.NC.(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	for c := range n.conns {
		if c.ClientID() == "slow" {
			if err := c.nc.(*net.TCPConn).SetWriteBuffer(16 << 10); err != nil {
				t.Error(err)
			}
		}
	}
	n.mu.Unlock()
	slow.Send(`{"op":"subscribe","channel":"flood"}`)
	slow.Expect(wire.OpSubscribed)
	// 512 KiB while slow reads nothing: far more than its socket buffers
	// take, less than the send queue.
	data := `"` + strings.Repeat("d", 16<<10) + `"`
	const flood = 32
	for i := range flood {
		pub.Send(fmt.Sprintf(`{"op":"publish","channel":"flood","data":%s,"id":%d}`, data, i))
	}
	// Read at once: the blocked write must finish within writeTimeout.
	for range flood {
		slow.Expect(wire.OpMessage)
	}
	for range flood {
		pub.Expect(wire.OpAck)
	}
	time.Sleep(writeTimeout + 500*time.Millisecond) // past the slow write's deadline, on purpose
	pub.Send(`{"op":"publish","channel":"flood","data":"after","id":"last"}`)
	pub.Expect(wire.OpAck)
	if m := slow.Expect(wire.OpMessage); string(m.Data) != `"after"` {
		t.Errorf("after the flood got %s, want \"after\"", m.Data)
	}
}
