package client

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/testkit"
)

// appendFrame's frames are what a server reads: final, masked, the payload
// whole, at every length encoding (7-bit, 16-bit, 64-bit).
func TestAppendFrame(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		p := bytes.Repeat([]byte{'x'}, n)
		b := appendFrame([]byte("prefix"), ws.OpText, p)
		if !bytes.HasPrefix(b, []byte("prefix")) {
			t.Fatalf("len %d: appendFrame dropped what b held", n)
		}
		r := bytes.NewReader(b[len("prefix"):])
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatalf("len %d: ReadFrame: %v", n, err)
		}
		if !f.Header.Fin || f.Header.OpCode != ws.OpText || !f.Header.Masked || f.Header.Length != int64(n) {
			t.Fatalf("len %d: header = %+v, want final masked text of %d bytes", n, f.Header, n)
		}
		if r.Len() != 0 {
			t.Fatalf("len %d: %d bytes left after the frame", n, r.Len())
		}
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		if !bytes.Equal(f.Payload, p) {
			t.Fatalf("len %d: payload differs after unmasking", n)
		}
		if n > 0 && bytes.Equal(b[len(b)-n:], p) {
			t.Fatalf("len %d: payload sent unmasked", n)
		}
	}
}

// writeCounter records the writes made on a connection.
type writeCounter struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, slices.Clone(p))
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// After a reconnect, every channel is resubscribed in one write.
func TestResubscribeInOneWrite(t *testing.T) {
	srv := startServer(t)
	cfg, _ := testConfig(t, srv.url, "alice")
	var mu sync.Mutex
	var conns []*writeCounter
	cfg.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		wc := &writeCounter{Conn: c}
		mu.Lock()
		conns = append(conns, wc)
		mu.Unlock()
		return wc, nil
	}
	cfg.Heartbeat = time.Hour // no ping in between
	c := start(t, cfg)
	connected(t, c)
	channels := []string{"a", "b", "c"}
	for _, ch := range channels {
		subscribe(t, c, ch, func(Message) {})
	}
	before := len(srv.subscribesCopy())
	srv.drop()
	if !testkit.Until(2*time.Second, func() bool { return len(srv.subscribesCopy()) == before+len(channels) }) {
		t.Fatalf("subscribes after the reconnect = %d, want %d", len(srv.subscribesCopy())-before, len(channels))
	}
	mu.Lock()
	wc := conns[len(conns)-1]
	mu.Unlock()
	wc.mu.Lock()
	defer wc.mu.Unlock()
	// The upgrade request, then the resubscribes.
	if len(wc.writes) != 2 {
		t.Fatalf("writes on the new connection = %d, want 2: the upgrade request and all %d subscribes", len(wc.writes), len(channels))
	}
	r := bytes.NewReader(wc.writes[1])
	var got []string
	for r.Len() > 0 {
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatalf("ReadFrame: %v", err)
		}
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		got = append(got, string(f.Payload))
	}
	if len(got) != len(channels) {
		t.Fatalf("frames in the write = %d (%s), want %d", len(got), strings.Join(got, " "), len(channels))
	}
	for i, p := range got {
		if !strings.Contains(p, `"op":"subscribe"`) {
			t.Errorf("frame %d = %s, want a subscribe", i, p)
		}
	}
}
