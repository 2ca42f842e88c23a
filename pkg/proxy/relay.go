package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// drainTimeout bounds how long one direction may still run after the other
// ended cleanly and its end was passed on as a half-close (the tail of a
// WebSocket close handshake).
const drainTimeout = 2 * time.Second

var (
	errIdle   = errors.New("idle timeout")
	errClosed = errors.New("proxy closed")
)

// relay is one relayed connection as the Proxy tracks it.
type relay interface {
	// close ends the relay without waiting for it; it may be called more
	// than once, and only while the relay is tracked.
	close()
}

// startRelay relays client to node until either side ends: on the shared
// poller when both have a file descriptor, else with a goroutine per
// direction. After an error the caller closes client and node.
// The connection counts against the admission slot of src until it ends.
func (p *Proxy) startRelay(src netip.Addr, clientID, nodeID string, client, node net.Conn) error {
	// The id is cut from the request line: a copy lets that be collected.
	clientID = strings.Clone(clientID)
	if polled, err := p.startPolled(src, clientID, nodeID, client, node); polled || err != nil {
		return err
	}
	c := &pipe{p: p, clientID: clientID, node: nodeID, client: client, backend: node}
	c.active.Store(time.Now().UnixNano())
	if !p.track(nodeID, c, src) {
		return errClosed
	}
	p.wg.Add(1) // track counted the first goroutine
	go c.run(client, node, p.toNode)
	go c.run(node, client, p.toClient)
	return nil
}

func logEnd(log *zap.Logger, clientID, node string, err error) {
	if ce := log.Check(zap.DebugLevel, "relay ended"); ce != nil {
		ce.Write(zap.String("client_id", clientID), zap.String("node", node), zap.Error(err))
	}
}

// pipe relays a connection that cannot be polled directly (TLS, or no epoll)
// with a goroutine per direction, each holding a buffer while it waits.
type pipe struct {
	p               *Proxy
	clientID, node  string
	client, backend net.Conn
	active          atomic.Int64 // unix nanoseconds of the last transfer
	halfClosed      atomic.Bool  // one direction ended cleanly and was half-closed
	exited          atomic.Int32 // directions whose goroutine returned
}

func (c *pipe) close() {
	c.client.Close()
	c.backend.Close()
}

// run copies src to dst until src ends or either side fails. A clean end is
// passed on as a half-close while the other direction drains; anything else
// closes both sides.
func (c *pipe) run(src, dst net.Conn, bytes prometheus.Counter) {
	defer c.p.wg.Done()
	err := c.copy(src, dst, bytes)
	if !errors.Is(err, io.EOF) || !c.halfClosed.CompareAndSwap(false, true) || !halfClose(dst) {
		c.close()
	}
	if c.exited.Add(1) < 2 {
		return
	}
	c.p.untrack(c.node, c)
	logEnd(c.p.log, c.clientID, c.node, err)
}

// halfClose shuts c's write side and bounds how long c may still be read.
func halfClose(c net.Conn) bool {
	cw, ok := c.(interface{ CloseWrite() error })
	return ok && cw.CloseWrite() == nil && c.SetReadDeadline(time.Now().Add(drainTimeout)) == nil
}

// copy relays until src ends, a write fails or the link was idle for
// IdleTimeout. The write deadline is moved forward only when less than half
// of WriteTimeout is left, which keeps timer updates off most writes.
func (c *pipe) copy(src, dst net.Conn, bytes prometheus.Counter) error {
	buf := c.p.bufs.Get().(*[]byte)
	defer c.p.bufs.Put(buf)
	idle, wt := c.p.cfg.IdleTimeout, c.p.cfg.WriteTimeout
	if idle > 0 {
		if err := src.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return err
		}
	}
	var wdl time.Time
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			now := time.Now()
			c.active.Store(now.UnixNano())
			bytes.Add(float64(n))
			if wdl.Sub(now) < wt/2 {
				wdl = now.Add(wt)
				if err := dst.SetWriteDeadline(wdl); err != nil {
					return err
				}
			}
			if _, err := dst.Write((*buf)[:n]); err != nil {
				return err
			}
		}
		if err == nil {
			continue
		}
		if idle == 0 || c.halfClosed.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		last := time.Unix(0, c.active.Load())
		if time.Since(last) >= idle {
			return errIdle
		}
		if err := src.SetReadDeadline(last.Add(idle)); err != nil {
			return err
		}
	}
}
