package session

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

// goroutinesIn counts the goroutines whose stack holds fn.
func goroutinesIn(t *testing.T, fn string) int {
	t.Helper()
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 2); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range bytes.Split(b.Bytes(), []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn)) {
			n++
		}
	}
	return n
}

// TestIdleWait holds idle subscribed connections, wakes each with a
// message and a request, and lets the clients go: on epoll none of them
// waits on a goroutine of its own, on goroutines each does.
func TestIdleWait(t *testing.T) {
	const conns = 60
	for _, mode := range []string{IdleEpoll, IdleGoroutine} {
		t.Run(mode, func(t *testing.T) {
			n := start(t, func(c *testConfig) { c.IdleWait = mode })
			var cs []*wstest.Conn
			for i := range conns {
				c := n.connect(t, fmt.Sprintf("c%d", i))
				c.Send(`{"op":"subscribe","channel":"room"}`)
				c.Expect(wire.OpSubscribed)
				cs = append(cs, c)
			}
			want := 0
			if mode == IdleGoroutine {
				want = conns
			}
			parked := func() bool { return goroutinesIn(t, "session.(*Conn).park(") == want }
			testkit.Eventually(t, 10*time.Second, parked, "%d connections waiting on goroutines, want %d", goroutinesIn(t, "session.(*Conn).park("), want)
			if mode == IdleEpoll {
				if p := goroutinesIn(t, "park.(*poller).run("); p < 1 || p > n.u.idle.Pollers() {
					t.Errorf("%d poller goroutines, want 1…%d", p, n.u.idle.Pollers())
				}
			}
			cs[0].Send(`{"op":"publish","channel":"room","data":"wake"}`)
			for _, c := range cs {
				if m := c.Expect(wire.OpMessage); string(m.Data) != `"wake"` {
					t.Fatalf("%s got %s, want \"wake\"", c.ID, m.Data)
				}
				c.RoundTrip() // a request read by a woken reader
			}
			testkit.Eventually(t, 10*time.Second, parked, "after the requests %d connections wait on goroutines, want %d", goroutinesIn(t, "session.(*Conn).park("), want)
			for _, c := range cs[:conns/2] {
				c.NC.Close()
			}
			testkit.Eventually(t, 10*time.Second, func() bool { return n.count() == conns/2 },
				"%d connections left after %d clients hung up, want %d", n.count(), conns/2, conns/2)
			for _, c := range cs[conns/2:] {
				c.RoundTrip()
			}
		})
	}
}

func TestIdleWaitConfig(t *testing.T) {
	cfg := Config{Node: "n1", IdleWait: "threads"}
	if err := cfg.validate(); err == nil {
		t.Error("IdleWait threads accepted")
	}
	cfg = Config{Node: "n1"}
	if err := cfg.validate(); err != nil || cfg.IdleWait != IdleEpoll {
		t.Errorf("default IdleWait %q (%v), want %q", cfg.IdleWait, err, IdleEpoll)
	}
}

// TestFramesBehindTheUpgrade sends two requests in the same write as the
// upgrade request: the upgrade read them ahead, and each is answered.
func TestFramesBehindTheUpgrade(t *testing.T) {
	for _, mode := range []string{IdleEpoll, IdleGoroutine} {
		t.Run(mode, func(t *testing.T) {
			n := start(t, func(c *testConfig) { c.IdleWait = mode })
			var b bytes.Buffer
			for _, req := range []string{`{"op":"ping","id":1}`, `{"op":"ping","id":2}`} {
				if err := ws.WriteFrame(&b, ws.MaskFrame(ws.NewTextFrame([]byte(req)))); err != nil {
					t.Fatal(err)
				}
			}
			rc := wstest.DialRaw(t, n.addr(), wstest.UpgradeRequest("ahead")+b.String())
			if rc.Resp.StatusCode != 101 {
				t.Fatalf("status %d, want 101", rc.Resp.StatusCode)
			}
			rw := struct {
				io.Reader
				io.Writer
			}{rc.R, rc}
			for _, want := range []string{wire.OpWelcome, wire.OpPong, wire.OpPong} {
				p, err := wsutil.ReadServerText(rw)
				if err != nil {
					t.Fatalf("waiting for %s: %v", want, err)
				}
				var f wire.Frame
				if err := json.Unmarshal(p, &f); err != nil || f.Op != want {
					t.Fatalf("got %s (%v), want %s", p, err, want)
				}
			}
		})
	}
}
