package node

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/internal/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testkit.MemberlistLeaks...) }

type testNode struct {
	*Server
	cancel context.CancelFunc
	done   chan error
}

// startNode runs a node until the test ends and waits until it is ready.
func startNode(t *testing.T, edit func(*Config)) *testNode {
	t.Helper()
	cfg := Config{
		ID:          "n1",
		Addr:        "127.0.0.1:0",
		Gossip:      "127.0.0.1:0",
		Detect:      "fast",
		DrainWindow: 200 * time.Millisecond,
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{Server: s, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- s.Run(ctx) }()
	t.Cleanup(func() { n.stop(t) })
	testkit.Eventually(t, 5*time.Second, func() bool {
		code, _ := n.get(t, "/readyz")
		return code == http.StatusOK
	}, "/readyz never answered 200")
	return n
}

// stop cancels Run and checks it returns nil promptly. Idempotent.
func (n *testNode) stop(t *testing.T) {
	t.Helper()
	n.cancel()
	select {
	case err, ok := <-n.done:
		if ok && err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		if ok {
			close(n.done)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Run did not return within 10s of cancel")
	}
}

func (n *testNode) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + n.Addr() + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (n *testNode) post(t *testing.T, path, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post("http://"+n.Addr()+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: status %d, body is not JSON: %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

// client is a raw WebSocket client. It parses frames itself: wsutil
// refuses close codes 1012/1013.
type client struct {
	t  *testing.T
	id string
	nc net.Conn
	r  io.Reader
}

func (n *testNode) wsURL(id string) string {
	return "ws://" + n.Addr() + "/ws?client_id=" + url.QueryEscape(id)
}

func (n *testNode) dial(t *testing.T, id string, hdr http.Header) (*client, error) {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second}
	if hdr != nil {
		d.Header = ws.HandshakeHeaderHTTP(hdr)
	}
	nc, br, _, err := d.Dial(context.Background(), n.wsURL(id))
	if err != nil {
		return nil, err
	}
	c := &client{t: t, id: id, nc: nc, r: nc}
	if br != nil {
		c.r = io.MultiReader(br, nc)
	}
	t.Cleanup(func() { nc.Close() })
	return c, nil
}

// connect dials as id and reads the welcome.
func (n *testNode) connect(t *testing.T, id string) *client {
	t.Helper()
	c, err := n.dial(t, id, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", id, err)
	}
	c.expect(wire.OpWelcome)
	return c
}

func (c *client) send(s string) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientText(c.nc, []byte(s)); err != nil {
		c.t.Fatalf("%s: write %s: %v", c.id, s, err)
	}
}

// writeFrame writes one masked frame.
func (c *client) writeFrame(op ws.OpCode, fin bool, p []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return ws.WriteFrame(c.nc, ws.MaskFrame(ws.NewFrame(op, fin, p)))
}

// event is one server frame: a protocol frame, a close, or a pong.
type event struct {
	frame     wire.Frame
	raw       []byte
	closed    bool
	closeCode int
	pong      []byte
}

func (c *client) read(timeout time.Duration) (event, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	for {
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			return event{}, err
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, p); err != nil {
			return event{}, err
		}
		if h.Masked {
			return event{}, errors.New("server frame is masked")
		}
		if !h.Fin {
			return event{}, errors.New("server sent a fragment")
		}
		switch h.OpCode {
		case ws.OpClose:
			e := event{closed: true, closeCode: 1005}
			if len(p) >= 2 {
				e.closeCode = int(binary.BigEndian.Uint16(p))
			}
			return e, nil
		case ws.OpPong:
			return event{pong: p}, nil
		case ws.OpText:
			var f wire.Frame
			if err := json.Unmarshal(p, &f); err != nil {
				return event{}, fmt.Errorf("server sent invalid JSON %q: %w", p, err)
			}
			return event{frame: f, raw: p}, nil
		default:
			return event{}, fmt.Errorf("server sent opcode %v", h.OpCode)
		}
	}
}

// expect reads the next frame and requires its op.
func (c *client) expect(op string) wire.Frame {
	c.t.Helper()
	e, err := c.read(5 * time.Second)
	switch {
	case err != nil:
		c.t.Fatalf("%s: waiting for %s: %v", c.id, op, err)
	case e.closed:
		c.t.Fatalf("%s: waiting for %s: closed with %d", c.id, op, e.closeCode)
	case e.frame.Op != op:
		c.t.Fatalf("%s: got %s, want op %s", c.id, e.raw, op)
	}
	return e.frame
}

// expectClose reads until a close frame, skipping up to skip data frames,
// and requires its code.
func (c *client) expectClose(code int, skip int, timeout time.Duration) {
	c.t.Helper()
	for i := 0; ; i++ {
		e, err := c.read(timeout)
		if err != nil {
			c.t.Fatalf("%s: waiting for close %d: %v", c.id, code, err)
		}
		if e.closed {
			if e.closeCode != code {
				c.t.Fatalf("%s: close code %d, want %d", c.id, e.closeCode, code)
			}
			// Answer like a real client, then hang up.
			c.writeFrame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
			c.nc.Close()
			return
		}
		if i >= skip {
			c.t.Fatalf("%s: got %s, want close %d", c.id, e.raw, code)
		}
	}
}

// roundTrip pings with a fresh id and requires the pong to be next: every
// reply to what was sent before has arrived, and the connection is open.
func (c *client) roundTrip() {
	c.t.Helper()
	c.send(`{"op":"ping","id":"rt"}`)
	if f := c.expect(wire.OpPong); string(f.ID) != `"rt"` {
		c.t.Fatalf("%s: pong id %s, want \"rt\"", c.id, f.ID)
	}
}

func TestWelcomeAndProbes(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.Heartbeat = 7 * time.Second })
	c, err := n.dial(t, "alice@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	w := c.expect(wire.OpWelcome)
	if w.ClientID != "alice@example.com" || w.Node != "n1" || w.RingEpoch == nil || w.HeartbeatMS != 7000 {
		t.Errorf("welcome = %+v, want client_id alice@example.com, node n1, a ring_epoch, heartbeat_ms 7000", w)
	}
	if code, _ := n.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	code, body := n.get(t, "/metrics")
	if code != http.StatusOK || !strings.Contains(body, "ringcast_node_connections 1") {
		t.Errorf("/metrics = %d, want 200 with ringcast_node_connections 1", code)
	}
}

