package proxy

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

	"go.uber.org/zap"
)

// Relaying on epoll. When both sockets of a connection have a file
// descriptor, the relay takes them over from the runtime (it duplicates the
// descriptors and closes the net.Conns) and registers them edge-triggered
// with one of a few shards. A shard's goroutine waits for its epoll instance
// through the runtime's netpoller and relays whatever became ready, so an
// idle connection costs a link and no goroutine, stack or buffer.

const (
	maxEvents  = 128                    // events taken per epoll_wait
	burstReads = 16                     // reads per direction and visit before other links get a turn
	tick       = 100 * time.Millisecond // deadline check interval while a deadline is pending
	epollET    = 1 << 31                // syscall.EPOLLET as the uint32 the kernel reads
)

var errWriteTimeout = fmt.Errorf("write: %w", os.ErrDeadlineExceeded)

// poller is the set of shards. It starts with the first polled link and is
// stopped by Proxy.Close once no link is left.
type poller struct {
	shards []*shard
	next   int // shard for the next link; guarded by Proxy.mu
	wg     sync.WaitGroup
}

func newPoller(p *Proxy) (*poller, error) {
	pl := &poller{}
	for range runtime.GOMAXPROCS(0) {
		s, err := newShard(p)
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

// stop closes the epoll instances and waits for the shards' goroutines.
func (pl *poller) stop() {
	for _, s := range pl.shards {
		s.ep.Close()
	}
	pl.wg.Wait()
}

// shard returns the shard for the next polled link, starting the poller if
// needed; nil once the Proxy is closed or when epoll is unavailable.
func (p *Proxy) shard() *shard {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if p.poller == nil {
		pl, err := newPoller(p)
		if err != nil {
			p.log.Warn("relaying with goroutines: no epoll", zap.Error(err))
			return nil
		}
		p.poller = pl
	}
	s := p.poller.shards[p.poller.next%len(p.poller.shards)]
	p.poller.next++
	return s
}

// startPolled relays client and node on a shard; it reports false, with
// both conns untouched, when they cannot be polled.
func (p *Proxy) startPolled(clientID, nodeID string, client, node net.Conn) (bool, error) {
	s := p.shard()
	if s == nil {
		return false, nil
	}
	fds, err := detach(client, node)
	if err != nil {
		return false, nil
	}
	l := &link{s: s, clientID: clientID, node: nodeID, fd: fds, active: s.now()}
	if !p.track(nodeID, l) {
		closeFDs(fds)
		return true, errClosed
	}
	if err := s.add(l); err != nil {
		p.untrack(nodeID, l)
		closeFDs(fds)
		p.wg.Done()
		return true, fmt.Errorf("poll relay: %w", err)
	}
	return true, nil
}

// detach takes the sockets of client and node over from the runtime: it
// duplicates their descriptors and closes the conns. On error it leaves
// both conns as they were.
func detach(client, node net.Conn) ([2]int, error) {
	var fds [2]int
	for i, c := range []net.Conn{client, node} {
		fd, err := dupFD(c)
		if err != nil {
			if i == 1 {
				syscall.Close(fds[0])
			}
			return fds, err
		}
		fds[i] = fd
	}
	client.Close()
	node.Close()
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
	s        *shard
	clientID string
	node     string
	fd       [2]int      // client, node; closed by finish
	aborted  atomic.Bool // close was called
	slot     int32       // index in s.links
	done     bool        // finished
	active   int64       // shard time of the last transfer
	drainBy  int64       // shard time when a half-closed link is closed; 0 if not half-closed
	dir      [2]flow     // dir[i] reads fd[i] and writes fd[1-i]
}

// flow is one direction of a link.
type flow struct {
	buf     *[]byte // pooled buffer behind pending; nil when nothing is pending
	pending []byte  // bytes read from src that dst has not taken yet
	wdl     int64   // shard time by which dst must take more of pending
	eof     bool    // src ended cleanly
	hup     bool    // src reported its peer's end or an error: read it to the end
}

// close shuts both sockets down; the shard then sees them end and finishes
// the link. It is only called while l is tracked, so its sockets are open.
func (l *link) close() {
	l.aborted.Store(true)
	syscall.Shutdown(l.fd[0], syscall.SHUT_RDWR)
	syscall.Shutdown(l.fd[1], syscall.SHUT_RDWR)
}

// shard relays the links registered with its epoll instance.
type shard struct {
	p       *Proxy
	start   time.Time // shard time is monotonic nanoseconds since start
	epfd    int
	ep      *os.File // epfd, waited for through the runtime's netpoller
	raw     syscall.RawConn
	drainFn func(uintptr) bool

	mu    sync.Mutex
	links []*link // by slot; nil when free
	free  []int32 // free slots

	// Owned by the shard's goroutine.
	again   []visit            // directions cut off by burstReads
	timed   map[*link]struct{} // links with a write or drain deadline
	expired []*link            // scratch for the idle check
	tickAt  int64              // shard time of the next deadline check; 0 if none is armed
	buf     *[]byte            // read buffer
	events  [maxEvents]syscall.EpollEvent
}

type visit struct {
	l *link
	d int
}

func newShard(p *Proxy) (*shard, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile registers it with the netpoller.
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("setnonblock", err)
	}
	s := &shard{p: p, start: time.Now(), epfd: fd, ep: os.NewFile(uintptr(fd), "epoll"), timed: make(map[*link]struct{})}
	if s.raw, err = s.ep.SyscallConn(); err == nil {
		err = s.ep.SetReadDeadline(time.Time{}) // fails if the netpoller did not take it
	}
	if err != nil {
		s.ep.Close()
		return nil, fmt.Errorf("poll epoll instance: %w", err)
	}
	s.drainFn = s.drain
	s.buf = p.bufs.Get().(*[]byte)
	return s, nil
}

// add registers l's sockets with the shard, whose goroutine owns l from
// then on. On error no event refers to l.
func (s *shard) add(l *link) error {
	s.mu.Lock()
	if n := len(s.free); n > 0 {
		l.slot, s.free = s.free[n-1], s.free[:n-1]
	} else {
		l.slot = int32(len(s.links))
		s.links = append(s.links, nil)
	}
	s.mu.Unlock()
	ev := [2]syscall.EpollEvent{}
	for side, fd := range l.fd {
		ev[side] = syscall.EpollEvent{
			Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET,
			Fd:     l.slot,
			Pad:    int32(side),
		}
		if err := syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_ADD, fd, &ev[side]); err != nil {
			if side == 1 {
				syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_DEL, l.fd[0], nil)
			}
			s.mu.Lock()
			s.free = append(s.free, l.slot)
			s.mu.Unlock()
			return os.NewSyscallError("epoll_ctl", err)
		}
	}
	s.mu.Lock()
	s.links[l.slot] = l
	s.mu.Unlock()
	// Events taken before l was visible were dropped: have the kernel report
	// what is ready now once more.
	for side, fd := range l.fd {
		if err := syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_MOD, fd, &ev[side]); err != nil {
			l.close()
		}
	}
	return nil
}

