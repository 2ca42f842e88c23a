package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func TestConfigDefaults(t *testing.T) {
	custom := Config{DialTimeout: time.Millisecond, HandshakeTimeout: time.Second, MaxAttempts: 1,
		DownFor: time.Minute, BufferSize: 512, IdleTimeout: time.Hour, WriteTimeout: time.Second,
		MaxConnsPerIP: 7, ConnRatePerIP: 0.5, MaxSources: 9, MaxPending: 9, PendingWait: 3 * time.Second, RelayShards: 3}
	tests := []struct {
		name    string
		cfg     Config
		want    Config
		wantErr bool
	}{
		{"zero means defaults", Config{}, DefaultConfig(), false},
		{"explicit values kept", custom, custom, false},
		{"negative dial timeout", Config{DialTimeout: -1}, Config{}, true},
		{"negative attempts", Config{MaxAttempts: -1}, Config{}, true},
		{"negative buffer", Config{BufferSize: -1}, Config{}, true},
		{"negative idle timeout", Config{IdleTimeout: -time.Second}, Config{}, true},
		{"negative sources", Config{MaxSources: -1}, Config{}, true},
		{"negative shards", Config{RelayShards: -1}, Config{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg, &fakePicker{}, nil, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New(%+v) error = %v, want error %v", tt.cfg, err, tt.wantErr)
			}
			if err == nil && !reflect.DeepEqual(p.cfg, tt.want) {
				t.Errorf("New(%+v) config = %+v, want %+v", tt.cfg, p.cfg, tt.want)
			}
		})
	}
	if _, err := New(Config{}, nil, nil, nil); err == nil {
		t.Error("New with nil picker: error = nil, want one")
	}
}

