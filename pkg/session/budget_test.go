package session

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/outbound"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

// flood publishes k messages of 32 KiB to channel from pub, waiting for
// each ack. A publish refused while the node sheds is sent again once the
// node is no longer overloaded, as a client retries.
func flood(t *testing.T, n *testServer, pub *wstest.Conn, channel string, k int) (refused int) {
	t.Helper()
	data := `"` + strings.Repeat("d", 32<<10) + `"`
	for i := 0; i < k; {
		pub.Send(fmt.Sprintf(`{"op":"publish","channel":%q,"data":%s,"id":%d}`, channel, data, i))
		switch f := pub.Next(); {
		case f.Op == wire.OpAck:
			i++
		case f.Op == wire.OpError && f.Code == wire.CodeOverloaded:
			refused++
			deadline := time.Now().Add(10 * time.Second)
			for n.u.Overloaded() {
				if time.Now().After(deadline) {
					t.Fatal("overloaded for 10 s")
				}
				time.Sleep(5 * time.Millisecond)
			}
		default:
			t.Fatalf("publish %d: got %+v", i, f)
		}
	}
	return refused
}

// waitMetric waits until the metric (summed over labels) satisfies ok.
func waitMetric(t *testing.T, n *testServer, name string, ok func(float64) bool, labels ...string) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := testkit.Metric(t, n.reg, name, labels...)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v after 10 s", name, labels, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBudgetShedsSlowestFirst(t *testing.T) {
	t.Parallel()
	n := start(t, func(c *testConfig) {
		c.MaxOutbound = 2 << 20
		c.SendBuffer = 16 << 10
		c.MaxLag = time.Minute
	})
	a, b, pub := n.connect(t, "a"), n.connect(t, "b"), n.connect(t, "pub")
	for _, c := range []*wstest.Conn{a, b} {
		c.Send(`{"op":"subscribe","channel":"` + c.ID + `"}`)
		c.Expect(wire.OpSubscribed)
	}
	// Neither reads. a's backlog (48 × 32 KiB less what the kernel holds)
	// is the bigger when b's takes the total past 2 MiB: a alone goes.
	if r := flood(t, n, pub, "a", 48); r != 0 {
		t.Fatalf("%d publishes refused under the budget", r)
	}
	r := flood(t, n, pub, "b", 40)
	t.Logf("publishes refused while shedding: %d", r)
	waitMetric(t, n, "ringcast_node_slow_consumers_total", func(v float64) bool { return v >= 1 }, "budget")
	a.ExpectClose(wire.CloseSlowConsumer, 48, 5*time.Second)
	for i := range 40 {
		if f := b.Expect(wire.OpMessage); f.Channel != "b" {
			t.Fatalf("b: message %d on %q", i, f.Channel)
		}
	}
	b.RoundTrip()
	pub.RoundTrip()
	if v, _ := testkit.Metric(t, n.reg, "ringcast_node_slow_consumers_total"); v != 1 {
		t.Errorf("slow consumers closed = %v, want 1 (a only)", v)
	}
	// Every byte came back: nothing is queued once all was read.
	waitMetric(t, n, "ringcast_node_outbound_bytes", func(v float64) bool { return v == 0 })
	if n.u.Overloaded() {
		t.Error("still overloaded with nothing queued")
	}
}

func TestOverloadRefusesPublish(t *testing.T) {
	t.Parallel()
	n := start(t, nil)
	c := n.connect(t, "c")
	n.u.out.Force(true) // what a shedding pass sets
	for _, req := range []string{
		`{"op":"publish","channel":"x","data":1,"id":1}`,
		`{"op":"send","to":"c","data":1,"id":2}`,
	} {
		c.Send(req)
		if f := c.Expect(wire.OpError); f.Code != wire.CodeOverloaded {
			t.Errorf("%s while overloaded: error %q, want %q", req, f.Code, wire.CodeOverloaded)
		}
	}
	c.Send(`{"op":"subscribe","channel":"x"}`) // reads are still served
	c.Expect(wire.OpSubscribed)
	n.u.out.Force(false)
	c.Send(`{"op":"publish","channel":"x","data":1,"id":3}`)
	c.Expect(wire.OpMessage)
	c.Expect(wire.OpAck)
}