func TestPubSub(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	alice, bob := n.connect(t, "alice"), n.connect(t, "bob")
	alice.send(`{"op":"subscribe","channel":"room","id":1}`)
	if f := alice.expect(wire.OpSubscribed); f.Channel != "room" || string(f.ID) != "1" || f.Recovered != nil {
		t.Errorf("subscribed = %+v, want channel room, id 1, no recovered", f)
	}
	bob.send(`{"op":"subscribe","channel":"room"}`)
	bob.expect(wire.OpSubscribed)

	alice.send(`{"op":"publish","channel":"room","data":{"n":1},"id":"p1"}`)
	for _, c := range []*client{alice, bob} {
		m := c.expect(wire.OpMessage)
		if m.Channel != "room" || m.From != "alice" || string(m.Data) != `{"n":1}` || m.Offset != nil {
			t.Errorf("%s got %+v, want message on room from alice with data {\"n\":1}", c.id, m)
		}
	}
	if f := alice.expect(wire.OpAck); string(f.ID) != `"p1"` {
		t.Errorf("ack id = %s, want \"p1\"", f.ID)
	}
	alice.send(`{"op":"publish","channel":"room","data":2}`) // no id: no ack
	alice.expect(wire.OpMessage)
	alice.roundTrip()
	bob.expect(wire.OpMessage)

	bob.send(`{"op":"unsubscribe","channel":"room","id":2}`)
	if f := bob.expect(wire.OpUnsubscribed); f.Channel != "room" || string(f.ID) != "2" {
		t.Errorf("unsubscribed = %+v, want channel room, id 2", f)
	}
	alice.send(`{"op":"publish","channel":"room","data":3,"id":3}`)
	alice.expect(wire.OpMessage)
	alice.expect(wire.OpAck) // fan-out ran before the ack
	bob.roundTrip()          // nothing for bob before the pong
}

func TestDirect(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	alice, bob := n.connect(t, "alice"), n.connect(t, "bob")
	alice.send(`{"op":"send","to":"bob","data":"hi","id":"s1"}`)
	if f := bob.expect(wire.OpDirect); f.From != "alice" || string(f.Data) != `"hi"` {
		t.Errorf("direct = %+v, want from alice, data \"hi\"", f)
	}
	if f := alice.expect(wire.OpAck); string(f.ID) != `"s1"` {
		t.Errorf("ack id = %s, want \"s1\"", f.ID)
	}
	alice.send(`{"op":"send","to":"nobody","data":1,"id":"s2"}`)
	alice.expect(wire.OpAck)
}

