package proxy

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ioTimeout bounds every socket operation in tests.
const ioTimeout = 5 * time.Second

// backend stands in for a node: it answers the upgrade with 101 (or status),
// sends its name and a newline right behind the 101 in the same write, then
// echoes bytes.
type backend struct {
	*testkit.Server
	name   string
	status int           // answer with this status instead of 101
	hang   bool          // never answer
	stall  bool          // send the first bytes of the answer, then nothing
	delay  time.Duration // wait this long before answering
	extra  string        // header lines added to the 101, each ending in CRLF
	lf     bool          // end the 101's lines in LF alone

	mu      sync.Mutex
	headers []http.Header
	uris    []string
}

func startBackend(tb testing.TB, name string, opt func(*backend)) *backend {
	tb.Helper()
	b := &backend{name: name}
	if opt != nil {
		opt(b)
	}
	b.Server = testkit.Serve(tb, b.serve)
	return b
}

func (b *backend) addr() string { return b.Addr() }

func (b *backend) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	b.mu.Lock()
	b.headers = append(b.headers, req.Header)
	b.uris = append(b.uris, req.Host+" "+req.RequestURI)
	b.mu.Unlock()
	time.Sleep(b.delay) // a slow node, not an assertion
	switch {
	case b.hang, b.stall:
		if b.stall {
			_, _ = c.Write([]byte("HTTP/1.1 101 Swi"))
		}
		_, _ = c.Read(make([]byte, 1)) // until the proxy gives up
		return
	case b.status != 0:
		body := "refused by " + b.name
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nX-Node: %s\r\nContent-Length: %d\r\n\r\n%s",
			b.status, http.StatusText(b.status), b.name, len(body), body)
		return
	}
	h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + b.extra +
		"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(h[:]) + "\r\n\r\n"
	if b.lf {
		head = strings.ReplaceAll(head, "\r\n", "\n")
	}
	_, err = c.Write([]byte(head + b.name + "\n"))
	if err == nil {
		testkit.Echo(c, br)
	}
}

// lastRequest returns the headers and the "host uri" of the last upgrade.
func (b *backend) lastRequest() (http.Header, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.headers) == 0 {
		return nil, ""
	}
	return b.headers[len(b.headers)-1], b.uris[len(b.uris)-1]
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

type testNode struct{ id, addr string }

var errNoNodes = errors.New("no nodes")

// fakePicker prefers the node whose id prefixes the client id, then the
// nodes in order, skipping excluded ones. It records every call.
type fakePicker struct {
	nodes []testNode

	mu    sync.Mutex
	calls [][]string // excluded, per call
}

func (f *fakePicker) Pick(clientID string, excluded []string) (string, string, error) {
	f.mu.Lock()
	f.calls = append(f.calls, slices.Clone(excluded))
	f.mu.Unlock()
	for _, ownerOnly := range []bool{true, false} {
		for _, n := range f.nodes {
			if (!ownerOnly || strings.HasPrefix(clientID, n.id)) && !slices.Contains(excluded, n.id) {
				return n.id, n.addr, nil
			}
		}
	}
	return "", "", errNoNodes
}

func (f *fakePicker) pickCalls() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// startProxy serves a Proxy on loopback; it returns the proxy, its address
// and the registry its metrics are in.
func startProxy(tb testing.TB, cfg Config, pick Picker) (*Proxy, string, *prometheus.Registry) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(cfg, pick, nil, reg)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(p)
	tb.Cleanup(func() {
		srv.Close()
		p.Close()
	})
	return p, srv.Listener.Addr().String(), reg
}

// connect upgrades through the proxy and returns the connection after the
// node's greeting, checking it came from wantNode.
func connect(tb testing.TB, addr, clientID, wantNode string) *wstest.Raw {
	tb.Helper()
	c := wstest.DialRaw(tb, addr, wstest.UpgradeRequest(clientID))
	if c.Resp.StatusCode != http.StatusSwitchingProtocols {
		tb.Fatalf("upgrade %s: status %d %q, want 101", clientID, c.Resp.StatusCode, c.Body)
	}
	if got := greeting(tb, c); got != wantNode {
		tb.Fatalf("client %s landed on %q, want %q", clientID, got, wantNode)
	}
	return c
}

// greeting reads the fake node's name, sent right behind its 101.
func greeting(tb testing.TB, c *wstest.Raw) string {
	tb.Helper()
	line, err := c.R.ReadString('\n')
	if err != nil {
		tb.Fatalf("read greeting: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

// echo writes msg and checks the fake node sent it back (testkit.EchoOnce).
func echo(c *wstest.Raw, msg []byte) error { return testkit.EchoOnce(c, c.R, msg) }
