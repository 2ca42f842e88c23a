package outbound

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

// Writing. A connection with frames queued is handed to the Pool's
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
	max int

	mu      sync.Mutex
	ready   []Sink // connections with frames queued, in turn, from head on
	head    int    // ready[:head] were taken (and cleared)
	running int    // writer goroutines
}

func newWriters() writers { return writers{max: runtime.GOMAXPROCS(0)} }

// push puts s in the ready queue, starting a writer if fewer than max run.
// Its queue's writing is set, so s is in the ready queue at most once.
func (p *Pool) push(s Sink) {
	w := &p.w
	w.mu.Lock()
	w.ready = append(w.ready, s)
	start := w.running < w.max
	if start {
		w.running++
	}
	w.mu.Unlock()
	if start {
		p.wg.Add(1)
		go p.run()
	}
}

// run writes ready connections until none is left.
func (p *Pool) run() {
	defer p.wg.Done()
	w := &p.w
	var sc scratch
	var batch []Sink
	for {
		w.mu.Lock()
		k := min(len(w.ready)-w.head, writerBatch)
		if k == 0 {
			w.running--
			w.mu.Unlock()
			return
		}
		batch = append(batch[:0], w.ready[w.head:w.head+k]...)
		clear(w.ready[w.head : w.head+k])
		w.head += k
		// Taking from the front moves the rest only once more was taken
		// than is left, not per batch: a fan-out to n connections costs
		// O(n), not O(n²/writerBatch).
		if rest := len(w.ready) - w.head; w.head > rest {
			copy(w.ready, w.ready[w.head:])
			clear(w.ready[rest:])
			w.ready, w.head = w.ready[:rest], 0
		}
		w.mu.Unlock()
		for _, s := range batch {
			if p.flush(s, &sc) {
				p.push(s)
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

// startWriter hands s to a writer if none has it. Called with q.mu held.
func (p *Pool) startWriter(s Sink, q *Queue) {
	if q.writing {
		return
	}
	q.writing = true
	if s.Raw() == nil {
		p.wg.Add(1)
		go p.writeLoop(s, nil, false)
		return
	}
	p.push(s)
}

// flush writes what s has queued, up to MaxTake bytes, without blocking.
// It reports whether more is queued (s goes back to the ready queue, behind
// the others); otherwise s has left the writers.
func (p *Pool) flush(s Sink, sc *scratch) bool {
	q := s.Queue()
	batch := q.take()
	if batch == nil {
		return false
	}
	closed := sc.build(batch)
	n, err := writev(s.Raw(), sc)
	left := sc.after(n)
	sc.release()
	clear(batch)
	if err != nil {
		s.Conn().Close() // the reader sees it and cleans up
		p.writerDone(s)
		return false
	}
	if len(left) > 0 {
		// The socket is full: this connection's writes may now block.
		p.wrote(q, size(left))
		p.wg.Add(1)
		go p.writeLoop(s, left, closed)
		return false
	}
	if closed {
		p.wrote(q, 0)
		p.closeWrite(s)
		return false
	}
	return p.wrote(q, 0)
}

// MaxTake bounds the bytes a writer takes from one connection's queue at a
// time (at least one frame): what a slow reader has in flight beyond its
// queue, and so how long a close frame waits behind data already taken.
const MaxTake = 64 << 10

// take moves the oldest queued frames, up to MaxTake bytes, into flight;
// it returns nil (and the connection leaves the writers) when none are queued.
func (q *Queue) take() []frame {
	q.mu.Lock()
	defer q.mu.Unlock()
	k, n := 0, 0
	for k < len(q.frames) && (k == 0 || n+len(q.frames[k].b) <= MaxTake) {
		n += len(q.frames[k].b)
		k++
	}
	if k == 0 {
		q.writing = false
		return nil
	}
	batch := q.frames[:k:k]
	if k == len(q.frames) {
		q.frames = nil
	} else {
		q.frames = q.frames[k:]
	}
	q.queued -= n
	q.out.inflight, q.out.inflightAt = n, batch[0].at
	return batch
}

// wrote records that the frames in flight were written but for left bytes
// (still in flight), giving the rest back to the node-wide budget. With
// nothing left it reports whether more is queued, and the connection
// leaves the writers when not.
func (p *Pool) wrote(q *Queue, left int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	left = min(left, q.out.inflight)
	p.release(q.out.inflight - left)
	q.out.inflight = left
	if left > 0 {
		return false
	}
	q.out.inflightAt = 0
	more := len(q.frames) > 0
	if !more {
		q.writing = false
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
func (sc *scratch) build(batch []frame) bool {
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

// after returns what is left of sc.bufs once n bytes were written (nil
// when all were). The headers live in the writer's scratch and are copied;
// payloads are not written to after they are queued (one fan-out frame is
// shared by every subscriber), so they are kept as they are.
func (sc *scratch) after(n int) net.Buffers {
	var left net.Buffers
	for _, b := range sc.bufs {
		switch {
		case n >= len(b):
			n -= len(b)
		case len(b) <= len([14]byte{}): // a header, or a payload as short
			left = append(left, append([]byte(nil), b[n:]...))
			n = 0
		default:
			left = append(left, b[n:])
			n = 0
		}
	}
	return left
}

// writev writes sc.bufs to raw without waiting, as far as it takes them,
// and returns the bytes written. EAGAIN is not an error.
func writev(raw syscall.RawConn, sc *scratch) (int, error) {
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
		err := raw.Write(func(fd uintptr) bool {
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

// writeLoop writes s's frames with blocking writes under the write
// deadline, starting with left, until its queue is empty: the path of a
// connection whose socket filled up (or that has no raw socket). Meanwhile
// the connection is a candidate for shedding (budget.go).
func (p *Pool) writeLoop(s Sink, left net.Buffers, closed bool) {
	defer p.wg.Done()
	p.setBlocked(s, true)
	defer p.setBlocked(s, false)
	q, nc := s.Queue(), s.Conn()
	var sc scratch
	for {
		if len(left) > 0 {
			p.setWriteDeadline(q, nc)
			_, err := left.WriteTo(nc)
			sc.release()
			if err != nil {
				nc.Close() // the reader sees it and cleans up
				p.writerDone(s)
				return
			}
			// The shared writers' raw writes would fail once it passed.
			clearWriteDeadline(q, nc)
		}
		more := p.wrote(q, 0)
		if closed {
			p.closeWrite(s)
			return
		}
		if !more {
			return
		}
		batch := q.take()
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
func (p *Pool) setWriteDeadline(q *Queue, nc net.Conn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	dl := time.Now().Add(p.cfg.WriteTimeout)
	if q.out.cut != 0 && ClockTime(q.out.cut).Before(dl) {
		dl = ClockTime(q.out.cut)
	}
	nc.SetWriteDeadline(dl)
}

// clearWriteDeadline lifts the deadline after a blocking write, unless the
// connection was shed: its cut stays.
func clearWriteDeadline(q *Queue, nc net.Conn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.out.cut == 0 {
		nc.SetWriteDeadline(time.Time{})
	}
}

// closeWrite runs once the close frame went out: half-close and let the
// reader drain the peer's close frame briefly, so the peer sees our code
// rather than 1006.
func (p *Pool) closeWrite(s Sink) {
	nc := s.Conn()
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	nc.SetReadDeadline(time.Now().Add(time.Second))
	p.writerDone(s)
}

// writerDone stops accepting frames after the socket is finished with,
// and gives what was queued or in flight back to the budget.
func (p *Pool) writerDone(s Sink) {
	q := s.Queue()
	q.mu.Lock()
	q.closing = true
	p.release(q.queued + q.out.inflight)
	q.frames, q.queued = nil, 0
	q.out.inflight, q.out.inflightAt = 0, 0
	q.writing = false
	q.mu.Unlock()
	s.Kick()
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
