package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func TestSourceOf(t *testing.T) {
	trusted, err := ParseCIDRs([]string{"10.0.0.0/8", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	a := newAdmission(Config{TrustedProxies: trusted})
	for _, tt := range []struct {
		peer string
		xff  []string
		want string
	}{
		{"198.51.100.1:1", nil, "198.51.100.1"},
		{"198.51.100.1:1", []string{"6.6.6.6"}, "198.51.100.1"}, // untrusted peer: header ignored
		{"10.1.1.1:1", nil, "10.1.1.1"},
		{"10.1.1.1:1", []string{"203.0.113.9"}, "203.0.113.9"},
		{"10.1.1.1:1", []string{"6.6.6.6, 203.0.113.9"}, "203.0.113.9"}, // rightmost untrusted wins
		{"10.1.1.1:1", []string{"6.6.6.6, 203.0.113.9, 192.0.2.7"}, "203.0.113.9"},
		{"10.1.1.1:1", []string{"6.6.6.6", "203.0.113.9, 10.2.2.2"}, "203.0.113.9"},
		{"10.1.1.1:1", []string{"6.6.6.6, junk"}, "10.1.1.1"},
		{"10.1.1.1:1", []string{"10.3.3.3"}, "10.3.3.3"}, // only proxies: the last one
		{"[2001:db8::1]:1", nil, "2001:db8::1"},
	} {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.RemoteAddr = tt.peer
		for _, v := range tt.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := a.sourceOf(r); got.String() != tt.want {
			t.Errorf("sourceOf(peer %s, XFF %q) = %s, want %s", tt.peer, tt.xff, got, tt.want)
		}
	}
	if _, err := ParseCIDRs([]string{"10.0.0.0/33"}); err == nil {
		t.Error("ParseCIDRs(10.0.0.0/33) error = nil")
	}
}

func TestAdmit(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(Config{MaxConnsPerIP: 3, ConnRatePerIP: 2}) // burst 4
	ip := netip.MustParseAddr("192.0.2.1")
	for i := range 3 {
		if no := a.admit(ip, now); no != nil {
			t.Fatalf("admit #%d refused: %+v", i+1, no)
		}
	}
	if no := a.admit(ip, now); no == nil || no.reason != "per_ip_conns" {
		t.Fatalf("4th concurrent admit = %+v, want per_ip_conns", no)
	}
	if no := a.admit(netip.MustParseAddr("192.0.2.2"), now); no != nil {
		t.Fatalf("another address refused: %+v", no)
	}
	a.release(ip)
	if no := a.admit(ip, now); no != nil {
		t.Fatalf("admit after release refused: %+v", no)
	}
	// 4 tokens spent: the rate limit answers now, whatever the slots say.
	a.release(ip)
	no := a.admit(ip, now)
	if no == nil || no.reason != "per_ip_rate" || no.retryAfter <= 0 || no.retryAfter > 500*time.Millisecond {
		t.Fatalf("5th admit in the same instant = %+v, want per_ip_rate with a wait of at most 0.5 s", no)
	}
	if no := a.admit(ip, now.Add(500*time.Millisecond)); no != nil {
		t.Fatalf("admit a token later refused: %+v", no)
	}
	// One IPv6 host is its /64.
	v6 := newAdmission(Config{MaxConnsPerIP: 1})
	if no := v6.admit(netip.MustParseAddr("2001:db8::1"), now); no != nil {
		t.Fatal(no)
	}
	if no := v6.admit(netip.MustParseAddr("2001:db8::2"), now); no == nil {
		t.Fatal("second address of the same /64 admitted, want per_ip_conns")
	}
	// Forgotten once idle: a source holds memory only while it is active.
	a2 := newAdmission(Config{MaxConnsPerIP: 3, ConnRatePerIP: 2})
	a2.admit(ip, now)
	a2.release(ip)
	a2.admit(netip.MustParseAddr("192.0.2.9"), now.Add(time.Minute))
	if _, ok := a2.sources[ip]; ok || len(a2.sources) != 1 {
		t.Errorf("idle source kept after a sweep: %d sources", len(a2.sources))
	}
}

// TestAdmitSourcesCap: the table of sources is bounded. A new source that
// finds it full, idle ones swept, gets 503; known sources are served; once
// a source goes idle a new one takes its place.
func TestAdmitSourcesCap(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(Config{MaxConnsPerIP: 3, ConnRatePerIP: 2, MaxSources: 2})
	ip1, ip2, ip3 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	for _, ip := range []netip.Addr{ip1, ip2} {
		if no := a.admit(ip, now); no != nil {
			t.Fatalf("admit %s: %+v", ip, no)
		}
	}
	no := a.admit(ip3, now)
	if no == nil || no.reason != "sources_full" || no.status != http.StatusServiceUnavailable || no.retryAfter != time.Second {
		t.Fatalf("a third source with a cap of 2 = %+v, want sources_full, 503, Retry-After 1 s", no)
	}
	if no := a.admit(ip1, now); no != nil {
		t.Fatalf("a known source refused while the table is full: %+v", no)
	}
	// ip2 goes idle: its connection ends and its bucket refills (0.5 s).
	// A full table is swept at most once a second (a sweep walks it all).
	a.release(ip2)
	if no := a.admit(ip3, now.Add(500*time.Millisecond)); no == nil || no.reason != "sources_full" {
		t.Fatalf("ip3 half a second after the last sweep = %+v, want sources_full", no)
	}
	if no := a.admit(ip3, now.Add(3*time.Second)); no != nil {
		t.Fatalf("ip3 refused after ip2 went idle: %+v", no)
	}
	if _, ok := a.sources[ip2]; ok || len(a.sources) != 2 {
		t.Errorf("after the sweep: ip2 kept %v, %d sources, want ip1 and ip3", ok, len(a.sources))
	}
}

// TestAdmissionLimits: one address over its limit gets 429 with
// Retry-After before any node is dialled; another address still connects,
// and the connections already relayed keep working.
func TestAdmissionLimits(t *testing.T) {
	b := startBackend(t, "n1", nil)
	_, addr, reg := startProxy(t, Config{MaxConnsPerIP: 3, ConnRatePerIP: -1}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})
	held := make([]*wstest.Raw, 3)
	for i := range held {
		held[i] = connect(t, addr, "c"+strconv.Itoa(i), "n1")
	}
	accepted := b.Accepted()

	c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("c9"))
	if c.Resp.StatusCode != http.StatusTooManyRequests || c.Resp.Header.Get("Retry-After") == "" {
		t.Fatalf("4th connection: status %d Retry-After %q, want 429 with Retry-After", c.Resp.StatusCode, c.Resp.Header.Get("Retry-After"))
	}
	c.ExpectClosed(t)
	if got := b.Accepted(); got != accepted {
		t.Errorf("node accepted %d connections for a refused upgrade", got-accepted)
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_connections_refused_total", "per_ip_conns"); v != 1 {
		t.Errorf("connections_refused_total{per_ip_conns} = %v, want 1", v)
	}

	other, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	if c := wstest.HandshakeRaw(t, other, wstest.UpgradeRequest("d1")); c.Resp.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("from 127.0.0.2: status %d %q, want 101", c.Resp.StatusCode, c.Body)
	}
	for i, h := range held {
		if err := echo(h, []byte("still here")); err != nil {
			t.Errorf("held connection %d: %v", i, err)
		}
	}

	// A slot comes back when its connection ends.
	held[0].Close()
	testkit.Eventually(t, ioTimeout, func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		return wstest.HandshakeRaw(t, c, wstest.UpgradeRequest("c0")).Resp.StatusCode == http.StatusSwitchingProtocols
	}, "a freed slot")
}

