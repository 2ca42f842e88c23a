package balancer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testkit.MemberlistLeaks...) }

type testBalancer struct {
	*Server
	cancel context.CancelFunc
	done   chan error
}

// startBalancer runs a balancer on loopback until the test ends.
func startBalancer(t *testing.T) *testBalancer {
	t.Helper()
	cfg := LocalConfig()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &testBalancer{Server: s, cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		b.cancel()
		select {
		case err, ok := <-b.done:
			if ok && err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of cancel")
		}
	})
	return b
}

// fakeNode is a gossip member with role node whose HTTP API is h (and a
// /healthz that answers): the balancer routes to it like to a real node.
func fakeNode(t *testing.T, b *testBalancer, id string, h http.Handler) *httptest.Server {
	t.Helper()
	return fakeNodeHealth(t, b, id, nil, h)
}

// fakeNodeHealth is fakeNode whose /healthz answers 503 while down is set.
func fakeNodeHealth(t *testing.T, b *testBalancer, id string, down *atomic.Bool, h http.Handler) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { // the balancer's probes
		if down != nil && down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		httpapi.ServeHealthz(w, r)
	})
	mux.Handle("/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	cfg := cluster.DefaultConfig()
	cfg.ID, cfg.Role, cfg.Bind, cfg.Detect = id, cluster.RoleNode, "127.0.0.1:0", cluster.DetectFast
	cfg.WSAddr, cfg.Join = strings.TrimPrefix(srv.URL, "http://"), []string{b.GossipAddr()}
	c, err := cluster.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		c.Leave(time.Second)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("fake node %s: Run = %v", id, err)
		}
	})
	testkit.Eventually(t, 10*time.Second, func() bool {
		v := b.Cluster().View()
		return v.Ring != nil && v.Ring.Has(id)
	}, "the balancer never put %s on its ring", id)
	return srv
}

type answer struct {
	status int
	body   map[string]any
}

func call(t *testing.T, b *testBalancer, method, path, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+b.Addr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("%s %s = %d %q: not a JSON object", method, path, resp.StatusCode, raw)
	}
	return a
}

func TestAPIWithoutNodes(t *testing.T) {
	b := startBalancer(t)
	big := `{"channel":"room","data":"` + strings.Repeat("x", maxBody) + `"}`
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"GET", "/healthz", "", 200, ""},
		{"GET", "/readyz", "", 503, "not_ready"},
		{"GET", "/v1/owner?client_id=bob", "", 503, "no_nodes"},
		{"GET", "/v1/owner?client_id=b%20b", "", 400, "bad_client_id"},
		{"POST", "/v1/publish", `{"channel":`, 400, "bad_json"},
		{"POST", "/v1/publish", big, 413, "too_large"},
		{"POST", "/v1/publish", `{"channel":"a b","data":1}`, 400, "bad_channel"},
		{"POST", "/v1/publish", `{"channel":"room","data":1}`, 503, "no_nodes"},
		{"POST", "/v1/send", `{"client_id":"","data":1}`, 400, "bad_client_id"},
		{"POST", "/v1/send", `{"client_id":"bob","data":1}`, 503, "no_nodes"},
	} {
		a := call(t, b, tc.method, tc.path, tc.body)
		if a.status != tc.status || (tc.code != "" && a.body["code"] != tc.code) {
			t.Errorf("%s %s = %d %v, want %d code %q", tc.method, tc.path, a.status, a.body, tc.status, tc.code)
		}
	}
	if a := call(t, b, "GET", "/v1/cluster", ""); a.status != 200 || a.body["nodes"] == nil || len(a.body["nodes"].([]any)) != 0 {
		t.Errorf("GET /v1/cluster = %d %v, want 200 with an empty node list", a.status, a.body)
	}
}