func TestRejectsBeforeDial(t *testing.T) {
	b := startBackend(t, "n1", nil)
	pick := &fakePicker{nodes: []testNode{{"n1", b.addr()}}}
	_, addr, _ := startProxy(t, Config{}, pick)

	tests := []struct {
		name, req, wantBody string
	}{
		{"missing client id", strings.Replace(wstest.UpgradeRequest("x"), "?client_id=x", "", 1), "client_id is empty"},
		{"empty client id", wstest.UpgradeRequest(""), "client_id is empty"},
		{"bad byte", wstest.UpgradeRequest("a%2Fb"), "byte 0x2f"},
		{"too long", wstest.UpgradeRequest(strings.Repeat("a", 129)), "129 bytes"},
		{"plain get", "GET /ws?client_id=alice HTTP/1.1\r\nHost: x\r\n\r\n", "missing Connection: upgrade"},
		{"no upgrade header", "GET /ws?client_id=alice HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n", "missing Upgrade: websocket"},
		{"post", strings.Replace(wstest.UpgradeRequest("alice"), "GET", "POST", 1), "needs GET"},
		{"http/1.0", strings.Replace(wstest.UpgradeRequest("alice"), "HTTP/1.1", "HTTP/1.0", 1), "needs HTTP/1.1"},
		{"two keys", wstest.UpgradeRequest("alice", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"), "exactly one Sec-WebSocket-Key"},
		{"no key", strings.Replace(wstest.UpgradeRequest("alice"), "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1), "exactly one Sec-WebSocket-Key"},
		{"two versions", wstest.UpgradeRequest("alice", "Sec-WebSocket-Version: 8\r\n"), "exactly one Sec-WebSocket-Version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := wstest.DialRaw(t, addr, tt.req)
			if c.Resp.StatusCode != http.StatusBadRequest || !strings.Contains(c.Body, tt.wantBody) {
				t.Errorf("status %d body %q, want 400 containing %q", c.Resp.StatusCode, c.Body, tt.wantBody)
			}
			c.ExpectClosed(t)
		})
	}
	if n := b.Accepted(); n != 0 {
		t.Errorf("backend accepted %d connections, want 0", n)
	}
	if calls := pick.pickCalls(); len(calls) != 0 {
		t.Errorf("Pick called %d times, want 0", len(calls))
	}
}

func TestForwardingHeaders(t *testing.T) {
	b := startBackend(t, "n1", nil)
	_, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	c := wstest.DialRaw(t, addr, strings.Replace(wstest.UpgradeRequest("alice",
		"X-Forwarded-For: 6.6.6.6\r\n",
		"X-Forwarded-Proto: https\r\n",
		"X-Forwarded-Host: evil.test\r\n",
		"Forwarded: for=6.6.6.6\r\n",
		"X-Real-IP: 6.6.6.6\r\n",
		"Keep-Alive: timeout=5\r\n",
		"X-Secret: hop\r\n",
		"Origin: http://app.test\r\n",
		"Sec-WebSocket-Protocol: ringcast.v1\r\n",
	), "Connection: Upgrade", "Connection: keep-alive, Upgrade, X-Secret, Origin, Host, Sec-WebSocket-Protocol", 1))
	if c.Resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d %q, want 101", c.Resp.StatusCode, c.Body)
	}
	h, uri := b.lastRequest()
	for _, tt := range []struct{ key, want string }{
		{"X-Forwarded-For", "127.0.0.1"},
		{"X-Forwarded-Proto", "http"},
		{"X-Forwarded-Host", ""},
		{"Forwarded", ""},
		{"X-Real-Ip", ""},
		{"Keep-Alive", ""},
		{"X-Secret", ""},
		{"Connection", "Upgrade"},
		{"Upgrade", "websocket"},
		{"Origin", "http://app.test"},
		{"Sec-Websocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
		{"Sec-Websocket-Version", "13"},
		{"Sec-Websocket-Protocol", "ringcast.v1"},
	} {
		if got := strings.Join(h.Values(tt.key), ","); got != tt.want {
			t.Errorf("node saw %s = %q, want %q", tt.key, got, tt.want)
		}
	}
	if want := "ringcast.test /ws?client_id=alice"; uri != want {
		t.Errorf("node saw host and uri %q, want %q", uri, want)
	}
	if got := c.Resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("client got Sec-WebSocket-Accept %q, want the node's", got)
	}
}

func TestFallbackMarksDown(t *testing.T) {
	b := startBackend(t, "n2", nil)
	pick := &fakePicker{nodes: []testNode{{"n1", closedAddr(t)}, {"n2", b.addr()}}}
	p, addr, reg := startProxy(t, Config{DownFor: time.Minute}, pick)

	connect(t, addr, "alice", "n2")
	if !p.Down("n1") || p.Down("n2") {
		t.Errorf("Down(n1), Down(n2) = %v, %v, want true, false", p.Down("n1"), p.Down("n2"))
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_dial_fallbacks_total"); v != 1 {
		t.Errorf("dial fallbacks = %v, want 1", v)
	}
	if calls := pick.pickCalls(); !slices.Equal(calls[1], []string{"n1"}) {
		t.Errorf("second Pick excluded %q, want [n1]", calls[1])
	}

	// The next client skips n1 without dialling it.
	connect(t, addr, "bob", "n2")
	calls := pick.pickCalls()
	if got := calls[len(calls)-1]; !slices.Equal(got, []string{"n1"}) {
		t.Errorf("Pick for bob excluded %q, want [n1]", got)
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_dial_fallbacks_total"); v != 1 {
		t.Errorf("dial fallbacks after bob = %v, want 1", v)
	}
}

// TestStalledNodeFallsBack: a node that accepts TCP but never answers the
// upgrade (a SIGSTOPped process) is a failed dial once DialTimeout passed:
// the client is welcomed by the next owner and the node is marked down.
func TestStalledNodeFallsBack(t *testing.T) {
	stalled := startBackend(t, "n1", func(b *backend) { b.hang = true })
	next := startBackend(t, "n2", nil)
	const dial = 200 * time.Millisecond
	p, addr, reg := startProxy(t, Config{DialTimeout: dial, DownFor: time.Minute},
		&fakePicker{nodes: []testNode{{"n1", stalled.addr()}, {"n2", next.addr()}}})
	start := time.Now()
	connect(t, addr, "alice", "n2")
	took := time.Since(start)
	if took < dial {
		t.Errorf("welcomed by n2 after %v, before the dial timeout %v: n1 was not waited for", took, dial)
	}
	if !p.Down("n1") {
		t.Errorf("Down(n1) = false, want true")
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_dial_fallbacks_total"); v != 1 {
		t.Errorf("dial fallbacks = %v, want 1", v)
	}
	// The proxy times the handshake once the relay started, which may be
	// just after the client read the 101.
	testkit.Eventually(t, 5*time.Second, func() bool {
		v, _ := testkit.Metric(t, reg, "ringcast_balancer_handshake_seconds")
		return v == 1
	}, "handshakes timed, want 1")
	if n := stalled.Accepted(); n != 1 {
		t.Errorf("stalled node got %d connections, want 1", n)
	}
	// The next client does not pay for n1 again.
	start = time.Now()
	connect(t, addr, "bob", "n2")
	if n := stalled.Accepted(); n != 1 {
		t.Errorf("stalled node got %d connections after bob, want 1 (it is marked down)", n)
	}
	t.Logf("first client welcomed after %v (dial timeout %v), second after %v", took.Round(time.Millisecond), dial, time.Since(start).Round(time.Millisecond))
}

// TestLastNodeMayBeSlow: with no other node to fall back to, a node slower
// than DialTimeout still gets the client, within HandshakeTimeout.
func TestLastNodeMayBeSlow(t *testing.T) {
	slow := startBackend(t, "n1", func(b *backend) { b.delay = 300 * time.Millisecond })
	_, addr, _ := startProxy(t, Config{DialTimeout: 100 * time.Millisecond, HandshakeTimeout: 5 * time.Second},
		&fakePicker{nodes: []testNode{{"n1", slow.addr()}}})
	connect(t, addr, "alice", "n1")
}

func TestNoNodeAnswers(t *testing.T) {
	tests := []struct {
		name      string
		nodes     []testNode
		wantBody  string
		wantDown  []string
		wantPicks int
	}{
		{"all refuse", []testNode{{"n1", closedAddr(t)}, {"n2", closedAddr(t)}}, "dial node n2", []string{"n1", "n2"}, 3},
		{"attempts bounded", []testNode{{"n1", closedAddr(t)}, {"n2", closedAddr(t)}, {"n3", closedAddr(t)}, {"n4", closedAddr(t)}}, "dial node n3", []string{"n1", "n2", "n3"}, 3},
		{"no nodes", nil, "pick node: no nodes", nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pick := &fakePicker{nodes: tt.nodes}
			p, addr, _ := startProxy(t, Config{}, pick)
			c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("alice"))
			if c.Resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(c.Body, tt.wantBody) {
				t.Errorf("status %d body %q, want 503 containing %q", c.Resp.StatusCode, c.Body, tt.wantBody)
			}
			for _, id := range tt.wantDown {
				if !p.Down(id) {
					t.Errorf("Down(%q) = false, want true", id)
				}
			}
			if got := len(pick.pickCalls()); got != tt.wantPicks {
				t.Errorf("Pick called %d times, want %d", got, tt.wantPicks)
			}
		})
	}
}

