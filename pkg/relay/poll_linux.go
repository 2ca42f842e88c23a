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
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/epoll"
)

// Relaying on epoll. When both sockets of a connection have a file
// descriptor, the relay takes them over from the runtime (it duplicates the
// descriptors and closes the net.Conns: the runtime has no way to hand a
// descriptor over) and queues the link to one of a few shards. A shard's
// goroutine blocks in its own epoll_wait (one wait per wake, not nested in
// the runtime's netpoller), registers the links queued to it edge-triggered
// and relays whatever became ready with raw read and write syscalls (one
// each per message and direction). The shard's goroutine alone owns its
// links, so an event costs no lock, and an idle connection costs a link and
// no goroutine, stack or buffer.

const (
	maxEvents  = 128                    // events taken per epoll_wait
	burstReads = 16                     // reads per direction and visit before other links get a turn
	tick       = 100 * time.Millisecond // deadline check interval while a deadline is pending
	yieldEvery = 5 * time.Millisecond   // longest run without rescheduling (see shard.run)
	epollET    = 1 << 31                // syscall.EPOLLET as the uint32 the kernel reads
	wakeSlot   = -1                     // event data of the shard's eventfd
)

var errWriteTimeout = fmt.Errorf("write: %w", os.ErrDeadlineExceeded)

// poller is the set of shards. It starts with the first polled link and is
// stopped by Relay.Close once no link is left.
type poller struct {
	shards []*shard
	next   int // shard for the next link; guarded by Relay.mu
	wg     sync.WaitGroup
}

func newPoller(r *Relay) (*poller, error) {
	pl := &poller{}
	for range r.cfg.Shards {
		s, err := newShard(r)
		if err != nil {
			pl.stop()
			return nil, err
		}
		pl.shards = append(pl.shards, s)
	}
	pl.wg.Add(len(pl.shards))
	for _, s := range pl.shards {
		go s.run(&pl.wg)
	}
	return pl, nil
}

// stop ends the shards' goroutines, waits for them and closes their epoll
// instances. No link is left by then (Relay.Close waited for them).
func (pl *poller) stop() {
	for _, s := range pl.shards {
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		s.wakeup()
	}
	pl.wg.Wait()
	for _, s := range pl.shards {
		s.ep.Close()
	}
}

// shard returns the shard for the next polled link, starting the poller if
// needed; nil once the Relay is closed or when epoll is unavailable.
func (r *Relay) shard() *shard {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	if r.poller == nil {
		pl, err := newPoller(r)
		if err != nil {
			r.log.Warn("relaying with goroutines: no epoll", zap.Error(err))
			return nil
		}
		r.poller = pl
	}
	s := r.poller.shards[r.poller.next%len(r.poller.shards)]
	r.poller.next++
	return s
}

// startPolled relays a and b on a shard; it reports false, with both conns
// untouched, when they cannot be polled.
func (r *Relay) startPolled(a, b net.Conn, o Owner) (bool, error) {
	s := r.shard()
	if s == nil {
		return false, nil
	}
	fds, err := detach(a, b)
	if err != nil {
		return false, nil
	}
	l := &link{s: s, o: o, fd: fds, active: s.now()}
	if !o.Track(l) {
		closeFDs(fds)
		r.wg.Done()
		return true, ErrClosed
	}
	s.add(l)
	return true, nil
}

// detach takes the sockets of a and b over from the runtime: it duplicates
// their descriptors and closes the conns. On error it leaves both conns as
// they were.
func detach(a, b net.Conn) ([2]int, error) {
	var fds [2]int
	for i, c := range []net.Conn{a, b} {
		fd, err := dupFD(c)
		if err != nil {
			if i == 1 {
				syscall.Close(fds[0])
			}
			return fds, err
		}
		fds[i] = fd
	}
	a.Close()
	b.Close()
	return fds, nil
}

func dupFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.ErrUnsupported
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, errno := -1, syscall.Errno(0)
	err = raw.Control(func(s uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		fd, errno = int(r), e
	})
	if err != nil {
		return -1, err
	}
	if errno != 0 {
		return -1, os.NewSyscallError("fcntl", errno)
	}
	return fd, nil
}

func closeFDs(fds [2]int) {
	syscall.Close(fds[0])
	syscall.Close(fds[1])
}

