package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// drainTimeout bounds how long one direction may still run after the other
// ended cleanly and its end was passed on as a half-close (the tail of a
// WebSocket close handshake).
const drainTimeout = 2 * time.Second

var errIdle = errors.New("idle timeout")

// link is one relayed connection: a client and the node it was routed to.
// Each direction runs in its own goroutine; while idle it holds no buffer.
type link struct {
	p          *Proxy
	clientID   string
	node       string
	client     net.Conn
	backend    net.Conn
	active     atomic.Int64 // unix nanoseconds of the last transfer
	halfClosed atomic.Bool  // one direction ended cleanly and was half-closed
	exited     atomic.Int32 // directions whose goroutine returned
}

func newLink(p *Proxy, clientID, nodeID string, client, backend net.Conn) *link {
	l := &link{p: p, clientID: clientID, node: nodeID, client: client, backend: backend}
	l.active.Store(time.Now().UnixNano())
	return l
}

func (l *link) toNode()   { l.run(l.client, l.backend, l.p.toNode) }
func (l *link) toClient() { l.run(l.backend, l.client, l.p.toClient) }

func (l *link) close() {
	l.client.Close()
	l.backend.Close()
}

// run copies src to dst until src ends or either side fails. A clean end is
// passed on as a half-close while the other direction drains; anything else
// closes both sides.
func (l *link) run(src, dst net.Conn, counter prometheus.Counter) {
	defer l.p.wg.Done()
	h := &half{l: l, src: src, dst: dst, bytes: counter}
	err := h.copy()
	if !errors.Is(err, io.EOF) || !l.halfClosed.CompareAndSwap(false, true) || !halfClose(dst) {
		l.close()
	}
	if l.exited.Add(1) < 2 {
		return
	}
	l.p.untrack(l)
	l.logEnd(err)
}

// logEnd is kept out of run so that the frame of a parked relay goroutine
// stays small: its stack then fits the runtime's smallest size.
func (l *link) logEnd(err error) {
	if ce := l.p.log.Check(zap.DebugLevel, "relay ended"); ce != nil {
		ce.Write(zap.String("client_id", l.clientID), zap.String("node", l.node), zap.Error(err))
	}
}

// halfClose shuts c's write side and bounds how long c may still be read.
func halfClose(c net.Conn) bool {
	cw, ok := c.(interface{ CloseWrite() error })
	return ok && cw.CloseWrite() == nil && c.SetReadDeadline(time.Now().Add(drainTimeout)) == nil
}

// half is one direction of a link.
type half struct {
	l        *link
	src, dst net.Conn
	bytes    prometheus.Counter
	wdl      time.Time // write deadline currently set on dst
	err      error     // why pumpFD stopped
}

func (h *half) copy() error {
	pump := h.pump
	if sc, ok := h.src.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			pumpFD := h.pumpFD
			pump = func() error {
				if err := raw.Read(pumpFD); err != nil {
					return err
				}
				return h.err
			}
		}
	}
	idle := h.l.p.cfg.IdleTimeout
	if idle > 0 {
		if err := h.src.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return err
		}
	}
	for {
		err := pump()
		if idle == 0 || h.l.halfClosed.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		last := time.Unix(0, h.l.active.Load())
		if time.Since(last) >= idle {
			return errIdle
		}
		if err := h.src.SetReadDeadline(last.Add(idle)); err != nil {
			return err
		}
	}
}

// pump relays with blocking reads, for a src without a file descriptor
// (TLS): it holds a buffer while waiting.
func (h *half) pump() error {
	buf := h.l.p.bufs.Get().(*[]byte)
	defer h.l.p.bufs.Put(buf)
	for {
		n, err := h.src.Read(*buf)
		if n > 0 {
			if werr := h.write((*buf)[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
	}
}

// pumpFD is the syscall.RawConn read callback that does the relaying: it
// reads without blocking into a pooled buffer and writes what it got to dst
// until src has nothing more (EAGAIN), then gives the buffer back and
// returns false, so the runtime parks the goroutine on the netpoller until
// src is readable again. Reading until EAGAIN matters: the netpoller is
// edge-triggered, and after a short read a FIN may still be pending without
// a new edge. It returns true, with h.err set, to stop.
func (h *half) pumpFD(fd uintptr) bool {
	pool := &h.l.p.bufs
	buf := pool.Get().(*[]byte)
	defer pool.Put(buf)
	for {
		n, err := syscall.Read(int(fd), *buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			h.err = os.NewSyscallError("read", err)
			return true
		case n == 0:
			h.err = io.EOF
			return true
		}
		if err := h.write((*buf)[:n]); err != nil {
			h.err = err
			return true
		}
	}
}

// write sends b to dst. The write deadline is moved forward only when less
// than half of WriteTimeout is left, which keeps timer updates off most
// writes.
func (h *half) write(b []byte) error {
	now := time.Now()
	h.l.active.Store(now.UnixNano())
	h.bytes.Add(float64(len(b)))
	if wt := h.l.p.cfg.WriteTimeout; h.wdl.Sub(now) < wt/2 {
		h.wdl = now.Add(wt)
		if err := h.dst.SetWriteDeadline(h.wdl); err != nil {
			return err
		}
	}
	_, err := h.dst.Write(b)
	return err
}