func TestNodeRefusalRelayed(t *testing.T) {
	tests := []struct {
		name       string
		opt        func(*backend)
		wantStatus int
		wantBody   string
		wantDown   bool
	}{
		{"400 stays 400", func(b *backend) { b.status = http.StatusBadRequest }, http.StatusBadRequest, "refused by n1", false},
		{"403 stays 403", func(b *backend) { b.status = http.StatusForbidden }, http.StatusForbidden, "refused by n1", false},
		{"node silent after its first bytes is 502", func(b *backend) { b.stall = true }, http.StatusBadGateway, "read upgrade response", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := startBackend(t, "n1", tt.opt)
			p, addr, _ := startProxy(t, Config{HandshakeTimeout: 100 * time.Millisecond},
				&fakePicker{nodes: []testNode{{"n1", b.addr()}, {"n2", closedAddr(t)}}})
			c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("alice"))
			if c.Resp.StatusCode != tt.wantStatus || !strings.Contains(c.Body, tt.wantBody) {
				t.Errorf("status %d body %q, want %d containing %q", c.Resp.StatusCode, c.Body, tt.wantStatus, tt.wantBody)
			}
			if got := p.Down("n1"); got != tt.wantDown {
				t.Errorf("Down(n1) = %v, want %v", got, tt.wantDown)
			}
			if n := b.Accepted(); n != 1 {
				t.Errorf("node got %d connections, want 1 (a request that reached a node is never re-sent)", n)
			}
			if got := p.Connections(); len(got) != 0 {
				t.Errorf("Connections() = %v, want none", got)
			}
		})
	}
	t.Run("node headers kept", func(t *testing.T) {
		b := startBackend(t, "n1", func(b *backend) { b.status = http.StatusForbidden })
		_, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})
		c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("alice"))
		if got := c.Resp.Header.Get("X-Node"); got != "n1" {
			t.Errorf("X-Node = %q, want n1", got)
		}
	})
}