func TestAdmissionRate(t *testing.T) {
	b := startBackend(t, "n1", nil)
	_, addr, _ := startProxy(t, Config{ConnRatePerIP: 1}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}}) // burst 2
	codes := make([]int, 3)
	for i := range codes {
		codes[i] = wstest.DialRaw(t, addr, wstest.UpgradeRequest("r"+strconv.Itoa(i))).Resp.StatusCode
	}
	if codes[0] != 101 || codes[1] != 101 || codes[2] != http.StatusTooManyRequests {
		t.Errorf("three connections at once with rate 1/s: %v, want [101 101 429]", codes)
	}
}

// TestMaxPending: with MaxPending upgrades being set up (here one, held by
// a node that is slow to answer) and no wait for a slot, the next gets 503
// with Retry-After: 1 before any node is dialled; once the first is
// relayed, upgrades pass again.
func TestMaxPending(t *testing.T) {
	b := startBackend(t, "n1", func(b *backend) { b.delay = 500 * time.Millisecond })
	p, addr, reg := startProxy(t, Config{MaxPending: 1, PendingWait: -1, DialTimeout: 2 * time.Second}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})
	first := make(chan *wstest.Raw, 1)
	go func() { first <- wstest.DialRaw(t, addr, wstest.UpgradeRequest("c1")) }()
	testkit.Eventually(t, 5*time.Second, func() bool { return b.Accepted() == 1 }, "the first upgrade never reached the node")

	c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("c2"))
	if c.Resp.StatusCode != http.StatusServiceUnavailable || c.Resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("second upgrade while one is set up: status %d Retry-After %q, want 503 with Retry-After: 1", c.Resp.StatusCode, c.Resp.Header.Get("Retry-After"))
	}
	c.ExpectClosed(t)
	if got := b.Accepted(); got != 1 {
		t.Errorf("node accepted %d connections, want 1: the refused upgrade must not dial", got)
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_connections_refused_total", "overloaded"); v != 1 {
		t.Errorf("connections_refused_total{overloaded} = %v, want 1", v)
	}
	if f := <-first; f.Resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("first upgrade: status %d, want 101", f.Resp.StatusCode)
	}
	// The 101 reaches the client before the proxy hands the link to the
	// relay and returns its token: once it has, upgrades go through again.
	testkit.Eventually(t, 5*time.Second, func() bool { return p.pending.InFlight() == 0 }, "the first upgrade's token was never returned")
	connect(t, addr, "c3", "n1")
}

