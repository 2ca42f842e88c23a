package park

import (
	"runtime"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/epoll"
)

// Idle connections on epoll. A connection with nothing left to read is
// parked on one of a few pollers instead of a goroutine of its own: its
// socket is armed one-shot in the poller's epoll instance (the runtime keeps
// the descriptor, and its own registration, for the reads and writes) and
// its deadline sits in the poller's slot table. When bytes (or the peer's
// end) arrive, the poller calls the connection's Readable, which hands it to
// a fresh goroutine that reads and handles frames as the goroutine path
// does, then parks it again. So an idle connection costs a slot and no
// goroutine, stack, timer or buffer. Each poller's goroutine runs while it
// has connections parked.
//
// Deadlines: every tick the poller sweeps its slots and calls Late on each
// connection past its deadline, which closes it as the goroutine path's
// read deadline would. Whatever else ends a parked connection (a queued
// close frame, a failed write) calls Kick, which takes it off its poller
// back to a goroutine; nothing closes the socket of a parked connection.

const (
	pollEvents = 128 // events taken per epoll_wait
	wakeData   = -1  // event data of a poller's eventfd
	oneShot    = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT
)

// Spot is a connection's place on a poller. The zero value parks nowhere:
// Park reports false.
type Spot struct {
	p    *poller // set by Set.Assign
	slot int32   // guarded by p.mu, as gen: c's last parking
	gen  uint32
}

// Set is the pollers connections are spread over.
type Set struct {
	ps   []*poller
	mu   sync.Mutex
	next int
}

// New returns GOMAXPROCS pollers for connections whose deadline is timeout
// after they park. wg counts the pollers' goroutines; log reports when
// epoll fails (connections then wait on goroutines).
func New(timeout time.Duration, wg *sync.WaitGroup, log *zap.Logger) *Set {
	// Sweeping 16 times per timeout closes a silent link at most ~6 % late.
	tick := min(max(timeout/16, 5*time.Millisecond), time.Second)
	ps := &Set{}
	for range runtime.GOMAXPROCS(0) {
		ps.ps = append(ps.ps, &poller{timeout: timeout, tick: tick, wg: wg, log: log})
	}
	return ps
}

// Pollers is the number of pollers, each with at most one goroutine.
func (ps *Set) Pollers() int { return len(ps.ps) }

// Assign gives a new connection's spot its poller.
func (ps *Set) Assign(sp *Spot) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.next++
	sp.p = ps.ps[ps.next%len(ps.ps)]
}

// poller is one epoll instance, its goroutine and the connections parked on it.
type poller struct {
	timeout time.Duration // a parked connection's deadline, from when it parks
	tick    time.Duration // deadline sweep interval
	wg      *sync.WaitGroup
	log     *zap.Logger

	mu    sync.Mutex
	ep    *epoll.Instance // the running instance; nil while no connection is parked
	slots []slot          // by slot number; c == nil when free
	free  []int32
	n     int    // connections parked
	gen   uint32 // the last parking's number: stale events carry older ones
	// warned is when a failed epoll instance was last logged.
	warned time.Time
}

// slot is a parked connection and its deadline. Its parking's number is
// the one in c's Spot: both are set together, under p.mu, and a slot holds
// c only until c is taken, so they match while it does.
type slot struct {
	c  Conn
	by int64 // unix nanoseconds: the deadline
}

// Park parks c until its socket is readable or its deadline passes. It
// reports false, with c untouched, when c cannot be parked (the caller waits
// on a goroutine instead): its spot has no poller, or epoll failed. Only c's
// reader calls it, between messages; a close queued meanwhile finds nothing
// to Kick, so the caller checks for one after a true.
func Park(c Conn) bool {
	sp := c.Spot()
	p := sp.p
	if p == nil {
		return false
	}
	by := time.Now().Add(p.timeout).UnixNano()
	// The runtime's read deadline would run a timer per connection: the
	// sweep keeps the deadline while c is parked.
	c.Conn().SetReadDeadline(time.Time{})
	p.mu.Lock()
	if p.ep == nil {
		ep, err := epoll.New(wakeData, syscall.EPOLLIN)
		if err != nil {
			// Out of fds, most likely: this connection waits on a
			// goroutine, and the next one tries again.
			warn := time.Since(p.warned) > time.Minute
			if warn {
				p.warned = time.Now()
			}
			p.mu.Unlock()
			if warn {
				p.log.Warn("idle connections wait on goroutines: no epoll instance (logged once a minute)", zap.Error(err))
			}
			return false
		}
		p.ep = ep
		p.wg.Add(1)
		go p.run(ep)
	}
	s := p.alloc()
	p.gen++
	p.slots[s] = slot{c: c, by: by}
	sp.slot, sp.gen = s, p.gen
	if err := p.arm(c, sp); err != nil {
		p.slots[s] = slot{}
		p.free = append(p.free, s)
		if p.n == 0 {
			p.ep.Wakeup() // nothing parked: let the instance stop
		}
		p.mu.Unlock()
		return false
	}
	p.n++
	p.mu.Unlock()
	return true
}

