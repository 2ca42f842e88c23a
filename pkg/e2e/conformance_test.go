package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/wstest"
)

// TestConformance replays raw frames and handshakes a careless or hostile
// client sends, against a node and through the balancer, each with the
// answer RFC 6455 and DESIGN.md §6 require.
func TestConformance(t *testing.T) {
	c := startCluster(t, clustertest.Options{Nodes: 1, NodeArgs: []string{"-assembly-timeout", "1s", "-origins", "http://ok.test"}})
	targets := map[string]string{"node": c.Nodes[0].Addr, "balancer": c.Balancers[0].Addr}

	closeFrame := func(code int, reason string) []byte {
		return ws.NewCloseFrameBody(ws.StatusCode(code), reason)
	}
	frames := []struct {
		name   string
		send   func(c *wstest.Conn) error
		code   int
		skip   int // server frames allowed before the close
		within time.Duration
	}{
		{"reserved data opcode 3", op(3, nil), 1002, 0, 0},
		{"reserved data opcode 7", op(7, []byte("x")), 1002, 0, 0},
		{"reserved control opcode 11", op(11, nil), 1002, 0, 0},
		{"reserved control opcode 15", op(15, nil), 1002, 0, 0},
		{"unmasked frame", raw(0x81, 0x02, 'h', 'i'), 1002, 0, 0},
		{"reserved bit", rsv(), 1002, 0, 0},
		{"close code 999", op(8, closeFrame(999, "")), 1002, 0, 0},
		{"close code 1004", op(8, closeFrame(1004, "")), 1002, 0, 0},
		{"close code 1005", op(8, closeFrame(1005, "")), 1002, 0, 0},
		{"close code 1006", op(8, closeFrame(1006, "")), 1002, 0, 0},
		{"close code 1015", op(8, closeFrame(1015, "")), 1002, 0, 0},
		{"close code 5000", op(8, closeFrame(5000, "")), 1002, 0, 0},
		{"close payload of 1 byte", op(8, []byte{0x03}), 1002, 0, 0},
		{"close reason not UTF-8", op(8, append(closeFrame(1000, ""), 0xff, 0xfe)), 1002, 0, 0},
		{"close 1000", op(8, closeFrame(1000, "bye")), 1000, 0, 0},
		{"close 4000", op(8, closeFrame(4000, "app")), 1000, 0, 0},
		{"empty close", op(8, nil), 1000, 0, 0},
		{"ping of 126 bytes", op(9, make([]byte, 126)), 1002, 0, 0},
		{"fragmented ping", func(c *wstest.Conn) error { return c.WriteFrame(ws.OpPing, false, nil) }, 1002, 0, 0},
		{"continuation first", op(0, []byte("x")), 1002, 0, 0},
		{"message inside a fragmented one", func(c *wstest.Conn) error {
			if err := c.WriteFrame(ws.OpText, false, []byte(`{"op":`)); err != nil {
				return err
			}
			return c.WriteFrame(ws.OpText, true, []byte(`{}`))
		}, 1002, 0, 0},
		{"text not UTF-8", op(1, []byte{0xff, 0xfe}), 1007, 0, 0},
		{"message over -max-message", op(2, make([]byte, 70_000)), 1009, 0, 0},
		{"fragments summed over -max-message", func(c *wstest.Conn) error {
			for i := range 3 {
				if err := c.WriteFrame(pick(i == 0, ws.OpText, ws.OpContinuation), false, make([]byte, 30_000)); err != nil {
					return err
				}
			}
			return nil
		}, 1009, 0, 0},
		// Default -request-rate 100/s, burst 200: a flood of pings is cut.
		{"300 JSON pings at once", func(c *wstest.Conn) error {
			var b []byte
			for range 300 {
				b = append(b, frame(ws.OpText, []byte(`{"op":"ping"}`))...)
			}
			return write(c, b)
		}, 1008, 300, 0},
		{"300 control pings at once", func(c *wstest.Conn) error {
			var b []byte
			for range 300 {
				b = append(b, frame(ws.OpPing, nil)...)
			}
			return write(c, b)
		}, 1008, 300, 0},
		// -assembly-timeout 1s, heartbeat 10 s: an unfinished message is cut
		// by the former.
		{"message never finished", func(c *wstest.Conn) error { return c.WriteFrame(ws.OpText, false, []byte(`{"op":`)) }, 1008, 0, 4 * time.Second},
		{"message trickled a fragment at a time", func(c *wstest.Conn) error {
			if err := c.WriteFrame(ws.OpText, false, []byte(`{"op":`)); err != nil {
				return err
			}
			go func() {
				for range 20 {
					if c.WriteFrame(ws.OpContinuation, false, []byte(" ")) != nil {
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}()
			return nil
		}, 1008, 0, 4 * time.Second},
	}
	for target, addr := range targets {
		for i, tt := range frames {
			t.Run(target+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				conn := wstest.Connect(t, addr, target+"-"+strconv.Itoa(i))
				if err := tt.send(conn); err != nil {
					t.Fatalf("send: %v", err)
				}
				within := tt.within
				if within == 0 {
					within = wstest.Timeout
				}
				conn.ExpectClose(tt.code, tt.skip, within)
			})
		}
	}

	key := "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	upgrade := func(extra string) string { return wstest.UpgradeRequest("conf", extra) }
	handshakes := []struct {
		name   string
		req    string
		status int
	}{
		{"well-formed", upgrade(""), 101},
		{"two keys", upgrade("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"), 400},
		{"no key", strings.Replace(upgrade(""), key, "", 1), 400},
		{"origin not allowed", upgrade("Origin: http://evil.test\r\n"), 403},
		{"origin hidden as hop-by-hop", strings.Replace(upgrade("Origin: http://evil.test\r\n"), "Connection: Upgrade", "Connection: Upgrade, Origin", 1), 403},
		{"40 KiB of headers", upgrade("X-Big: " + strings.Repeat("a", 40<<10) + "\r\n"), 431},
		{"20,000 header lines", upgrade(strings.Repeat("X-A: b\r\n", 20000)), 431},
		{"bad client id", strings.Replace(upgrade(""), "client_id=conf", "client_id=a%2Fb", 1), 400},
	}
	for target, addr := range targets {
		for _, tt := range handshakes {
			t.Run(target+"/handshake "+tt.name, func(t *testing.T) {
				t.Parallel()
				c := wstest.DialRaw(t, addr, tt.req)
				if c.Resp.StatusCode != tt.status {
					t.Fatalf("status %d, want %d", c.Resp.StatusCode, tt.status)
				}
				if tt.status != 101 {
					c.ExpectClosed(t)
				}
			})
		}
	}
}

func pick[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}

func frame(op ws.OpCode, p []byte) []byte {
	var b strings.Builder
	f := ws.MaskFrame(ws.NewFrame(op, true, p))
	ws.WriteFrame(&b, f)
	return []byte(b.String())
}

func write(c *wstest.Conn, b []byte) error {
	c.NC.SetWriteDeadline(time.Now().Add(wstest.Timeout))
	_, err := c.NC.Write(b)
	return err
}

// op sends one final masked frame with any opcode, reserved ones included.
func op(code byte, p []byte) func(*wstest.Conn) error {
	return func(c *wstest.Conn) error { return write(c, frame(ws.OpCode(code), p)) }
}

// raw sends bytes as they are.
func raw(b ...byte) func(*wstest.Conn) error {
	return func(c *wstest.Conn) error { return write(c, b) }
}

// rsv sends a masked text frame with RSV1 set (no extension was agreed).
func rsv() func(*wstest.Conn) error {
	return func(c *wstest.Conn) error {
		b := frame(ws.OpText, []byte(`{"op":"ping"}`))
		b[0] |= 0x40
		return write(c, b)
	}
}
