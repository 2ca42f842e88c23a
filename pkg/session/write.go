package session

import (
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
)

// Writing. A connection with frames queued is handed to the Upgrader's
// writers: at most GOMAXPROCS goroutines, started when work arrives and gone
// when none is left, that take ready connections in turn and write each
// one's whole queue with one non-blocking writev. While a writer works
// through a big fan-out, later frames for the same connection pile up in its
// queue and go out together: the busier the node, the bigger each write. A
// connection whose socket does not take everything at once (a slow reader)
// leaves the shared writers for a goroutine of its own that blocks under
// the write deadline, so one slow client never holds up the others.

const (
	writerBatch = 64  // connections a writer takes from the ready queue at a time
	maxIovecs   = 512 // iovecs per writev (IOV_MAX is 1024 on Linux)
)

// writers is the ready queue and the shared writer goroutines.
type writers struct {
	wg  *sync.WaitGroup
	max int

	mu      sync.Mutex
	ready   []*Conn // connections with frames queued, in turn
	running int     // writer goroutines
}

func newWriters(wg *sync.WaitGroup) *writers {
	return &writers{wg: wg, max: runtime.GOMAXPROCS(0)}
}

// push puts c in the ready queue, starting a writer if fewer than max run.
// c.writing is set, so c is in the queue at most once.
func (w *writers) push(c *Conn) {
	w.mu.Lock()
	w.ready = append(w.ready, c)
	start := w.running < w.max
	if start {
		w.running++
	}
	w.mu.Unlock()
	if start {
		w.wg.Add(1)
		go w.run()
	}
}

// run writes ready connections until none is left.
func (w *writers) run() {
	defer w.wg.Done()
	var sc scratch
	var batch []*Conn
	for {
		w.mu.Lock()
		k := min(len(w.ready), writerBatch)
		if k == 0 {
			w.running--
			w.mu.Unlock()
			return
		}
		batch = append(batch[:0], w.ready[:k]...)
		rest := copy(w.ready, w.ready[k:])
		clear(w.ready[rest:])
		w.ready = w.ready[:rest]
		w.mu.Unlock()
		for _, c := range batch {
			if c.flush(&sc) {
				w.push(c)
			}
		}
		clear(batch)
	}
}

// scratch is a writer's reusable frame headers and iovecs.
type scratch struct {
	hdrs [][14]byte
	iov  []syscall.Iovec
	bufs net.Buffers
}

// release drops the scratch's references to frame payloads once they are
// written, so a parked writer pins no client's memory.
func (sc *scratch) release() { clear(sc.bufs[:cap(sc.bufs)]) }

// startWriter hands c to a writer if none has it. Called with c.mu held.
func (c *Conn) startWriter() {
	if c.writing {
		return
	}
	c.writing = true
	if c.raw == nil {
		c.u.deps.WG.Add(1)
		go c.writeLoop(nil, false)
		return
	}
	c.u.w.push(c)
}

// flush writes what c has queued, up to maxTake bytes, without blocking.
// It reports whether more is queued (c goes back to the ready queue, behind
// the others); otherwise c has left the writers.
func (c *Conn) flush(sc *scratch) bool {
	batch := c.take()
	if batch == nil {
		return false
	}
	closed := sc.build(batch)
	n, err := c.writev(sc)
	left := sc.after(n)
	sc.release()
	clear(batch)
	if err != nil {
		c.nc.Close() // the reader sees it and cleans up
		c.markWriterDone()
		return false
	}
	if len(left) > 0 {
		// The socket is full: this connection's writes may now block.
		c.wrote(size(left))
		c.u.deps.WG.Add(1)
		go c.writeLoop(left, closed)
		return false
	}
	if closed {
		c.wrote(0)
		c.closeWrite()
		return false
	}
	return c.wrote(0)
}

// maxTake bounds the bytes a writer takes from one connection's queue at a
// time (at least one frame): what a slow reader has in flight beyond its
// queue, and so how long a close frame waits behind data already taken.
const maxTake = 64 << 10

// take moves the oldest queued frames, up to maxTake bytes, into flight;
// it returns nil (and c leaves the writers) when none are queued.
func (c *Conn) take() []outFrame {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, n := 0, 0
	for k < len(c.queue) && (k == 0 || n+len(c.queue[k].b) <= maxTake) {
		n += len(c.queue[k].b)
		k++
	}
	if k == 0 {
		c.writing = false
		return nil
	}
	batch := c.queue[:k:k]
	if k == len(c.queue) {
		c.queue = nil
	} else {
		c.queue = c.queue[k:]
	}
	c.queued -= n
	c.out.inflight, c.out.inflightAt = n, batch[0].at
	return batch
}

// wrote records that the frames in flight were written but for left bytes
// (still in flight), giving the rest back to the node-wide budget. With
// nothing left it reports whether more is queued, and c leaves the writers
// when not.
func (c *Conn) wrote(left int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	left = min(left, c.out.inflight)
	c.u.out.release(c.out.inflight - left)
	c.out.inflight = left
	if left > 0 {
		return false
	}
	c.out.inflightAt = 0
	more := len(c.queue) > 0
	if !more {
		c.writing = false
	}
	return more
}

