package node

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/testkit"
)

// TestHealthAddr: with -health-addr the probes have a listener of their
// own, which serves nothing else and keeps answering through the drain,
// after the client listener has closed.
func TestHealthAddr(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) {
		c.HealthAddr = "127.0.0.1:0"
		c.DrainWindow = 3 * time.Second
	})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + n.HealthAddr() + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tt := range []struct {
		path string
		code int
		has  string
	}{
		{"/healthz", 200, ""},
		{"/readyz", 200, ""},
		{"/metrics", 200, "ringcast_node_outbound_budget_bytes"},
		{"/ws?client_id=a", 404, ""},
		{"/v1/publish", 404, ""},
	} {
		if code, body := get(tt.path); code != tt.code || !strings.Contains(body, tt.has) {
			t.Errorf("GET %s on the health listener = %d %.80q, want %d with %q", tt.path, code, body, tt.code, tt.has)
		}
	}
	// A client that ignores the reconnect request holds the drain open.
	c := n.connect(t, "stays")
	n.cancel()
	testkit.Eventually(t, 5*time.Second, func() bool {
		code, body := get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "draining")
	}, "the health listener never said 503 draining")
	testkit.Eventually(t, 5*time.Second, func() bool {
		resp, err := http.Get("http://" + n.Addr() + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	}, "the client listener kept answering while draining")
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("health /readyz with the client listener closed, a client still held = %d %q, want 503 draining", code, body)
	}
	c.NC.Close()
}