// link is a relayed connection on a shard. Once added, everything below
// aborted belongs to the shard's goroutine.
type link struct {
	s       *shard
	o       Owner
	fd      [2]int      // a, b; closed by finish
	aborted atomic.Bool // Close was called
	slot    int32       // index in s.links
	done    bool        // finished
	active  int64       // shard time of the last transfer
	drainBy int64       // shard time when a half-closed link is closed; 0 if not half-closed
	dir     [2]flow     // dir[i] reads fd[i] and writes fd[1-i]
}

// flow is one direction of a link.
type flow struct {
	buf     *[]byte // pooled buffer behind pending; nil when nothing is pending
	pending []byte  // bytes read from src that dst has not taken yet
	wdl     int64   // shard time by which dst must take more of pending
	eof     bool    // src ended cleanly
	hup     bool    // src reported its peer's end or an error: read it to the end
}

// Close shuts both sockets down; the shard then sees them end and finishes
// the link. It is only called while l is tracked, so its sockets are open.
func (l *link) Close() {
	l.aborted.Store(true)
	syscall.Shutdown(l.fd[0], syscall.SHUT_RDWR)
	syscall.Shutdown(l.fd[1], syscall.SHUT_RDWR)
}

// shard relays the links registered with its epoll instance.
type shard struct {
	r     *Relay
	start time.Time       // shard time is monotonic nanoseconds since start
	ep    *epoll.Instance // its eventfd: links were queued, or stop
	epfd  int             // ep.FD

	mu       sync.Mutex
	incoming []*link // queued by add, registered by the shard's goroutine
	stopping bool

	// Owned by the shard's goroutine.
	links    []*link            // by slot; nil when free
	free     []int32            // free slots
	again    []visit            // directions cut off by burstReads
	timed    map[*link]struct{} // links with a write or drain deadline
	expired  []*link            // scratch for the idle check
	tickAt   int64              // shard time of the next deadline check; 0 if none is armed
	yieldAt  int64              // shard time of the last reschedule
	buf      *[]byte            // read buffer
	toB, toA float64            // bytes relayed since the counters were last updated
	events   [maxEvents]syscall.EpollEvent
}

type visit struct {
	l *link
	d int
}

func newShard(r *Relay) (*shard, error) {
	ep, err := epoll.New(wakeSlot, syscall.EPOLLIN|epollET)
	if err != nil {
		return nil, err
	}
	s := &shard{r: r, start: time.Now(), ep: ep, epfd: ep.FD, timed: make(map[*link]struct{})}
	s.buf = r.bufs.Get().(*[]byte)
	return s, nil
}

// add queues l for the shard's goroutine, which owns l from then on.
func (s *shard) add(l *link) {
	s.mu.Lock()
	s.incoming = append(s.incoming, l)
	first := len(s.incoming) == 1
	s.mu.Unlock()
	if first {
		s.wakeup()
	}
}

// wakeup makes the shard's epoll_wait return.
func (s *shard) wakeup() { s.ep.Wakeup() }

// register gives the shard the links queued to it; it reports false when
// the shard is to stop.
func (s *shard) register() bool {
	s.ep.Drain()
	s.mu.Lock()
	in, stop := s.incoming, s.stopping
	s.incoming = nil
	s.mu.Unlock()
	for _, l := range in {
		if n := len(s.free); n > 0 {
			l.slot, s.free = s.free[n-1], s.free[:n-1]
		} else {
			l.slot = int32(len(s.links))
			s.links = append(s.links, nil)
		}
		s.links[l.slot] = l
		// Registering reports what is ready already: nothing is missed.
		for side, fd := range l.fd {
			ev := syscall.EpollEvent{
				Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET,
				Fd:     l.slot,
				Pad:    int32(side),
			}
			if err := syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
				s.finish(l, os.NewSyscallError("epoll_ctl", err))
				break
			}
		}
	}
	return !stop
}