// throttle is a TCP proxy to target whose server → client direction runs
// at rate bytes per second with a link queue of about 8 KiB, like a
// shaped link. It returns the proxy's address.
func throttle(t *testing.T, target string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
	}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			cl, err := ln.Accept()
			if err != nil {
				return
			}
			srv, err := d.Dial("tcp", target)
			if err != nil {
				cl.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, cl, srv)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(srv, cl)
				srv.Close()
			}()
			go func() {
				defer wg.Done()
				defer cl.Close()
				buf := make([]byte, 1024)
				began, sent := time.Now(), 0
				for {
					k, err := srv.Read(buf)
					if err != nil {
						return
					}
					if _, err := cl.Write(buf[:k]); err != nil {
						return
					}
					sent += k
					time.Sleep(time.Until(began.Add(time.Duration(sent) * time.Second / time.Duration(rate))))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestLagClosesSlowLink: a consumer behind a 512 kbit/s link is closed
// 4008 once it falls MaxLag behind, and no message it got was more than
// MaxLag plus what the bounded buffers hold behind. A rate the link
// carries is not closed.
func TestLagClosesSlowLink(t *testing.T) {
	t.Parallel()
	const (
		maxLag = 2 * time.Second
		rate   = 512_000 / 8
		// What may still sit ahead of the close frame when it is queued:
		// a writer's take, the socket's buffer (the kernel doubles
		// SO_SNDBUF) and the proxy's.
		behind = outbound.MaxTake + 2*16<<10 + 16<<10
		slack  = time.Duration(behind) * time.Second / rate
	)
	n := start(t, func(c *testConfig) {
		c.MaxLag = maxLag
		c.SendBuffer = 16 << 10
	})
	proxy := throttle(t, n.addr(), rate)
	slow, err := wstest.Dial(t, wstest.URL(proxy, "slow"), "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	slow.Expect(wire.OpWelcome)
	slow.Send(`{"op":"subscribe","channel":"feed"}`)
	slow.Expect(wire.OpSubscribed)

	pad := strings.Repeat("p", 1000)
	var perSecond sync.Mutex // guards pubRate
	pubRate := 50
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		next := time.Now()
		for {
			perSecond.Lock()
			r := pubRate
			perSecond.Unlock()
			next = next.Add(time.Second / time.Duration(r))
			select {
			case <-stop:
				return
			case <-time.After(time.Until(next)):
			}
			data := fmt.Sprintf(`{"t":%d,"pad":%q}`, time.Now().UnixNano(), pad)
			n.hub.Publish(context.Background(), bridge.Message{Channel: "feed", Data: json.RawMessage(data)})
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	var worst time.Duration
	read := func(until time.Time) (closed bool, code int, last time.Time) {
		for time.Now().Before(until) {
			e, err := slow.Read(10 * time.Second)
			if err != nil {
				t.Fatalf("slow: %v (worst lag %v)", err, worst)
			}
			if e.Closed {
				return true, e.CloseCode, time.Now()
			}
			var d struct{ T int64 }
			if e.Frame.Op != wire.OpMessage || json.Unmarshal(e.Frame.Data, &d) != nil {
				t.Fatalf("slow: unexpected %s", e.Raw)
			}
			worst = max(worst, time.Since(time.Unix(0, d.T)))
		}
		return false, 0, time.Time{}
	}
	// 50 messages of 1 KB a second: about 430 kbit/s of frames, which the
	// link carries.
	if closed, code, _ := read(time.Now().Add(4 * time.Second)); closed {
		t.Fatalf("a consumer the link keeps up with was closed %d", code)
	}
	if worst > time.Second {
		t.Fatalf("worst lag %v at 50 msg/s over a link that carries it", worst)
	}
	t.Logf("50 msg/s of 1 KB over 512 kbit/s: worst lag %v", worst)
	// Twice that outruns the link: the backlog grows until MaxLag.
	perSecond.Lock()
	pubRate = 100
	perSecond.Unlock()
	began := time.Now()
	closed, code, at := read(time.Now().Add(30 * time.Second))
	if !closed || code != wire.CloseSlowConsumer {
		t.Fatalf("100 msg/s of 1 KB over 512 kbit/s: closed %v code %d within 30 s, want 4008 (worst lag %v)", closed, code, worst)
	}
	t.Logf("100 msg/s: closed 4008 after %v, worst lag %v (bound %v + %v of buffers)", at.Sub(began), worst, maxLag, slack)
	if worst > maxLag+slack {
		t.Errorf("worst lag %v, want at most %v + %v", worst, maxLag, slack)
	}
	if v, _ := testkit.Metric(t, n.reg, "ringcast_node_slow_consumers_total", "lag"); v != 1 {
		t.Errorf("slow consumers closed for lag = %v, want 1", v)
	}
}