func TestForwardToOwner(t *testing.T) {
	b := startBalancer(t)
	type got struct{ path, body string }
	seen := make(chan got, 4)
	fakeNode(t, b, "n1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen <- got{r.URL.Path, string(body)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"ok":true,"from":"n1"}`)
	}))
	if a := call(t, b, "GET", "/v1/owner?client_id=bob", ""); a.status != 200 || a.body["node"] != "n1" {
		t.Fatalf("GET /v1/owner = %d %v, want 200 node n1", a.status, a.body)
	}
	for _, tc := range []struct{ path, body string }{
		{"/v1/publish", `{"channel":"room","data":{"x":1}}`},
		{"/v1/send", `{"client_id":"bob","data":[1,2]}`},
	} {
		a := call(t, b, "POST", tc.path, tc.body)
		if a.status != http.StatusAccepted || a.body["from"] != "n1" {
			t.Errorf("POST %s = %d %v, want the node's own 202 answer", tc.path, a.status, a.body)
		}
		select {
		case g := <-seen:
			if g.path != tc.path || g.body != tc.body {
				t.Errorf("node got %s %q, want %s %q", g.path, g.body, tc.path, tc.body)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("POST %s never reached the node", tc.path)
		}
	}
	if a := call(t, b, "GET", "/readyz", ""); a.status != 200 {
		t.Errorf("GET /readyz with a node = %d %v, want 200", a.status, a.body)
	}
}

func TestForwardToUnreachableOwner(t *testing.T) {
	b := startBalancer(t)
	srv := fakeNode(t, b, "n1", http.NotFoundHandler())
	srv.Close() // the member stays on the ring; its API refuses connections
	a := call(t, b, "POST", "/v1/publish", `{"channel":"room","data":1}`)
	if a.status != http.StatusServiceUnavailable || a.body["code"] != "no_nodes" {
		t.Errorf("POST /v1/publish to a refusing owner = %d %v, want 503 no_nodes", a.status, a.body)
	}
}

func TestRunReturnsTheFailedPart(t *testing.T) {
	s, err := New(LocalConfig())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	s.ln.Close() // the HTTP server's Serve fails
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "serve http") || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Run = %v, want the serve http error wrapping net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its HTTP server failing")
	}
}

// TestUnreachableNode checks the balancer's own probes: a node whose
// health check fails on the balancer's path (gossip still says alive) is
// reported unreachable in /v1/cluster and routed around, and is used again
// once it answers.
func TestUnreachableNode(t *testing.T) {
	b := startBalancer(t)
	var down atomic.Bool
	from := func(id string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			httpapi.WriteJSON(w, http.StatusOK, map[string]any{"from": id})
		})
	}
	fakeNodeHealth(t, b, "n1", &down, from("n1"))
	fakeNode(t, b, "n2", from("n2"))
	var channel string
	for i := range 1000 {
		if c := fmt.Sprintf("room%d", i); b.Cluster().View().Ring.Owner("ch:"+c) == "n1" {
			channel = c
			break
		}
	}
	publish := func() any {
		return call(t, b, "POST", "/v1/publish", `{"channel":"`+channel+`","data":1}`).body["from"]
	}
	if got := publish(); got != "n1" {
		t.Fatalf("publish to a channel of n1 answered by %v", got)
	}
	unreachable := func() bool {
		for _, n := range call(t, b, "GET", "/v1/cluster", "").body["nodes"].([]any) {
			if n := n.(map[string]any); n["id"] == "n1" {
				return n["unreachable"] == true
			}
		}
		return false
	}
	down.Store(true)
	start := time.Now()
	testkit.Eventually(t, 10*time.Second, unreachable, "n1 never reported unreachable")
	t.Logf("n1 unreachable %v after its health check began to fail", time.Since(start))
	if m, _ := b.Cluster().View().Node("n1"); m.State != cluster.StateAlive {
		t.Fatalf("n1 is %s in gossip, want alive (only its health check fails)", m.State)
	}
	if got := publish(); got != "n2" {
		t.Errorf("publish with n1 unreachable answered by %v, want n2", got)
	}
	down.Store(false)
	testkit.Eventually(t, 10*time.Second, func() bool { return !unreachable() }, "n1 never reachable again")
	if got := publish(); got != "n1" {
		t.Errorf("publish after n1 answers again: by %v, want n1", got)
	}
}