// TestPendingWait: an upgrade past MaxPending waits for the slot (the
// first one's, held while a slow node answers) instead of being refused,
// and is relayed once it has it.
func TestPendingWait(t *testing.T) {
	b := startBackend(t, "n1", func(b *backend) { b.delay = 300 * time.Millisecond })
	p, addr, reg := startProxy(t, Config{MaxPending: 1, PendingWait: 10 * time.Second, DialTimeout: 2 * time.Second}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})
	first := make(chan *wstest.Raw, 1)
	go func() { first <- wstest.DialRaw(t, addr, wstest.UpgradeRequest("c1")) }()
	testkit.Eventually(t, 5*time.Second, func() bool { return b.Accepted() == 1 }, "the first upgrade never reached the node")
	second := make(chan *wstest.Raw, 1)
	go func() { second <- wstest.DialRaw(t, addr, wstest.UpgradeRequest("c2")) }()
	testkit.Eventually(t, 5*time.Second, func() bool { return p.pending.Waiting() == 1 }, "the second upgrade is not waiting for the slot")
	if got := b.Accepted(); got != 1 {
		t.Fatalf("node accepted %d connections while the second waited, want 1", got)
	}
	for i, ch := range []chan *wstest.Raw{first, second} {
		if c := <-ch; c.Resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade %d: status %d, want 101", i+1, c.Resp.StatusCode)
		}
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_connections_refused_total", "overloaded"); v != 0 {
		t.Errorf("connections_refused_total{overloaded} = %v, want 0", v)
	}
}

// TestNoNodeRetryAfter: an upgrade no node can take gets 503 with
// Retry-After: 1, counted as no_node.
func TestNoNodeRetryAfter(t *testing.T) {
	_, addr, reg := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", closedAddr(t)}}})
	c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("c1"))
	if c.Resp.StatusCode != http.StatusServiceUnavailable || c.Resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After: 1", c.Resp.StatusCode, c.Resp.Header.Get("Retry-After"))
	}
	if v, _ := testkit.Metric(t, reg, "ringcast_balancer_connections_refused_total", "no_node"); v != 1 {
		t.Errorf("connections_refused_total{no_node} = %v, want 1", v)
	}
}

// waitingPicker has no node until ready is closed; it implements NodeWaiter.
type waitingPicker struct {
	fakePicker
	ready chan struct{}
}

func (w *waitingPicker) Pick(clientID string, excluded []string) (string, string, error) {
	select {
	case <-w.ready:
		return w.fakePicker.Pick(clientID, excluded)
	default:
		return "", "", errNoNodes
	}
}

func (w *waitingPicker) WaitNodes(ctx context.Context) {
	select {
	case <-w.ready:
	case <-ctx.Done():
	}
}

// TestWaitsForFirstNodes: a picker that has no node yet (a balancer that
// just started) holds the upgrade until it has one, up to DialTimeout.
func TestWaitsForFirstNodes(t *testing.T) {
	b := startBackend(t, "n1", nil)
	wp := &waitingPicker{fakePicker: fakePicker{nodes: []testNode{{"n1", b.addr()}}}, ready: make(chan struct{})}
	_, addr, _ := startProxy(t, Config{DialTimeout: 300 * time.Millisecond}, wp)

	start := time.Now()
	c := wstest.DialRaw(t, addr, wstest.UpgradeRequest("c1"))
	if c.Resp.StatusCode != http.StatusServiceUnavailable || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("without nodes: status %d after %v, want 503 after the 300ms dial timeout", c.Resp.StatusCode, time.Since(start))
	}
	time.AfterFunc(100*time.Millisecond, func() { close(wp.ready) })
	start = time.Now()
	connect(t, addr, "c2", "n1")
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("relayed after %v, before there was a node", d)
	}
}

// TestAllMarkedDown: when every node is marked down (all failed a dial
// lately, as in a reconnect storm), an upgrade still tries them rather
// than answering 503.
func TestAllMarkedDown(t *testing.T) {
	b := startBackend(t, "n1", nil)
	p, addr, _ := startProxy(t, Config{}, &fakePicker{nodes: []testNode{{"n1", b.addr()}}})
	p.markDown("n1")
	connect(t, addr, "c1", "n1")
}