// TestSwitchingHead: the node's 101 reaches the client with its headers
// and the bytes behind it, whether it is relayed as written (the usual
// head) or parsed first (a head longer than the handshake buffer, or one
// that ends its lines in LF alone).
func TestSwitchingHead(t *testing.T) {
	long := "X-Long: " + strings.Repeat("v", 6000) + "\r\n"
	tests := []struct {
		name string
		opt  func(*backend)
		want string // X-Node-Extra seen by the client
	}{
		{"as written", func(b *backend) { b.extra = "X-Node-Extra: 1\r\n" }, "1"},
		{"longer than the buffer", func(b *backend) { b.extra = "X-Node-Extra: 2\r\n" + long }, "2"},
		{"LF line ends", func(b *backend) { b.extra = "X-Node-Extra: 3\r\n"; b.lf = true }, "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := startBackend(t, "n1", tt.opt)
			_, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})
			c := connect(t, addr, "alice", "n1")
			if got := c.Resp.Header.Get("X-Node-Extra"); got != tt.want {
				t.Errorf("X-Node-Extra = %q, want %q", got, tt.want)
			}
			if got := c.Resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
				t.Errorf("Sec-WebSocket-Accept = %q, want the node's", got)
			}
			if err := echo(c, []byte("hello")); err != nil {
				t.Errorf("echo: %v", err)
			}
		})
	}
}

func TestSwitchHeadParse(t *testing.T) {
	const ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
	tests := []struct {
		in   string
		n    int
		more bool
	}{
		{"", 0, true},
		{"HTTP/1.1 10", 0, true},
		{"HTTP/1.1 101", 0, true},
		{"HTTP/1.1 200 OK\r\n\r\n", 0, false},
		{"HTTP/1.1 1010 x\r\n\r\n", 0, false},
		{"HTTP/1.0 101 x\r\n\r\n", 0, false},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgr", 0, true},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n", 0, true},
		{ok, len(ok), false},
		{ok + "frame bytes", len(ok), false},
		{"HTTP/1.1 101\r\n\r\n", len("HTTP/1.1 101\r\n\r\n"), false},
		{"HTTP/1.1 101 x\nUpgrade: websocket\n\n", 0, false},
		{"HTTP/1.1 101 x\r\nUpgrade: websocket\n\r\n", 0, false},
		{"HTTP/1.1 101 x\r\nno colon\r\n\r\n", 0, false},
		{"HTTP/1.1 101 x\r\nBad Name: v\r\n\r\n", 0, false},
		{"HTTP/1.1 101 x\r\n: v\r\n\r\n", 0, false},
		{"HTTP/1.1 101 x\r\nK: a\x00b\r\n\r\n", 0, false},
		{"HTTP/1.1 101 x\r\nK: a\tb\r\n\r\n", len("HTTP/1.1 101 x\r\nK: a\tb\r\n\r\n"), false},
	}
	for _, tt := range tests {
		if n, more := switchHead([]byte(tt.in)); n != tt.n || more != tt.more {
			t.Errorf("switchHead(%q) = %d, %v, want %d, %v", tt.in, n, more, tt.n, tt.more)
		}
	}
}

