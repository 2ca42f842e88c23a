package balancer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// verdict is what one check of a node says.
type verdict int

const (
	answered verdict = iota // GET /healthz answered 200
	missed                  // no path to the node: refused, reset, or a request its kernel never acknowledged
	slow                    // the node's kernel acknowledged the request, the process has not answered yet
)

// prober checks one node; reach calls check from one goroutine only.
type prober interface {
	check(ctx context.Context, timeout time.Duration) verdict
	close()
}

// healthProbe checks a node over one kept-alive TCP connection: it sends
// GET /healthz and waits for the answer. A request that is not answered in
// time is told apart by TCP: if the node's kernel acknowledged it, the
// path works and the process is only slow (a loaded node, or a frozen
// one: gossip tells those apart), and the same request stays outstanding
// on the same connection — a node whose accept queue overflows in a
// reconnect storm does not lose it — for up to slowLimit. Otherwise the
// path is cut.
type healthProbe struct {
	addr    string
	req     string // the GET /healthz request, built once
	conn    net.Conn
	br      *bufio.Reader
	pending bool      // a request was sent and its answer not read
	sentAt  time.Time // when the pending request was sent
}

// slowLimit bounds how long an acknowledged request may stay unanswered
// before it is a miss: a node that gossip sees but that answers nothing
// for that long is of no use to its clients either, and an answer lost to
// a cut after its request was acknowledged must not hide the cut.
const slowLimit = 2 * time.Second

func newHealthProbe(addr string) prober {
	return &healthProbe{addr: addr, req: "GET /healthz HTTP/1.1\r\nHost: " + addr + "\r\n\r\n"}
}

func (p *healthProbe) check(ctx context.Context, timeout time.Duration) verdict {
	deadline := time.Now().Add(timeout)
	if p.conn == nil {
		d := net.Dialer{Deadline: deadline}
		c, err := d.DialContext(ctx, "tcp", p.addr)
		if err != nil {
			return missed
		}
		p.conn, p.br = c, bufio.NewReaderSize(c, 512)
	}
	stop := context.AfterFunc(ctx, func() { p.conn.SetDeadline(time.Now()) })
	defer stop()
	if !p.pending {
		p.conn.SetWriteDeadline(deadline)
		if _, err := io.WriteString(p.conn, p.req); err != nil {
			p.close()
			return missed
		}
		p.pending, p.sentAt = true, time.Now()
	}
	// Wait for the first byte without consuming anything: a timeout here
	// leaves the answer to be read whole by a later check.
	p.conn.SetReadDeadline(deadline)
	if _, err := p.br.Peek(1); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil && time.Since(p.sentAt) < slowLimit && acknowledged(p.conn) {
			return slow
		}
		p.close()
		return missed
	}
	p.conn.SetReadDeadline(time.Now().Add(timeout)) // the rest of a small answer
	if err := p.readAnswer(); err != nil {
		p.close()
		return missed
	}
	return answered
}

// readAnswer reads one answer, which must be 200.
func (p *healthProbe) readAnswer() error {
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	p.pending = false
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.Close {
		p.close() // a node that closes after its answer gets a new connection
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
	}
	return nil
}

func (p *healthProbe) close() {
	if p.conn != nil {
		p.conn.Close()
	}
	p.conn, p.br, p.pending = nil, nil, false
}
