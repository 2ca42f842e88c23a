package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"
	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
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
	cfg := LocalConfig("n1")
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
	return n.postKey(t, path, body, "")
}

// postKey is post with an API key, when key is not empty.
func (n *testNode) postKey(t *testing.T, path, body, key string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+n.Addr()+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
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

func (n *testNode) dial(t *testing.T, id string, hdr http.Header) (*wstest.Conn, error) {
	t.Helper()
	return wstest.Dial(t, wstest.URL(n.Addr(), id), id, hdr)
}

// connect dials as id and reads the welcome.
func (n *testNode) connect(t *testing.T, id string) *wstest.Conn {
	t.Helper()
	return wstest.Connect(t, n.Addr(), id)
}

func TestWelcomeAndProbes(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.Heartbeat = 7 * time.Second })
	c, err := n.dial(t, "alice@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	w := c.Expect(wire.OpWelcome)
	if w.ClientID != "alice@example.com" || w.Node != "n1" || w.RingEpoch == nil || w.HeartbeatMS != 7000 {
		t.Errorf("welcome = %+v, want client_id alice@example.com, node n1, a ring_epoch, heartbeat_ms 7000", w)
	}
	if code, _ := n.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := n.get(t, "/metrics"); code != http.StatusOK {
		t.Errorf("/metrics = %d, want 200", code)
	}
	if v, _ := testkit.Metric(t, n.reg, "ringcast_node_connections"); v != 1 {
		t.Errorf("ringcast_node_connections = %v, want 1", v)
	}
}

func TestHTTPAPI(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.MaxMessage = 1024 })
	sub := n.connect(t, "sub")
	sub.Send(`{"op":"subscribe","channel":"room"}`)
	sub.Expect(wire.OpSubscribed)

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
	if m := sub.Expect(wire.OpMessage); m.From != "" || string(m.Data) != `{"a":1}` {
		t.Errorf("message published over HTTP = %+v, want data {\"a\":1} and no from", m)
	}
	for range 2 {
		if d := sub.Expect(wire.OpDirect); d.From != "" {
			t.Errorf("direct sent over HTTP = %+v, want no from", d)
		}
	}
	sub.RoundTrip()
	if code, _ := n.get(t, "/v1/publish"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/publish = %d, want 405", code)
	}
}

func TestDrain(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	c := n.connect(t, "alice")
	c.Send(`{"op":"subscribe","channel":"room"}`)
	c.Expect(wire.OpSubscribed)
	n.cancel()
	f := c.Expect(wire.OpReconnect)
	if f.Reason != wire.ReasonDrain || f.AfterMS == nil || *f.AfterMS < 0 || *f.AfterMS > 200 {
		t.Errorf("reconnect = %+v, want reason drain, after_ms in [0, 200]", f)
	}
	c.ExpectClose(wire.CloseGoingAway, 0, 5*time.Second)
	n.stop(t)
	if _, err := n.dial(t, "late", nil); err == nil {
		t.Errorf("dial after shutdown succeeded")
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
			c.NC.SetWriteDeadline(time.Now().Add(time.Second))
			if wsutil.WriteClientText(c.NC, []byte(`{"op":"ping"}`)) != nil {
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