// FuzzSwitchHead: a head switchHead takes as written parses as a 101 with
// the same length, and no input makes it claim more bytes than it got.
func FuzzSwitchHead(f *testing.F) {
	f.Add("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx")
	f.Add("HTTP/1.1 101\r\nK: v\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		n, _ := switchHead([]byte(raw))
		if n == 0 {
			return
		}
		if n > len(raw) {
			t.Fatalf("switchHead(%q) = %d, more than the %d bytes given", raw, n, len(raw))
		}
		br := bufio.NewReader(strings.NewReader(raw))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("switchHead(%q) = %d, but it does not parse as a 101: %v", raw, n, err)
		}
		if rest := br.Buffered(); len(raw)-rest != n {
			t.Errorf("switchHead(%q) = %d, http.ReadResponse read %d", raw, n, len(raw)-rest)
		}
	})
}

func TestEchoRoundTrips(t *testing.T) {
	b := startBackend(t, "n1", nil)
	p, addr, reg := startProxy(t, Config{BufferSize: 4096}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	const clients, rounds = 8, 200
	conns := make([]*wstest.Raw, clients)
	for i := range conns {
		conns[i] = connect(t, addr, fmt.Sprintf("c%d", i), "n1")
	}
	testkit.Eventually(t, ioTimeout, func() bool { return p.Connections()["n1"] == clients }, "8 connections on n1")
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_connections", "n1"); v != clients {
		t.Errorf("connections gauge = %v, want %d", v, clients)
	}

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var sent int64
	for i, c := range conns {
		rng := rand.New(rand.NewPCG(uint64(i), 1))
		sizes := make([]int, rounds)
		for j := range sizes {
			sizes[j] = 1 + rng.IntN(200)
		}
		sizes[0] = 100 << 10 // larger than the relay buffer
		for _, n := range sizes {
			sent += int64(n)
		}
		wg.Go(func() {
			for j, n := range sizes {
				msg := bytes.Repeat([]byte{byte('a' + (i+j)%26)}, n)
				if err := echo(c, msg); err != nil {
					errs <- fmt.Errorf("client %d round %d: %w", i, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A shard adds its byte counts once per wake, after its writes: the last
	// echo can reach the client before its bytes are counted.
	var toNode, toClient float64
	testkit.Until(2*time.Second, func() bool {
		toNode, _ = testkit.Metric(t, reg, "ringcast_balancer_proxied_bytes_total", "to_node")
		toClient, _ = testkit.Metric(t, reg, "ringcast_balancer_proxied_bytes_total", "to_client")
		return int64(toNode) >= sent && int64(toClient) >= sent
	})
	if int64(toNode) != sent || int64(toClient) < sent {
		t.Errorf("proxied bytes to_node %v, to_client %v, want %d and at least %d", toNode, toClient, sent, sent)
	}
}

func TestRealWebSocketClient(t *testing.T) {
	b := startBackend(t, "n1", nil)
	_, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	// gobwas/ws checks the Sec-WebSocket-Accept the node computed.
	conn, br, _, err := ws.Dialer{}.Dial(ctx, "ws://"+addr+"/ws?client_id=alice")
	if err != nil {
		t.Fatalf("ws dial through proxy: %v", err)
	}
	defer conn.Close()
	if br == nil {
		t.Fatal("greeting sent with the 101 did not arrive with it")
	}
	if line, err := br.ReadString('\n'); err != nil || line != "n1\n" {
		t.Errorf("greeting = %q, %v, want %q", line, err, "n1\n")
	}
}

func TestPipelinedClientBytes(t *testing.T) {
	b := startBackend(t, "n1", nil)
	_, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	// Bytes sent right behind the request may sit in the server's read buffer.
	c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("alice")+"early")
	if got := greeting(t, c); got != "n1" {
		t.Fatalf("greeting %q, want n1", got)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c.R, got); err != nil || string(got) != "early" {
		t.Errorf("echo of pipelined bytes = %q, %v, want %q", got, err, "early")
	}
}

func TestHalfClose(t *testing.T) {
	b := startBackend(t, "n1", nil)
	p, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	c := connect(t, addr, "alice", "n1")
	if _, err := io.WriteString(c, "last words"); err != nil {
		t.Fatal(err)
	}
	if err := c.Conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The node echoes what it got before the FIN, then closes.
	rest, err := io.ReadAll(c.R)
	if err != nil || string(rest) != "last words" {
		t.Errorf("after half-close read %q, %v, want %q then EOF", rest, err, "last words")
	}
	testkit.Eventually(t, ioTimeout, func() bool { return len(p.Connections()) == 0 }, "no connections")
}

func TestCloseNode(t *testing.T) {
	b1 := startBackend(t, "n1", nil)
	b2 := startBackend(t, "n2", nil)
	p, addr, reg := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b1.addr()}, {"n2", b2.addr()}}})

	var on1, on2 []*wstest.Raw
	for i := range 3 {
		on1 = append(on1, connect(t, addr, fmt.Sprintf("n1-%d", i), "n1"))
	}
	for i := range 2 {
		on2 = append(on2, connect(t, addr, fmt.Sprintf("n2-%d", i), "n2"))
	}
	want := map[string]int{"n1": 3, "n2": 2}
	testkit.Eventually(t, ioTimeout, func() bool { return maps.Equal(p.Connections(), want) }, "3 on n1 and 2 on n2")

	if got := p.CloseNode("n1"); got != 3 {
		t.Errorf("CloseNode(n1) = %d, want 3", got)
	}
	for i, c := range on1 {
		if _, err := c.R.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("n1 client %d read error %v, want EOF", i, err)
		}
	}
	for i, c := range on2 {
		if err := echo(c, []byte("still here")); err != nil {
			t.Errorf("n2 client %d: %v", i, err)
		}
	}
	want = map[string]int{"n2": 2}
	testkit.Eventually(t, ioTimeout, func() bool { return maps.Equal(p.Connections(), want) }, "only n2 connections")
	if _, ok := testkit.Metric(t, reg, "ringcast_balancer_connections", "n1"); ok {
		t.Error("connections gauge for n1 still exported, want it removed")
	}
	if got := p.CloseNode("n1"); got != 0 {
		t.Errorf("second CloseNode(n1) = %d, want 0", got)
	}
}

