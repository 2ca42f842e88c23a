package balancer

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/httpapi"
)

// TestHealthProbe checks the verdicts of the real probe: an answer, a late
// answer on a live path (slow, and read by the next check without a second
// request), a refused port (missed), and a process that accepts nothing
// while its kernel acknowledges (what SIGSTOP looks like: slow).
func TestHealthProbe(t *testing.T) {
	ctx := context.Background()
	var delay atomic.Int64
	var conns, requests atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		time.Sleep(time.Duration(delay.Load())) // a loaded node, not an assertion
		httpapi.ServeHealthz(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	p := newHealthProbe(strings.TrimPrefix(srv.URL, "http://"))
	defer p.close()
	for range 3 {
		if v := p.check(ctx, time.Second); v != answered {
			t.Fatalf("healthy node: verdict %v, want answered", v)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 checks opened %d connections, want 1 (kept alive)", n)
	}

	delay.Store(int64(300 * time.Millisecond))
	if v := p.check(ctx, 50*time.Millisecond); v != slow {
		t.Fatalf("late answer: verdict %v, want slow", v)
	}
	time.Sleep(400 * time.Millisecond)
	if v := p.check(ctx, 50*time.Millisecond); v != answered {
		t.Fatalf("the late answer, once there: verdict %v, want answered", v)
	}
	if n := requests.Load(); n != 4 {
		t.Errorf("%d requests, want 4: a late answer is waited for, not asked again", n)
	}

	closed := newHealthProbe(closedAddr(t))
	if v := closed.check(ctx, time.Second); v != missed {
		t.Errorf("refused port: verdict %v, want missed", v)
	}
	closed.close()

	// A listener nobody accepts on: the kernel completes the handshake
	// and acknowledges the request, the process never answers.
	if runtime.GOOS != "linux" {
		return // acknowledged needs TCP_INFO
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	frozen := newHealthProbe(ln.Addr().String())
	defer frozen.close()
	if v := frozen.check(ctx, 100*time.Millisecond); v != slow {
		t.Errorf("frozen process: verdict %v, want slow", v)
	}
	// Unanswered for longer than slowLimit: a miss.
	var last verdict
	deadline := time.Now().Add(slowLimit + time.Second)
	for last != missed && time.Now().Before(deadline) {
		last = frozen.check(ctx, 200*time.Millisecond)
	}
	if last != missed {
		t.Errorf("frozen process after %v: verdict %v, want missed", slowLimit, last)
	}
}

func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