// run relays until the epoll instance is closed.
func (s *shard) run(wg *sync.WaitGroup) {
	defer wg.Done()
	defer s.p.bufs.Put(s.buf)
	if s.p.cfg.IdleTimeout > 0 {
		s.arm(s.now())
	}
	for {
		if err := s.raw.Read(s.drainFn); !errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		s.check(s.now())
	}
}

func (s *shard) now() int64 { return int64(time.Since(s.start)) }

// drain is the epoll instance's read callback: it handles events until none
// are left, then returns false to park until the instance is readable.
func (s *shard) drain(fd uintptr) bool {
	for {
		n, err := syscall.EpollWait(int(fd), s.events[:], 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			s.p.log.Error("epoll wait", zap.Error(err))
			return false
		}
		now := s.now()
		for _, ev := range s.events[:n] {
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
		// Fewer events than asked for: the instance was drained, and any
		// event since has made it readable again.
		if n < len(s.events) && len(s.again) == 0 {
			return false
		}
	}
}

// handle acts on one event for socket ev.Pad of the link in slot ev.Fd: it
// is readable for the direction that reads it, writable for the one that
// writes it. A stale event only causes a visit that finds nothing to do.
func (s *shard) handle(ev syscall.EpollEvent, now int64) {
	s.mu.Lock()
	l := s.links[ev.Fd]
	s.mu.Unlock()
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
		n, err := syscall.Read(l.fd[d], b)
		switch {
		case err == syscall.EAGAIN:
			return
		case err == syscall.EINTR:
			continue
		case err != nil:
			s.finish(l, os.NewSyscallError("read", err))
			return
		case n == 0:
			s.eof(l, d, now)
			return
		}
		l.active = now
		if d == 0 {
			s.p.toNode.Add(float64(n))
		} else {
			s.p.toClient.Add(float64(n))
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
	h.buf, s.buf = s.buf, s.p.bufs.Get().(*[]byte)
	h.pending = rest
	h.wdl = now + int64(s.p.cfg.WriteTimeout)
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
			h.wdl = now + int64(s.p.cfg.WriteTimeout)
		}
		h.pending = rest
		return false
	}
	s.p.bufs.Put(h.buf)
	h.buf, h.pending = nil, nil
	s.unwatch(l)
	return true
}

// write writes b to direction d's dst until dst would block and returns
// what is left.
func (s *shard) write(l *link, d int, b []byte, now int64) ([]byte, error) {
	for len(b) > 0 {
		n, err := syscall.Write(l.fd[1-d], b)
		switch {
		case err == syscall.EAGAIN:
			return b, nil
		case err == syscall.EINTR:
			continue
		case err != nil:
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
		s.ep.SetReadDeadline(s.start.Add(time.Duration(s.tickAt)))
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
	idle := int64(s.p.cfg.IdleTimeout)
	if idle > 0 {
		s.mu.Lock()
		for _, l := range s.links {
			if l != nil && now-l.active >= idle {
				s.expired = append(s.expired, l)
			}
		}
		s.mu.Unlock()
		for _, l := range s.expired {
			s.finish(l, errIdle)
		}
		clear(s.expired)
		s.expired = s.expired[:0]
	}
	if len(s.timed) > 0 || idle > 0 {
		s.arm(now)
	} else {
		s.ep.SetReadDeadline(time.Time{})
	}
}

// finish closes l's sockets and stops tracking it.
func (s *shard) finish(l *link, err error) {
	if l.done {
		return
	}
	l.done = true
	s.mu.Lock()
	s.links[l.slot] = nil
	s.free = append(s.free, l.slot)
	s.mu.Unlock()
	delete(s.timed, l)
	for i := range l.dir {
		if h := &l.dir[i]; h.buf != nil {
			s.p.bufs.Put(h.buf)
			h.buf, h.pending = nil, nil
		}
	}
	// Untracked first: close shuts sockets down only while they are tracked.
	s.p.untrack(l.node, l)
	for _, fd := range l.fd {
		syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
		syscall.Close(fd)
	}
	logEnd(s.p.log, l.clientID, l.node, err)
	s.p.wg.Done()
}