func TestPing(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	c := n.connect(t, "alice")
	for _, id := range []string{`7`, `"abc"`, `-1.5`} {
		c.send(`{"op":"ping","id":` + id + `}`)
		if f := c.expect(wire.OpPong); string(f.ID) != id {
			t.Errorf("pong id = %s, want %s", f.ID, id)
		}
	}
	c.send(`{"op":"ping"}`)
	if f := c.expect(wire.OpPong); f.ID != nil {
		t.Errorf("pong id = %s, want none", f.ID)
	}
	// WebSocket-level ping.
	if err := c.writeFrame(ws.OpPing, true, []byte("hb")); err != nil {
		t.Fatal(err)
	}
	if e, err := c.read(5 * time.Second); err != nil || string(e.pong) != "hb" {
		t.Errorf("after a ping control frame: %+v, %v, want pong hb", e, err)
	}
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.MaxChannels = 2 })
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
		c.send(tt.in)
		f := c.expect(wire.OpError)
		if f.Code != tt.code || string(f.ID) != tt.id || f.Message == "" {
			t.Errorf("reply to %s = code %q id %s message %q, want code %q id %s and a message", tt.in, f.Code, f.ID, f.Message, tt.code, tt.id)
		}
	}
	c.roundTrip() // still open

	c.send(`{"op":"subscribe","channel":"c1"}`)
	c.expect(wire.OpSubscribed)
	c.send(`{"op":"subscribe","channel":"c2"}`)
	c.expect(wire.OpSubscribed)
	c.send(`{"op":"subscribe","channel":"c3","id":9}`)
	if f := c.expect(wire.OpError); f.Code != wire.CodeTooManyChannels || string(f.ID) != "9" {
		t.Errorf("third channel: %+v, want too_many_channels with id 9", f)
	}
	c.send(`{"op":"subscribe","channel":"c2"}`) // already counted
	c.expect(wire.OpSubscribed)
	c.roundTrip()
}

func TestFrameLimits(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.MaxMessage = 1024 })
	pad := func(k int) string { return `{"op":"ping","id":"` + strings.Repeat("x", k) + `"}` }

	// A message under the limit, in fragments, is fine.
	c := n.connect(t, "ok")
	msg := []byte(`{"op":"ping","id":2}`)
	if c.writeFrame(ws.OpText, false, msg[:5]) != nil || c.writeFrame(ws.OpContinuation, false, nil) != nil ||
		c.writeFrame(ws.OpPing, true, nil) != nil || c.writeFrame(ws.OpContinuation, true, msg[5:]) != nil {
		t.Fatal("write fragments")
	}
	got := map[string]bool{}
	for range 2 { // the control pong may come before or after the reply
		e, err := c.read(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got[fmt.Sprintf("%v/%s", e.pong != nil, e.frame.Op)] = true
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
			c.writeFrame(ws.OpContinuation, true, []byte("{}"))
		}
		for j, p := range tt.frames {
			op := ws.OpText
			if j > 0 {
				op = ws.OpContinuation
			}
			if err := c.writeFrame(op, j == len(tt.frames)-1, p); err != nil {
				t.Fatalf("%s: write: %v", tt.name, err)
			}
		}
		c.expectClose(tt.code, 0, 5*time.Second)
	}

	// An unmasked frame is a protocol error.
	c = n.connect(t, "unmasked")
	c.nc.Write(ws.MustCompileFrame(ws.NewTextFrame([]byte(`{"op":"ping"}`))))
	c.expectClose(int(ws.StatusProtocolError), 0, 5*time.Second)
}

func TestHandshakeRefused(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.Origins = []string{"https://good.example"} })
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
			c.expect(wire.OpWelcome)
		case !errors.As(err, &se) || int(se) != tt.status:
			t.Errorf("dial(%q, origin %q) error = %v, want status %d", tt.id, tt.origin, err, tt.status)
		}
	}
}

