package wstest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// UpgradeRequest is a well-formed upgrade request head for client id, as
// raw bytes; extra header lines (each ending in "\r\n") go before the blank
// line. Tests make malformed requests from it.
func UpgradeRequest(id string, extra ...string) string {
	return "GET /ws?client_id=" + id + " HTTP/1.1\r\nHost: ringcast.test\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + strings.Join(extra, "") + "\r\n"
}

// Raw is a connection on which a raw handshake was sent and its answer read.
type Raw struct {
	net.Conn
	R    *bufio.Reader // what the server sent after the answer's head
	Resp *http.Response
	Body string // the body of an answer other than 101
}

// DialRaw sends raw (a request head, plus any bytes behind it) to addr and
// reads the answer; for an answer other than 101 it also reads the body.
// The connection is closed when the test ends.
func DialRaw(t testing.TB, addr, raw string) *Raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Timeout)
	if err != nil {
		t.Fatal(err)
	}
	return HandshakeRaw(t, c, raw)
}

// HandshakeRaw is DialRaw over an established connection. raw is written
// on its own goroutine: a server may refuse (431) before it read all of it.
// After a 101 all of raw must have been written.
func HandshakeRaw(t testing.TB, c net.Conn, raw string) *Raw {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(Timeout)); err != nil {
		t.Fatal(err)
	}
	written := make(chan struct{})
	var werr error
	t.Cleanup(func() {
		c.Close()
		<-written
	})
	go func() {
		defer close(written)
		_, werr = io.WriteString(c, raw)
	}()
	rc := &Raw{Conn: c, R: bufio.NewReader(c)}
	var err error
	rc.Resp, err = http.ReadResponse(rc.R, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if rc.Resp.StatusCode == http.StatusSwitchingProtocols {
		<-written
		if werr != nil {
			t.Fatalf("write request: %v", werr)
		}
	} else {
		b, err := io.ReadAll(rc.Resp.Body)
		if err != nil {
			t.Fatalf("read response body: %v", err)
		}
		rc.Body = string(b)
	}
	return rc
}

// ExpectClosed checks that the answer said Connection: close and that the
// server then closed the connection.
func (c *Raw) ExpectClosed(t testing.TB) {
	t.Helper()
	if !c.Resp.Close {
		t.Errorf("answer %d has no Connection: close", c.Resp.StatusCode)
	}
	if err := c.SetReadDeadline(time.Now().Add(Timeout)); err != nil {
		t.Fatal(err)
	}
	if n, err := c.R.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after answer %d: read = %d, %v, want EOF", c.Resp.StatusCode, n, err)
	}
}