// arm re-arms c's socket one-shot, or registers it when this instance
// does not have it yet (its first parking here: the connection keeps no
// note of it). Adding or re-arming reports data that is there already, so
// nothing that arrived before is missed. Called with p.mu held.
func (p *poller) arm(c Conn, sp *Spot) error {
	var errno error
	err := c.Raw().Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: oneShot, Fd: sp.slot, Pad: int32(sp.gen)}
		errno = syscall.EpollCtl(p.ep.FD, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if errno == syscall.ENOENT {
			errno = syscall.EpollCtl(p.ep.FD, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err != nil {
		return err // closed: the goroutine path sees it and cleans up
	}
	return errno
}

func (p *poller) alloc() int32 {
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		return s
	}
	p.slots = append(p.slots, slot{})
	return int32(len(p.slots) - 1)
}

// take removes the connection parked in slot s under gen and returns it,
// or nil when it is not parked there any more. Called with p.mu held.
func (p *poller) take(s int32, gen uint32) Conn {
	if s < 0 || int(s) >= len(p.slots) || p.slots[s].c == nil || p.slots[s].c.Spot().gen != gen {
		return nil
	}
	return p.remove(s)
}

// remove empties the occupied slot s and returns its connection. Called
// with p.mu held.
func (p *poller) remove(s int32) Conn {
	c := p.slots[s].c
	p.slots[s] = slot{}
	p.free = append(p.free, s)
	p.n--
	return c
}

// Kick takes c, if it is parked, off its poller: a close frame was queued
// or its socket is finished with. It reports whether c was parked; the
// caller then waits for c's bytes on a goroutine. Safe for concurrent use.
func Kick(c Conn) bool {
	sp := c.Spot()
	p := sp.p
	if p == nil {
		return false
	}
	p.mu.Lock()
	got := p.take(sp.slot, sp.gen) == c
	if got && p.n == 0 {
		p.ep.Wakeup()
	}
	p.mu.Unlock()
	return got
}

// run waits on ep until no connection is parked: each readable connection
// is handed to its Readable, each one past its deadline to its Late.
func (p *poller) run(ep *epoll.Instance) {
	defer p.wg.Done()
	var events [pollEvents]syscall.EpollEvent
	var ready, late []Conn
	next := time.Now().Add(p.tick)
	for {
		wait := max(0, int((time.Until(next)+time.Millisecond-1)/time.Millisecond))
		n, err := syscall.EpollWait(ep.FD, events[:], wait)
		if err != nil && err != syscall.EINTR {
			p.log.Error("epoll wait: idle connections move to goroutines", zap.Error(err))
			n = 0
		}
		failed := err != nil && err != syscall.EINTR
		p.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == wakeData {
				ep.Drain()
				continue
			}
			if c := p.take(ev.Fd, uint32(ev.Pad)); c != nil {
				ready = append(ready, c)
			}
		}
		if now := time.Now(); failed || !now.Before(next) {
			at := now.UnixNano()
			for i := range p.slots {
				switch s := &p.slots[i]; {
				case s.c == nil:
				case failed: // back to goroutines, which wait under read deadlines
					ready = append(ready, p.remove(int32(i)))
				case s.by <= at:
					late = append(late, p.remove(int32(i)))
				}
			}
			next = now.Add(p.tick)
		}
		stop := p.n == 0
		if stop {
			p.ep = nil
		}
		p.mu.Unlock()
		for _, c := range ready {
			c.Readable()
		}
		for _, c := range late {
			c.Late()
		}
		clear(ready)
		clear(late)
		ready, late = ready[:0], late[:0]
		if stop {
			ep.Close()
			return
		}
	}
}