func TestSlowConsumer(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) {
		c.SendQueue = 16
		c.SendQueueBytes = 256 << 10
		c.WriteTimeout = 5 * time.Second
	})
	slow, pub := n.connect(t, "slow"), n.connect(t, "pub")
	slow.send(`{"op":"subscribe","channel":"flood"}`)
	slow.expect(wire.OpSubscribed)
	pub.send(`{"op":"subscribe","channel":"other"}`)
	pub.expect(wire.OpSubscribed)

	// slow reads nothing while pub floods. Kernel buffers absorb a few
	// MiB before the node's queue fills.
	data := `"` + strings.Repeat("d", 32<<10) + `"`
	closed := func() bool {
		_, body := n.get(t, "/metrics")
		return strings.Contains(body, "ringcast_node_slow_consumers_total 1")
	}
	sent := 0
	for ; sent < 1000 && (sent%20 != 0 || !closed()); sent++ {
		start := time.Now()
		pub.send(fmt.Sprintf(`{"op":"publish","channel":"flood","data":%s,"id":%d}`, data, sent))
		if f := pub.expect(wire.OpAck); string(f.ID) != fmt.Sprint(sent) {
			t.Fatalf("ack id %s, want %d", f.ID, sent)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("publish %d took %v: the publisher is blocked by the slow consumer", sent, d)
		}
	}
	if !closed() {
		t.Fatalf("%d messages of 32 KiB to a client that never reads: not closed as a slow consumer", sent)
	}
	slow.expectClose(wire.CloseSlowConsumer, sent, 5*time.Second)
	pub.roundTrip()
}

func TestHeartbeatTimeout(t *testing.T) {
	t.Parallel()
	const hb = 200 * time.Millisecond
	n := startNode(t, func(c *Config) { c.Heartbeat = hb })
	silent, alive := n.connect(t, "silent"), n.connect(t, "alive")
	start := time.Now()
	done := make(chan struct{})
	const pings = 6 // spaced hb apart: alive outlives 3 × hb by far
	go func() {
		defer close(done)
		for range pings {
			alive.nc.SetWriteDeadline(time.Now().Add(time.Second))
			if wsutil.WriteClientText(alive.nc, []byte(`{"op":"ping"}`)) != nil {
				return
			}
			time.Sleep(hb)
		}
	}()
	silent.expectClose(wire.CloseGoingAway, 0, 10*hb)
	if d := time.Since(start); d < 3*hb-50*time.Millisecond {
		t.Errorf("silent client closed after %v, want about 3 × %v", d, hb)
	}
	<-done
	for range pings {
		alive.expect(wire.OpPong)
	}
	alive.roundTrip()
}

func TestHTTPAPI(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.MaxMessage = 1024 })
	sub := n.connect(t, "sub")
	sub.send(`{"op":"subscribe","channel":"room"}`)
	sub.expect(wire.OpSubscribed)

	big := `{"channel":"room","client_id":"sub","data":"` + strings.Repeat("x", 2000) + `"}`
	tests := []struct {
		path, body string
		status     int
		code       string
	}{
		{"/v1/publish", `{"channel":"room","data":{"a":1}}`, 200, ""},
		{"/v1/publish", `{"channel":"room"`, 400, wire.CodeBadJSON},
		{"/v1/publish", `{"channel":"a b","data":1}`, 400, wire.CodeBadChannel},
		{"/v1/publish", `{"channel":"room"}`, 400, wire.CodeBadRequest},
		{"/v1/publish", big, 413, wire.CodeTooLarge},
		{"/v1/send", `{"client_id":"sub","data":"hi"}`, 200, ""},
		{"/v1/send", `{"client_id":"ghost","data":"hi"}`, 200, ""},
		{"/v1/send", `{"client_id":"","data":1}`, 400, wire.CodeBadClientID},
		{"/v1/send", `{"client_id":"sub"}`, 400, wire.CodeBadRequest},
		{"/v1/send", `[]`, 400, wire.CodeBadJSON},
		{"/v1/send", big, 413, wire.CodeTooLarge},
	}
	for _, tt := range tests {
		status, out := n.post(t, tt.path, tt.body)
		if status != tt.status || (tt.code == "") != (out["ok"] == true) || (tt.code != "" && out["code"] != tt.code) {
			t.Errorf("POST %s %.40s = %d %v, want %d code %q", tt.path, tt.body, status, out, tt.status, tt.code)
		}
	}
	if _, out := n.post(t, "/v1/send", `{"client_id":"sub","data":1}`); out["delivered"] != true {
		t.Errorf("send to a connected client: %v, want delivered true", out)
	}
	if _, out := n.post(t, "/v1/send", `{"client_id":"ghost","data":1}`); out["delivered"] != false {
		t.Errorf("send to nobody: %v, want delivered false", out)
	}
	if m := sub.expect(wire.OpMessage); m.From != "" || string(m.Data) != `{"a":1}` {
		t.Errorf("message published over HTTP = %+v, want data {\"a\":1} and no from", m)
	}
	for range 2 {
		if d := sub.expect(wire.OpDirect); d.From != "" {
			t.Errorf("direct sent over HTTP = %+v, want no from", d)
		}
	}
	sub.roundTrip()
	if code, _ := n.get(t, "/v1/publish"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/publish = %d, want 405", code)
	}
}

