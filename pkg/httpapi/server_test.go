package httpapi

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// startServer serves NewServer(h) on loopback until the test ends.
func startServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, zap.NewNop())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

// rawRequest writes head then body, body one byte per gap, and returns the
// response status and how long it took.
func rawRequest(t *testing.T, addr, head, body string, gap time.Duration) (int, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := range len(body) {
			if _, err := c.Write([]byte{body[i]}); err != nil {
				return
			}
			time.Sleep(gap)
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

func TestServerBounds(t *testing.T) {
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		if _, ok := DecodeBody(w, r, 1<<20, &v); ok {
			WriteOK(w)
		}
	}))
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n"
	if code, _ := rawRequest(t, addr, big, "", 0); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("40 KiB header: status %d, want 431", code)
	}
	many := "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 20000) + "\r\n"
	if code, _ := rawRequest(t, addr, many, "", 0); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("20,000 header lines: status %d, want 431", code)
	}
	ok := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"
	if code, _ := rawRequest(t, addr, ok, "{}", 0); code != http.StatusOK {
		t.Errorf("small body: status %d, want 200", code)
	}

	bodyTimeout = 300 * time.Millisecond
	t.Cleanup(func() { bodyTimeout = BodyTimeout })
	slow := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
	code, took := rawRequest(t, addr, slow, strings.Repeat(" ", 100), 100*time.Millisecond)
	if code != http.StatusRequestTimeout || took > 5*time.Second {
		t.Errorf("body at 10 bytes/s: status %d after %v, want 408 after about %v", code, took, bodyTimeout)
	}
}