func TestCloseAll(t *testing.T) {
	b1 := startBackend(t, "n1", nil)
	b2 := startBackend(t, "n2", nil)
	p, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b1.addr()}, {"n2", b2.addr()}}})

	conns := []*wstest.Raw{connect(t, addr, "n1-a", "n1"), connect(t, addr, "n2-a", "n2")}
	p.Close()
	for i, c := range conns {
		if _, err := c.R.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("client %d read error %v, want EOF", i, err)
		}
	}
	if got := p.Connections(); len(got) != 0 {
		t.Errorf("Connections() after Close = %v, want none", got)
	}
	c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("alice"))
	if c.Resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status after Close %d, want 503", c.Resp.StatusCode)
	}
}

func TestIdleTimeout(t *testing.T) {
	b := startBackend(t, "n1", nil)
	const idle = 300 * time.Millisecond
	p, addr, _ := startProxy(t, Config{IdleTimeout: idle}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	quiet := connect(t, addr, "quiet", "n1")
	busy := connect(t, addr, "busy", "n1")
	// The busy client talks well within the idle timeout for several timeouts.
	for start := time.Now(); time.Since(start) < 4*idle; time.Sleep(idle / 6) {
		if err := echo(busy, []byte("ping")); err != nil {
			t.Fatalf("busy client: %v", err)
		}
	}
	if _, err := quiet.R.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("quiet client read error %v, want EOF", err)
	}
	if err := echo(busy, []byte("ping")); err != nil {
		t.Errorf("busy client after quiet one closed: %v", err)
	}
	testkit.Eventually(t, ioTimeout, func() bool { return p.Connections()["n1"] == 1 }, "one connection on n1")
}

func TestNodeCrash(t *testing.T) {
	b := startBackend(t, "n1", nil)
	p, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})

	c := connect(t, addr, "alice", "n1")
	b.Close()
	if _, err := c.R.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("client read error %v after the node went away, want EOF", err)
	}
	// The client keeps its side open: the relay ends after drainTimeout.
	testkit.Eventually(t, ioTimeout, func() bool { return len(p.Connections()) == 0 }, "no connections")
}