// run relays until the poller stops.
func (s *shard) run(wg *sync.WaitGroup) {
	defer wg.Done()
	defer s.r.bufs.Put(s.buf)
	if s.r.cfg.IdleTimeout > 0 {
		s.arm(s.now())
	}
	for {
		wait := -1
		switch {
		case len(s.again) > 0:
			wait = 0
		case s.tickAt != 0:
			wait = int(max(0, (s.tickAt-s.now()+int64(time.Millisecond)-1)/int64(time.Millisecond)))
		}
		n, err := s.wait(wait)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			s.r.log.Error("epoll wait", zap.Error(err))
			return
		}
		now := s.now()
		for _, ev := range s.events[:n] {
			if ev.Fd == wakeSlot {
				if !s.register() {
					return
				}
				continue
			}
			s.handle(ev, now)
		}
		if k := len(s.again); k > 0 {
			for i := range k {
				s.visit(s.again[i].l, s.again[i].d, now)
			}
			rest := copy(s.again, s.again[k:])
			clear(s.again[rest:])
			s.again = s.again[:rest]
		}
		if s.tickAt != 0 && now >= s.tickAt {
			s.check(now)
		}
		s.count()
		// A goroutine that was not rescheduled for 10 ms is preempted
		// (a signal) when running, or has its P taken when in a syscall
		// (a thread woken). Rescheduling first avoids both; it is cheap
		// because the goroutine is not locked to its thread.
		if now-s.yieldAt >= int64(yieldEvery) {
			s.yieldAt = now
			runtime.Gosched()
		}
	}
}

// wait returns the number of events in s.events, waiting at most timeout
// milliseconds for one (-1: without limit). It polls first with a raw
// syscall, which returns at once and leaves the runtime out, and blocks in
// epoll_wait only when nothing is ready.
func (s *shard) wait(timeout int) (int, error) {
	n, errno := rawPoll(s.epfd, s.events[:])
	switch {
	case errno == syscall.EINTR:
	case errno != 0:
		return 0, errno
	case n > 0 || timeout == 0:
		return n, nil
	}
	return syscall.EpollWait(s.epfd, s.events[:], timeout)
}

// The calls of the per-message path are raw syscalls: the sockets are
// non-blocking, so each returns at once, and the runtime's bookkeeping of a
// syscall that may block (handing the P over, taking one back) is skipped.

// rawPoll takes the ready events without waiting.
func rawPoll(epfd int, ev []syscall.EpollEvent) (int, syscall.Errno) {
	r, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&ev[0])), uintptr(len(ev)), 0, 0, 0)
	return int(r), errno
}

func rawRead(fd int, b []byte) (int, syscall.Errno) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), errno
}

func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), errno
}

// count adds the bytes relayed since the last call to the Relay's
// counters: one update per wake instead of one per read.
func (s *shard) count() {
	if s.toB > 0 {
		s.r.toB.Add(s.toB)
		s.toB = 0
	}
	if s.toA > 0 {
		s.r.toA.Add(s.toA)
		s.toA = 0
	}
}

func (s *shard) now() int64 { return int64(time.Since(s.start)) }