func size(bufs net.Buffers) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// build lays out batch as header and payload buffers and reports whether
// it ends with a close frame.
func (sc *scratch) build(batch []outFrame) bool {
	if cap(sc.hdrs) < len(batch) {
		sc.hdrs = make([][14]byte, len(batch))
	}
	sc.hdrs, sc.bufs = sc.hdrs[:len(batch)], sc.bufs[:0]
	closed := false
	for i, f := range batch {
		n := putHeader(sc.hdrs[i][:], f.op, len(f.b))
		sc.bufs = append(sc.bufs, sc.hdrs[i][:n])
		if len(f.b) > 0 {
			sc.bufs = append(sc.bufs, f.b)
		}
		closed = closed || f.op == ws.OpClose
	}
	return closed
}

// after returns copies of what is left of sc.bufs once n bytes were
// written (nil when all were): the headers live in the writer's scratch.
func (sc *scratch) after(n int) net.Buffers {
	var left net.Buffers
	for _, b := range sc.bufs {
		switch {
		case n >= len(b):
			n -= len(b)
		default:
			left = append(left, append([]byte(nil), b[n:]...))
			n = 0
		}
	}
	return left
}

// writev writes sc.bufs to c's socket without waiting, as far as it takes
// them, and returns the bytes written. EAGAIN is not an error.
func (c *Conn) writev(sc *scratch) (int, error) {
	total := 0
	for i := 0; i < len(sc.bufs); {
		k := min(len(sc.bufs)-i, maxIovecs)
		sc.iov = sc.iov[:0]
		want := 0
		for _, b := range sc.bufs[i : i+k] {
			v := syscall.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			sc.iov = append(sc.iov, v)
			want += len(b)
		}
		var n int
		var errno syscall.Errno
		err := c.raw.Write(func(fd uintptr) bool {
			for {
				r, _, e := syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&sc.iov[0])), uintptr(len(sc.iov)))
				if e == syscall.EINTR {
					continue
				}
				n, errno = int(r), e
				return true // never wait here: a full socket goes to writeLoop
			}
		})
		clear(sc.iov)
		switch {
		case err != nil:
			return total, err
		case errno == syscall.EAGAIN:
			return total, nil
		case errno != 0:
			return total, errno
		}
		total += n
		if n < want {
			return total, nil
		}
		i += k
	}
	return total, nil
}

// writeLoop writes c's frames with blocking writes under the write
// deadline, starting with left, until c's queue is empty: the path of a
// connection whose socket filled up (or that has no raw socket). Meanwhile
// the connection is a candidate for shedding (budget.go).
func (c *Conn) writeLoop(left net.Buffers, closed bool) {
	defer c.u.deps.WG.Done()
	c.u.out.setBlocked(c, true)
	defer c.u.out.setBlocked(c, false)
	var sc scratch
	for {
		if len(left) > 0 {
			c.setWriteDeadline()
			_, err := left.WriteTo(c.nc)
			sc.release()
			if err != nil {
				c.nc.Close() // the reader sees it and cleans up
				c.markWriterDone()
				return
			}
			// The shared writers' raw writes would fail once it passed.
			c.clearWriteDeadline()
		}
		more := c.wrote(0)
		if closed {
			c.closeWrite()
			return
		}
		if !more {
			return
		}
		batch := c.take()
		if batch == nil {
			return
		}
		closed = sc.build(batch)
		left = sc.bufs
		clear(batch)
	}
}

// setWriteDeadline bounds a blocking write by WriteTimeout, or sooner by
// the cut a shed connection got.
func (c *Conn) setWriteDeadline() {
	c.mu.Lock()
	defer c.mu.Unlock()
	dl := time.Now().Add(c.u.cfg.WriteTimeout)
	if !c.out.cut.IsZero() && c.out.cut.Before(dl) {
		dl = c.out.cut
	}
	c.nc.SetWriteDeadline(dl)
}

// clearWriteDeadline lifts the deadline after a blocking write, unless the
// connection was shed: its cut stays.
func (c *Conn) clearWriteDeadline() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.out.cut.IsZero() {
		c.nc.SetWriteDeadline(time.Time{})
	}
}

// closeWrite runs once the close frame went out: half-close and let the
// reader drain the peer's close frame briefly, so the peer sees our code
// rather than 1006.
func (c *Conn) closeWrite() {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	c.markWriterDone()
}

// markWriterDone stops accepting frames after the socket is finished with,
// and gives what was queued or in flight back to the budget.
func (c *Conn) markWriterDone() {
	c.mu.Lock()
	c.closing = true
	c.u.out.release(c.queued + c.out.inflight)
	c.queue, c.queued = nil, 0
	c.out.inflight, c.out.inflightAt = 0, 0
	c.writing = false
	c.mu.Unlock()
	c.kick()
}

// putHeader writes a server (unmasked, final) frame header into b.
func putHeader(b []byte, op ws.OpCode, n int) int {
	b[0] = 0x80 | byte(op)
	switch {
	case n <= 125:
		b[1] = byte(n)
		return 2
	case n <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		return 4
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
		return 10
	}
}