// TestTLSClient covers a client connection without a usable file descriptor
// (*tls.Conn), relayed with blocking reads.
func TestTLSClient(t *testing.T) {
	b := startBackend(t, "n1", nil)
	p, err := New(Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(p)
	t.Cleanup(func() {
		srv.Close()
		p.Close()
	})
	tc, err := tls.Dial("tcp", srv.Listener.Addr().String(), srv.Client().Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	c := wstest.HandshakeRaw(t, tc, wstest.UpgradeRequest("alice"))
	if c.Resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d %q, want 101", c.Resp.StatusCode, c.Body)
	}
	if got := greeting(t, c); got != "n1" {
		t.Fatalf("greeting %q, want n1", got)
	}
	for i := range 50 {
		if err := echo(c, bytes.Repeat([]byte("t"), 1+i*100)); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if h, _ := b.lastRequest(); h.Get("X-Forwarded-Proto") != "https" {
		t.Errorf("X-Forwarded-Proto = %q, want https", h.Get("X-Forwarded-Proto"))
	}
	if got := p.CloseNode("n1"); got != 1 {
		t.Errorf("CloseNode(n1) = %d, want 1", got)
	}
	if _, err := c.R.ReadByte(); err == nil {
		t.Error("read after CloseNode succeeded, want an error")
	}
}

// FuzzRequestHead checks that whatever upgrade a client sends, the request
// forwarded to the node parses, keeps the client id and carries only the
// forwarding headers the proxy set.
func FuzzRequestHead(f *testing.F) {
	f.Add(wstest.UpgradeRequest("alice", "X-Forwarded-For: 6.6.6.6\r\n", "Forwarded: for=x\r\n"))
	f.Add(strings.Replace(wstest.UpgradeRequest("bob", "X-Real-IP: 1.1.1.1\r\n"), "Connection: Upgrade",
		"Connection: keep-alive, Upgrade, X-Forwarded-For, Sec-WebSocket-Key", 1))
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || wire.CheckUpgrade(r) != "" {
			return
		}
		r.RemoteAddr = "192.0.2.1:4321"
		head := appendRequestHead(nil, r, netip.MustParseAddr("192.0.2.1"))
		out, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("forwarded request does not parse: %v\n%q", err, head)
		}
		if got, want := out.URL.Query().Get("client_id"), r.URL.Query().Get("client_id"); got != want {
			t.Errorf("client_id %q forwarded as %q", want, got)
		}
		if out.Host != r.Host {
			t.Errorf("Host %q forwarded as %q", r.Host, out.Host)
		}
		for _, key := range []string{"Origin", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Protocol"} {
			if got, want := out.Header.Values(key), r.Header.Values(key); !slices.Equal(got, want) {
				t.Errorf("%s %q forwarded as %q\n%q", key, want, got, head)
			}
		}
		for key, want := range map[string]string{
			"X-Forwarded-For": "192.0.2.1", "X-Forwarded-Proto": "http", "Forwarded": "", "X-Real-Ip": "",
			"Connection": "Upgrade", "Upgrade": "websocket", "Keep-Alive": "",
		} {
			if got := strings.Join(out.Header.Values(key), ","); got != want {
				t.Errorf("forwarded %s = %q, want %q\n%q", key, got, want, head)
			}
		}
	})
}

// TestNodeAddressForms: a node given by IP address (dialled without the net
// package) and one given by name (net.Dialer) both relay, and a refused
// dial on either falls back to the next node.
func TestNodeAddressForms(t *testing.T) {
	b := startBackend(t, "n1", nil)
	_, port, err := net.SplitHostPort(b.addr())
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, err := net.SplitHostPort(closedAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		t.Run(host, func(t *testing.T) {
			_, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{
				{"n0", net.JoinHostPort(host, closedPort)}, {"n1", net.JoinHostPort(host, port)}}})
			c := connect(t, addr, "alice", "n1")
			if err := echo(c, []byte("hello")); err != nil {
				t.Errorf("echo: %v", err)
			}
		})
	}
}
