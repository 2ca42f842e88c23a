// Package wstest is the raw WebSocket client of ringcast's tests: it sends upgrades and
// frames as given (malformed ones too) and parses what the server sends.
package wstest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/ringcast/ringcast/pkg/wire"
)

// Timeout bounds every socket operation that takes no explicit timeout.
const Timeout = 5 * time.Second

// Conn is one client connection. It parses frames itself: wsutil refuses
// close codes 1012/1013. Use it from the test goroutine (it calls Fatalf).
type Conn struct {
	T  testing.TB
	ID string   // the client id it dialled with
	NC net.Conn // the socket, for writes the helpers do not cover
	r  io.Reader
}

// URL is the WebSocket URL of the /ws endpoint at addr for client id.
func URL(addr, id string) string {
	return "ws://" + addr + "/ws?client_id=" + url.QueryEscape(id)
}

// Dial opens a WebSocket to u with extra handshake headers (may be nil).
// The connection is closed when the test ends.
func Dial(t testing.TB, u, id string, hdr http.Header) (*Conn, error) {
	t.Helper()
	nc, r, err := Open(u, hdr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { nc.Close() })
	return &Conn{T: t, ID: id, NC: nc, r: r}, nil
}

// Open dials the WebSocket u with extra handshake headers (may be nil)
// within Timeout; r reads the socket, starting with whatever the server
// sent right behind its 101. For programs as well as tests.
func Open(u string, hdr http.Header) (nc net.Conn, r io.Reader, err error) {
	d := ws.Dialer{Timeout: Timeout}
	if hdr != nil {
		d.Header = ws.HandshakeHeaderHTTP(hdr)
	}
	nc, br, _, err := d.Dial(context.Background(), u)
	if err != nil {
		return nil, nil, err
	}
	if br != nil {
		return nc, io.MultiReader(br, nc), nil
	}
	return nc, nc, nil
}

// Connect dials /ws at addr as id and reads the welcome.
func Connect(t testing.TB, addr, id string) *Conn {
	t.Helper()
	c, err := Dial(t, URL(addr, id), id, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", id, err)
	}
	c.Expect(wire.OpWelcome)
	return c
}

// Send writes s as one masked text frame.
func (c *Conn) Send(s string) {
	c.T.Helper()
	c.NC.SetWriteDeadline(time.Now().Add(Timeout))
	if err := wsutil.WriteClientText(c.NC, []byte(s)); err != nil {
		c.T.Fatalf("%s: write %s: %v", c.ID, s, err)
	}
}

// WriteFrame writes one masked frame.
func (c *Conn) WriteFrame(op ws.OpCode, fin bool, p []byte) error {
	c.NC.SetWriteDeadline(time.Now().Add(Timeout))
	return ws.WriteFrame(c.NC, ws.MaskFrame(ws.NewFrame(op, fin, p)))
}

// Event is one server frame: a protocol frame, a close, or a pong.
type Event struct {
	Frame     wire.Frame
	Raw       []byte
	Closed    bool
	CloseCode int
	Pong      []byte
}

// Read reads the next server frame within timeout.
func (c *Conn) Read(timeout time.Duration) (Event, error) { return ReadEvent(c.NC, c.r, timeout) }

// ReadEvent reads the next server frame from r, which reads nc, within
// timeout: a frame that is masked, fragmented, of another opcode or not
// JSON is an error. For programs as well as tests.
func ReadEvent(nc net.Conn, r io.Reader, timeout time.Duration) (Event, error) {
	nc.SetReadDeadline(time.Now().Add(timeout))
	h, err := ws.ReadHeader(r)
	if err != nil {
		return Event{}, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		return Event{}, err
	}
	if h.Masked {
		return Event{}, errors.New("server frame is masked")
	}
	if !h.Fin {
		return Event{}, errors.New("server sent a fragment")
	}
	switch h.OpCode {
	case ws.OpClose:
		e := Event{Closed: true, CloseCode: 1005}
		if len(p) >= 2 {
			e.CloseCode = int(binary.BigEndian.Uint16(p))
		}
		return e, nil
	case ws.OpPong:
		return Event{Pong: p}, nil
	case ws.OpText:
		var f wire.Frame
		if err := json.Unmarshal(p, &f); err != nil {
			return Event{}, fmt.Errorf("server sent invalid JSON %q: %w", p, err)
		}
		return Event{Frame: f, Raw: p}, nil
	default:
		return Event{}, fmt.Errorf("server sent opcode %v", h.OpCode)
	}
}

// Expect reads the next frame and requires its op.
func (c *Conn) Expect(op string) wire.Frame {
	c.T.Helper()
	e, err := c.Read(Timeout)
	switch {
	case err != nil:
		c.T.Fatalf("%s: waiting for %s: %v", c.ID, op, err)
	case e.Closed:
		c.T.Fatalf("%s: waiting for %s: closed with %d", c.ID, op, e.CloseCode)
	case e.Frame.Op != op:
		c.T.Fatalf("%s: got %s, want op %s", c.ID, e.Raw, op)
	}
	return e.Frame
}

// ExpectClose reads until a close frame, skipping up to skip data frames,
// and requires its code; then it answers the close and hangs up.
func (c *Conn) ExpectClose(code int, skip int, timeout time.Duration) {
	c.T.Helper()
	for i := 0; ; i++ {
		e, err := c.Read(timeout)
		if err != nil {
			c.T.Fatalf("%s: waiting for close %d: %v", c.ID, code, err)
		}
		if e.Closed {
			if e.CloseCode != code {
				c.T.Fatalf("%s: close code %d, want %d", c.ID, e.CloseCode, code)
			}
			c.WriteFrame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
			c.NC.Close()
			return
		}
		if i >= skip {
			c.T.Fatalf("%s: got %s, want close %d", c.ID, e.Raw, code)
		}
	}
}

// RoundTrip pings with a fresh id and requires the pong to be next: every
// reply to what was sent before has arrived, and the connection is open.
func (c *Conn) RoundTrip() {
	c.T.Helper()
	c.Send(`{"op":"ping","id":"rt"}`)
	if f := c.Expect(wire.OpPong); string(f.ID) != `"rt"` {
		c.T.Fatalf("%s: pong id %s, want \"rt\"", c.ID, f.ID)
	}
}

// SendFrame writes f as one masked text frame.
func (c *Conn) SendFrame(f wire.Frame) {
	c.T.Helper()
	b, err := json.Marshal(f)
	if err != nil {
		c.T.Fatalf("%s: encode %+v: %v", c.ID, f, err)
	}
	c.Send(string(b))
}

// Next reads the next protocol frame, whatever its op; a close or an error
// fails the test.
func (c *Conn) Next() wire.Frame {
	c.T.Helper()
	e, err := c.Read(Timeout)
	switch {
	case err != nil:
		c.T.Fatalf("%s: read: %v", c.ID, err)
	case e.Closed:
		c.T.Fatalf("%s: closed with %d", c.ID, e.CloseCode)
	case e.Pong != nil:
		c.T.Fatalf("%s: got a pong control frame, want a protocol frame", c.ID)
	}
	return e.Frame
}