// handle acts on one event for socket ev.Pad of the link in slot ev.Fd: it
// is readable for the direction that reads it, writable for the one that
// writes it. A stale event only causes a visit that finds nothing to do.
func (s *shard) handle(ev syscall.EpollEvent, now int64) {
	l := s.links[ev.Fd]
	if l == nil {
		return
	}
	side := int(ev.Pad & 1)
	const ended = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR
	if ev.Events&ended != 0 {
		l.dir[side].hup = true
	}
	if ev.Events&(syscall.EPOLLIN|ended) != 0 {
		s.visit(l, side, now)
	}
	if ev.Events&(syscall.EPOLLOUT|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 && l.dir[1-side].buf != nil {
		s.visit(l, 1-side, now)
	}
}

// visit moves what is ready in direction d of l: first the bytes its dst
// had not taken, then what its src has, until src has no more, dst takes no
// more or burstReads reads were done.
func (s *shard) visit(l *link, d int, now int64) {
	h := &l.dir[d]
	if l.done || h.eof || (h.buf != nil && !s.flush(l, d, now)) {
		return
	}
	for range burstReads {
		b := *s.buf
		n, err := rawRead(l.fd[d], b)
		switch {
		case err == syscall.EAGAIN:
			return
		case err == syscall.EINTR:
			continue
		case err != 0:
			s.finish(l, os.NewSyscallError("read", err))
			return
		case n == 0:
			s.eof(l, d, now)
			return
		}
		l.active = now
		if d == 0 {
			s.toB += float64(n)
		} else {
			s.toA += float64(n)
		}
		if !s.send(l, d, b[:n], now) {
			return
		}
		// A short read drained src: later bytes, or its end, raise a new
		// edge. An end that came before the last edge was reported in it.
		if n < len(b) && !h.hup {
			return
		}
	}
	s.again = append(s.again, visit{l, d})
}

// send writes b, read in direction d, to its dst. What dst does not take
// waits in the direction, under a write deadline. It reports whether all of
// b was written.
func (s *shard) send(l *link, d int, b []byte, now int64) bool {
	rest, err := s.write(l, d, b, now)
	if err != nil {
		s.finish(l, err)
		return false
	}
	if len(rest) == 0 {
		return true
	}
	h := &l.dir[d]
	h.buf, s.buf = s.buf, s.r.bufs.Get().(*[]byte)
	h.pending = rest
	h.wdl = now + int64(s.r.cfg.WriteTimeout)
	s.watch(l, now)
	return false
}

// flush writes what direction d holds; it reports whether all went out.
func (s *shard) flush(l *link, d int, now int64) bool {
	h := &l.dir[d]
	rest, err := s.write(l, d, h.pending, now)
	if err != nil {
		s.finish(l, err)
		return false
	}
	if len(rest) > 0 {
		if len(rest) < len(h.pending) {
			h.wdl = now + int64(s.r.cfg.WriteTimeout)
		}
		h.pending = rest
		return false
	}
	s.r.bufs.Put(h.buf)
	h.buf, h.pending = nil, nil
	s.unwatch(l)
	return true
}

// write writes b to direction d's dst until dst would block and returns
// what is left.
func (s *shard) write(l *link, d int, b []byte, now int64) ([]byte, error) {
	for len(b) > 0 {
		n, err := rawWrite(l.fd[1-d], b)
		switch {
		case err == syscall.EAGAIN:
			return b, nil
		case err == syscall.EINTR:
			continue
		case err != 0:
			return nil, os.NewSyscallError("write", err)
		}
		b = b[n:]
		l.active = now
	}
	return nil, nil
}

// eof handles the clean end of direction d's src: the end is passed on as a
// half-close while the other direction drains, or, if that ended too, the
// link is finished.
func (s *shard) eof(l *link, d int, now int64) {
	l.dir[d].eof = true
	if l.dir[1-d].eof || l.aborted.Load() {
		s.finish(l, io.EOF)
		return
	}
	if err := syscall.Shutdown(l.fd[1-d], syscall.SHUT_WR); err != nil {
		s.finish(l, os.NewSyscallError("shutdown", err))
		return
	}
	l.drainBy = now + int64(drainTimeout)
	s.watch(l, now)
}

// watch has l's deadlines checked.
func (s *shard) watch(l *link, now int64) {
	s.timed[l] = struct{}{}
	s.arm(now)
}

// unwatch stops checking l's deadlines once none is pending.
func (s *shard) unwatch(l *link) {
	if l.drainBy == 0 && l.dir[0].buf == nil && l.dir[1].buf == nil {
		delete(s.timed, l)
	}
}

// arm has deadlines checked within tick.
func (s *shard) arm(now int64) {
	if s.tickAt == 0 {
		s.tickAt = now + int64(tick)
	}
}

// check finishes the links whose deadline passed and arms the next check
// while any deadline is pending.
func (s *shard) check(now int64) {
	s.tickAt = 0
	for l := range s.timed {
		switch {
		case l.drainBy != 0 && now >= l.drainBy:
			s.finish(l, os.ErrDeadlineExceeded)
		case l.dir[0].buf != nil && now >= l.dir[0].wdl, l.dir[1].buf != nil && now >= l.dir[1].wdl:
			s.finish(l, errWriteTimeout)
		}
	}
	idle := int64(s.r.cfg.IdleTimeout)
	if idle > 0 {
		for _, l := range s.links {
			if l != nil && now-l.active >= idle {
				s.expired = append(s.expired, l)
			}
		}
		for _, l := range s.expired {
			s.finish(l, ErrIdle)
		}
		clear(s.expired)
		s.expired = s.expired[:0]
	}
	if len(s.timed) > 0 || idle > 0 {
		s.arm(now)
	}
}

// finish closes l's sockets and stops tracking it.
func (s *shard) finish(l *link, err error) {
	if l.done {
		return
	}
	l.done = true
	s.links[l.slot] = nil
	s.free = append(s.free, l.slot)
	delete(s.timed, l)
	for i := range l.dir {
		if h := &l.dir[i]; h.buf != nil {
			s.r.bufs.Put(h.buf)
			h.buf, h.pending = nil, nil
		}
	}
	// Untracked first: Close shuts sockets down only while they are tracked.
	l.o.Untrack(l, err)
	// Closing a socket takes it out of the epoll set: the descriptor is
	// the last one open on it (detach closed the runtime's), so no
	// EPOLL_CTL_DEL is needed.
	for _, fd := range l.fd {
		syscall.Close(fd)
	}
	s.r.wg.Done()
}
