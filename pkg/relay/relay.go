// Package relay copies bytes both ways between two connections until either
// ends: on a few epoll shards (Linux), else with a goroutine per direction.
package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/defaults"
)

// drainTimeout bounds how long one direction may still run after the other
// ended cleanly and its end was passed on as a half-close (the tail of a
// WebSocket close handshake).
const drainTimeout = 2 * time.Second

var (
	// ErrIdle ends a link that moved no byte for Config.IdleTimeout.
	ErrIdle = errors.New("idle timeout")
	// ErrClosed is returned by Start once Close was called or when the
	// owner refused the link.
	ErrClosed = errors.New("relay closed")
)

// Config tunes a Relay. A zero field means its default.
type Config struct {
	// BufferSize is the read buffer in bytes. Each poller shard reads into
	// one; a link holds one per direction only while its receiver lags (or
	// all along, when a side has no file descriptor, as with TLS).
	// Default 16 KiB: larger moves big messages in fewer syscalls, smaller
	// costs less under many concurrently lagging receivers.
	BufferSize int
	// IdleTimeout ends a link that moved no bytes in either direction for
	// this long (checked every 100 ms). Default 0 = never.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to either side. Default 10s: a peer
	// that takes longer to accept one buffer is treated as dead.
	WriteTimeout time.Duration
	// Shards is the number of epoll shards relaying polled links (Linux),
	// each a goroutine blocking in its own epoll_wait. Default: GOMAXPROCS
	// minus one, at least one. While a shard blocks, the runtime leaves its
	// P alone as long as another P is idle; with none idle, it takes the P
	// after 20 µs and wakes a thread to look for work, each time a shard
	// falls idle (with a shard per P on 2 cores, under benchproxy's echo
	// load: a thread woken some 4,000 times a second, 18 % of the relay's
	// CPU). A shard per P costs that below saturation but uses every core
	// once the relay alone saturates them.
	Shards int
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{BufferSize: 16 << 10, IdleTimeout: 0, WriteTimeout: 10 * time.Second,
		Shards: max(1, runtime.GOMAXPROCS(0)-1)}
}

// withDefaults fills zero fields with their defaults and rejects negative ones.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if err := errors.Join(
		defaults.Set("BufferSize", &c.BufferSize, d.BufferSize),
		defaults.Set("IdleTimeout", &c.IdleTimeout, d.IdleTimeout),
		defaults.Set("WriteTimeout", &c.WriteTimeout, d.WriteTimeout),
		defaults.Set("Shards", &c.Shards, d.Shards),
	); err != nil {
		return c, fmt.Errorf("relay config: %w", err)
	}
	return c, nil
}

// Link is one relayed connection.
type Link interface {
	// Close ends the link without waiting for it. It may be called more than
	// once, but only from Owner.Track's return to Owner.Untrack's call.
	Close()
}

// Owner keeps track of the links it starts; the Relay calls it.
type Owner interface {
	// Track is called once, before l moves a byte; false refuses l.
	Track(l Link) bool
	// Untrack is called once when l ended, before its sockets are closed;
	// err says why (io.EOF: both sides ended cleanly). From then on l.Close
	// must not be called.
	Untrack(l Link, err error)
}

// Relay relays links and owns them until they end; Close waits for them.
// It is safe for concurrent use.
type Relay struct {
	cfg      Config
	log      *zap.Logger
	bufs     sync.Pool // *[]byte of cfg.BufferSize, held only while bytes move
	toB, toA prometheus.Counter

	mu     sync.Mutex
	closed bool
	poller *poller        // started with the first polled link
	wg     sync.WaitGroup // live links and their goroutines
}

// New returns a Relay that counts the bytes it moves from a to b in toB and
// from b to a in toA (see Start). log may be nil.
func New(cfg Config, log *zap.Logger, toB, toA prometheus.Counter) (*Relay, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if toB == nil || toA == nil {
		return nil, errors.New("relay: nil byte counter")
	}
	if log == nil {
		log = zap.NewNop()
	}
	r := &Relay{cfg: cfg, log: log, toB: toB, toA: toA}
	r.bufs.New = func() any { b := make([]byte, cfg.BufferSize); return &b }
	return r, nil
}

// Start relays a and b until either side ends: on the shared poller when
// both have a file descriptor, else with a goroutine per direction. It calls
// o.Track first; when that refuses, or once Close was called, it closes a
// and b and returns ErrClosed. Otherwise the link owns a and b from here on.
// Deadlines left on a and b do not carry over: the relay keeps its own.
func (r *Relay) Start(a, b net.Conn, o Owner) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		a.Close()
		b.Close()
		return ErrClosed
	}
	r.wg.Add(1) // done when the link ends, or below if it never starts
	r.mu.Unlock()
	if polled, err := r.startPolled(a, b, o); polled || err != nil {
		return err
	}
	// The goroutines set the deadlines they need; none is left from the
	// caller's handshake.
	if err := errors.Join(a.SetDeadline(time.Time{}), b.SetDeadline(time.Time{})); err != nil {
		a.Close()
		b.Close()
		r.wg.Done()
		return fmt.Errorf("clear deadlines: %w", err)
	}
	c := &pipe{r: r, o: o, a: a, b: b}
	c.active.Store(time.Now().UnixNano())
	if !o.Track(c) {
		c.close()
		r.wg.Done()
		return ErrClosed
	}
	r.wg.Add(1) // the second goroutine
	go c.run(a, b, r.toB)
	go c.run(b, a, r.toA)
	return nil
}

// Close refuses new links, waits until every live link ended (their owners
// end them with Link.Close) and stops the poller.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	pl := r.poller
	r.poller = nil
	r.mu.Unlock()
	if pl != nil {
		pl.stop()
	}
}

// pipe relays a connection that cannot be polled directly (TLS, or no epoll)
// with a goroutine per direction, each holding a buffer while it waits.
type pipe struct {
	r          *Relay
	o          Owner
	a, b       net.Conn
	active     atomic.Int64 // unix nanoseconds of the last transfer
	halfClosed atomic.Bool  // one direction ended cleanly and was half-closed
	exited     atomic.Int32 // directions whose goroutine returned
}

func (c *pipe) Close() { c.close() }

func (c *pipe) close() {
	c.a.Close()
	c.b.Close()
}

// run copies src to dst until src ends or either side fails. A clean end is
// passed on as a half-close while the other direction drains; anything else
// closes both sides.
func (c *pipe) run(src, dst net.Conn, bytes prometheus.Counter) {
	defer c.r.wg.Done()
	err := c.copy(src, dst, bytes)
	if !errors.Is(err, io.EOF) || !c.halfClosed.CompareAndSwap(false, true) || !halfClose(dst) {
		c.close()
	}
	if c.exited.Add(1) < 2 {
		return
	}
	c.o.Untrack(c, err)
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
	buf := c.r.bufs.Get().(*[]byte)
	defer c.r.bufs.Put(buf)
	idle, wt := c.r.cfg.IdleTimeout, c.r.cfg.WriteTimeout
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
			return ErrIdle
		}
		if err := src.SetReadDeadline(last.Add(idle)); err != nil {
			return err
		}
	}
}
