package session

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
// its heartbeat deadline sits in the poller's slot table. When bytes (or the
// peer's end) arrive, the poller hands the connection to a fresh goroutine
// that reads and handles frames as the goroutine path does, then parks it
// again. So an idle connection costs a slot and no goroutine, stack, timer
// or buffer. Each poller's goroutine runs while it has connections parked.
//
// Deadlines: every tick the poller sweeps its slots and hands each
// connection past its heartbeat deadline to a goroutine that closes it 1001,
// as the goroutine path's read deadline would. Whatever else ends a parked
// connection (a queued close frame, a failed write) calls kick, which moves
// it back to a goroutine; nothing closes the socket of a parked connection.

const (
	pollEvents = 128 // events taken per epoll_wait
	wakeData   = -1  // event data of a poller's eventfd
	oneShot    = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT
)

// pollers is the Upgrader's set of pollers; connections are spread over them.
type pollers struct {
	ps   []*poller
	mu   sync.Mutex
	next int
}

func newPollers(u *Upgrader) *pollers {
	// 3 × Heartbeat is the deadline: sweeping 16 times in it closes a
	// silent link at most ~6 % late.
	tick := min(max(3*u.cfg.Heartbeat/16, 5*time.Millisecond), time.Second)
	ps := &pollers{}
	for range runtime.GOMAXPROCS(0) {
		ps.ps = append(ps.ps, &poller{u: u, tick: tick})
	}
	return ps
}

// pick returns the poller of a new connection.
func (ps *pollers) pick() *poller {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.next++
	return ps.ps[ps.next%len(ps.ps)]
}

// poller is one epoll instance, its goroutine and the connections parked on it.
type poller struct {
	u    *Upgrader
	tick time.Duration // deadline sweep interval

	mu    sync.Mutex
	ep    *epoll.Instance // the running instance; nil while no connection is parked
	slots []slot          // by slot number; c == nil when free
	free  []int32
	n     int    // connections parked
	gen   uint32 // the last parking's number: stale events carry older ones
	// warned is when a failed epoll instance was last logged.
	warned time.Time
}

type slot struct {
	c   *Conn
	gen uint32
	by  int64 // unix nanoseconds: the heartbeat deadline
}

// add parks c until its socket is readable or its heartbeat deadline
// passes. It reports false, with c untouched, when c cannot be parked (the
// caller waits on a goroutine instead). Only c's reader calls it, between
// messages.
func (p *poller) add(c *Conn) bool {
	by := time.Now().Add(3 * c.u.cfg.Heartbeat).UnixNano()
	// The runtime's read deadline would run a timer per connection: the
	// sweep keeps the deadline while c is parked.
	c.nc.SetReadDeadline(time.Time{})
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
				p.u.log.Warn("idle connections wait on goroutines: no epoll instance (logged once a minute)", zap.Error(err))
			}
			return false
		}
		p.ep = ep
		p.u.deps.WG.Add(1)
		go p.run(ep)
	}
	s := p.alloc()
	p.gen++
	p.slots[s] = slot{c: c, gen: p.gen, by: by}
	c.slot, c.gen = s, p.gen
	if err := p.arm(c); err != nil {
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
	// A close queued before c was in its slot found nothing to kick.
	if _, closing := c.closingSince(); closing {
		p.kick(c)
	}
	return true
}

// arm re-arms c's socket one-shot, or registers it when this instance
// does not have it yet (its first parking here: the connection keeps no
// note of it). Adding or re-arming reports data that is there already, so
// nothing that arrived before is missed. Called with p.mu held.
func (p *poller) arm(c *Conn) error {
	var errno error
	err := c.raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: oneShot, Fd: c.slot, Pad: int32(c.gen)}
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
func (p *poller) take(s int32, gen uint32) *Conn {
	if s < 0 || int(s) >= len(p.slots) || p.slots[s].c == nil || p.slots[s].gen != gen {
		return nil
	}
	c := p.slots[s].c
	p.slots[s] = slot{}
	p.free = append(p.free, s)
	p.n--
	return c
}

// kick moves c, if it is parked, back to a goroutine: a close frame was
// queued or its socket is finished with. Safe for concurrent use.
func (p *poller) kick(c *Conn) {
	p.mu.Lock()
	got := p.take(c.slot, c.gen) == c
	if got && p.n == 0 {
		p.ep.Wakeup()
	}
	p.mu.Unlock()
	if got {
		c.u.deps.WG.Add(1)
		go c.park(c.ctx)
	}
}

// run waits on ep until no connection is parked: each readable connection
// goes to a goroutine that reads it, each one past its deadline to one that
// closes it.
func (p *poller) run(ep *epoll.Instance) {
	defer p.u.deps.WG.Done()
	var events [pollEvents]syscall.EpollEvent
	var ready, late []*Conn
	next := time.Now().Add(p.tick)
	for {
		wait := max(0, int((time.Until(next)+time.Millisecond-1)/time.Millisecond))
		n, err := syscall.EpollWait(ep.FD, events[:], wait)
		if err != nil && err != syscall.EINTR {
			p.u.log.Error("epoll wait: idle connections move to goroutines", zap.Error(err))
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
					ready = append(ready, p.take(int32(i), s.gen))
				case s.by <= at:
					late = append(late, p.take(int32(i), s.gen))
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
			c.u.deps.WG.Add(1)
			go c.woken(c.ctx)
		}
		for _, c := range late {
			c.u.deps.WG.Add(1)
			go c.expire(c.ctx)
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