func TestDrain(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	c := n.connect(t, "alice")
	c.send(`{"op":"subscribe","channel":"room"}`)
	c.expect(wire.OpSubscribed)
	n.cancel()
	f := c.expect(wire.OpReconnect)
	if f.Reason != wire.ReasonDrain || f.AfterMS == nil || *f.AfterMS < 0 || *f.AfterMS > 200 {
		t.Errorf("reconnect = %+v, want reason drain, after_ms in [0, 200]", f)
	}
	c.expectClose(wire.CloseGoingAway, 0, 5*time.Second)
	n.stop(t)
	if _, err := n.dial(t, "late", nil); err == nil {
		t.Errorf("dial after shutdown succeeded")
	}
}

func TestReplacedConnection(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	older := n.connect(t, "alice")
	older.send(`{"op":"subscribe","channel":"room"}`)
	older.expect(wire.OpSubscribed)
	newer := n.connect(t, "alice")
	older.expectClose(wire.CloseMoved, 0, 5*time.Second)

	bob := n.connect(t, "bob")
	bob.send(`{"op":"send","to":"alice","data":1,"id":1}`)
	bob.expect(wire.OpAck)
	if d := newer.expect(wire.OpDirect); d.From != "bob" {
		t.Errorf("direct = %+v, want from bob", d)
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		_, body := n.get(t, "/metrics")
		return strings.Contains(body, "ringcast_node_connections 2")
	}, "the replaced connection is still attached")
	newer.roundTrip()
}

// TestWelcomeIsFirst: a direct message racing the connection must not
// reach the client before its welcome.
func TestWelcomeIsFirst(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	bob := n.connect(t, "bob")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			bob.nc.SetWriteDeadline(time.Now().Add(time.Second))
			if wsutil.WriteClientText(bob.nc, []byte(`{"op":"send","to":"alice","data":1}`)) != nil {
				return
			}
		}
	}()
	go func() { // bob's acks are not read: keep its queue moving
		for {
			if _, err := bob.read(5 * time.Second); err != nil {
				return
			}
		}
	}()
	for i := range 100 {
		c, err := n.dial(t, "alice", nil)
		if err != nil {
			t.Fatal(err)
		}
		if e, err := c.read(5 * time.Second); err != nil || e.frame.Op != wire.OpWelcome {
			t.Fatalf("connection %d: first frame %s (%v), want welcome", i, e.raw, err)
		}
		c.nc.Close()
	}
}

// TestShutdownWithChattyClient: a client that ignores the close frame and
// keeps sending must not hold the node's shutdown.
func TestShutdownWithChattyClient(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	c := n.connect(t, "chatty")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			c.nc.SetWriteDeadline(time.Now().Add(time.Second))
			if wsutil.WriteClientText(c.nc, []byte(`{"op":"ping"}`)) != nil {
				return
			}
		}
	}()
	n.cancel()
	select {
	case err := <-n.done:
		close(n.done)
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second): // DrainWindow 200 ms + grace
		t.Fatalf("Run has not returned 5s after cancel")
	}
}

func TestRunReturnsTheFailedPart(t *testing.T) {
	n := startNode(t, nil)
	n.ln.Close() // the HTTP server's Serve fails
	select {
	case err := <-n.done:
		if err == nil || !strings.Contains(err.Error(), "serve http") || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Run = %v, want the serve http error wrapping net.ErrClosed", err)
		}
		close(n.done)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its HTTP server failing")
	}
}
