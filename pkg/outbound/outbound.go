// Package outbound writes server frames to client sockets: a bounded queue per
// connection, shared coalescing writers, and the node-wide byte budget that sheds slow consumers.
package outbound

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// Config holds the limits of a Pool. Every field is required except
// SendBuffer; session.Config documents each with its default.
type Config struct {
	SendQueue      int           // frames queued before the connection is closed 4008
	SendQueueBytes int           // bytes queued before the connection is closed 4008
	MaxOutbound    int64         // bytes queued or in flight node-wide (budget.go)
	MaxLag         time.Duration // a connection whose oldest unwritten frame is older is closed 4008
	WriteTimeout   time.Duration // bounds a blocking write
	CloseGrace     time.Duration // bounds the writes of a connection closed as a slow consumer
	SendBuffer     int           // SO_SNDBUF of every socket, bytes; <= 0 = the kernel's
}

// Sink is a client connection as a Pool sees it. Its methods must not block.
type Sink interface {
	Queue() *Queue        // its frames: a Queue kept in the connection
	Conn() net.Conn       // its socket
	Raw() syscall.RawConn // the socket's descriptor; nil = every write blocks, on a goroutine
	Kick()                // called, with no lock held, once a close frame is queued or the socket is finished with
}

// Queue is one connection's frames that are queued or being written. The
// zero value is ready; it lives in the connection and is only used through
// the Pool and its own methods.
type Queue struct {
	mu       sync.Mutex
	frames   []frame
	queued   int      // bytes in frames
	out      outState // bytes in flight, for the node-wide budget (budget.go)
	writing  bool     // the connection is with a writer: queued for one, or being written
	closing  bool     // a close frame is queued: nothing more is accepted
	closedAt int64    // Clock() when closing was set
}

type frame struct {
	op ws.OpCode
	b  []byte
	at int64 // Clock() when queued
}

// Closing reports whether a close frame is queued, and since when.
func (q *Queue) Closing() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return ClockTime(q.closedAt), q.closing
}

// Locked runs f under the queue's lock, telling it whether a close frame
// is queued (or Finish ran): the owner's state that f guards, Finish's f
// sees consistently.
func (q *Queue) Locked(f func(closing bool)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	f(q.closing)
}

// Finish stops accepting frames for good and runs f under the queue's lock.
func (q *Queue) Finish(f func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closing = true
	f()
}

// Pool writes the frames of a node's connections and holds their
// node-wide budget. Safe for concurrent use.
type Pool struct {
	cfg  Config
	wg   *sync.WaitGroup // counts the writer and shedding goroutines
	slow *prometheus.CounterVec
	w    writers
	b    budget
}

// New registers the outbound metrics with reg; wg counts every goroutine
// the Pool starts, and its owner waits on it.
func New(cfg Config, wg *sync.WaitGroup, reg prometheus.Registerer) (*Pool, error) {
	p := &Pool{cfg: cfg, wg: wg, w: newWriters(), b: budget{max: cfg.MaxOutbound, blocked: map[Sink]struct{}{}}}
	p.slow = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ringcast_node_slow_consumers_total",
		Help: "Connections closed 4008 as slow consumers, by reason: queue (send queue full), lag (oldest unwritten frame older than -max-lag), budget (node over -max-outbound).",
	}, []string{"reason"})
	for _, r := range []string{reasonQueue, reasonLag, reasonBudget} {
		p.slow.WithLabelValues(r)
	}
	for _, c := range append(p.b.collectors(), p.slow) {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("outbound: register metrics: %w", err)
		}
	}
	return p, nil
}

// Tune bounds nc's kernel send buffer by SendBuffer, so that a slow link's
// backlog stays in its Queue, where MaxLag sees it.
func (p *Pool) Tune(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok && p.cfg.SendBuffer > 0 {
		tc.SetWriteBuffer(p.cfg.SendBuffer)
	}
}

// Overloaded reports whether the node is over its outbound budget and
// shedding: new connections and publishes should be refused meanwhile.
func (p *Pool) Overloaded() bool { return p.b.over.Load() }

// Force sets the overload state as a shedding pass does, for tests of what
// refuses work meanwhile.
func (p *Pool) Force(over bool) { p.b.over.Store(over) }

// MaxOutbound is the node-wide outbound budget in effect, in bytes.
func (p *Pool) MaxOutbound() int64 { return p.b.max }

// Close queues a close frame for s (never refused, counted in the budget)
// and stops accepting frames; the socket is shut once it is written (or
// the write times out). It reports false, doing nothing, when s was
// closing already.
func (p *Pool) Close(s Sink, code int, reason string) bool {
	q := s.Queue()
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return false
	}
	p.queueClose(s, q, code, reason)
	q.mu.Unlock()
	s.Kick()
	return true
}

// budget is the node-wide byte count (budget.go).
type budget struct {
	max   int64
	bytes atomic.Int64 // queued and in flight, over every connection
	over  atomic.Bool  // shedding: passed max, not yet back under 3/4 of it

	mu      sync.Mutex
	blocked map[Sink]struct{} // connections whose socket is full: the shedding candidates
}
