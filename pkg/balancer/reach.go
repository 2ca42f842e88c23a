package balancer

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/cluster"
)

// reach judges, on the balancer's own path, which nodes it can reach: it
// probes every node gossip lists (alive, suspect, or dead while it may still
// hold relays to it) every interval, each probe bounded by timeout, and
// calls a node unreachable after misses failed probes in a row, reachable
// again after one that succeeds. A probe that is late but whose request the
// node's kernel acknowledged (see healthProbe) counts as a miss only while
// gossip declares the node dead: that is a frozen process, while one that
// gossip still sees is only slow. Gossip alone cannot tell: a node cut off
// from one balancer still gossips with everyone else, and a starved node
// gossip declared dead may still serve its clients well.
//
// Each probed node has a goroutine owned by reach; they end with the
// context given to run.
type reach struct {
	interval, timeout time.Duration
	misses            int
	log               *zap.Logger
	// newProbe returns the checker of the node serving at addr.
	newProbe func(addr string) prober
	// changed is told each node that became unreachable (down) or
	// reachable again, and the whole unreachable set after the change. It
	// runs on the probing goroutine of that node, one call at a time.
	changed func(id string, down bool, set []string)
	// relays reports whether the balancer holds relays to the node.
	relays func(id string) bool

	mu      sync.Mutex
	ctx     context.Context // set by run
	closed  bool            // run is waiting for the goroutines: start no more
	targets map[string]*target
	down    map[string]bool // unreachable node ids
	wg      sync.WaitGroup
	cmu     sync.Mutex // serialises changed
}

// target is one probed node.
type target struct {
	addr   string
	dead   atomic.Bool   // gossip declares it dead
	kick   chan struct{} // 1-buffered: probe now
	cancel context.CancelFunc
}

// run probes until ctx ends, then waits for the probing goroutines.
func (r *reach) run(ctx context.Context) {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	<-ctx.Done()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
}

// sync follows the members of a new view: it starts probing nodes that are
// new or moved to another address, stops probing nodes that left (a
// draining node closes its HTTP listener while its clients move on their
// own), and probes a node gossip just declared dead at once.
func (r *reach) sync(members []cluster.Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil || r.closed {
		return
	}
	seen := map[string]bool{}
	for _, m := range members {
		if m.Role != cluster.RoleNode || m.Addr == "" {
			continue
		}
		t := r.targets[m.ID]
		switch {
		case m.State == cluster.StateLeft:
			continue
		case t != nil && t.addr == m.Addr:
			if dead := m.State == cluster.StateDead; t.dead.Swap(dead) != dead && dead {
				select {
				case t.kick <- struct{}{}:
				default:
				}
			}
			seen[m.ID] = true
			continue
		case m.State == cluster.StateDead && t == nil:
			// Dead and not probed: probe only while relays may be held to it.
			if !r.relays(m.ID) {
				continue
			}
		}
		if t != nil {
			t.cancel()
		}
		seen[m.ID] = true
		ctx, cancel := context.WithCancel(r.ctx)
		t = &target{addr: m.Addr, kick: make(chan struct{}, 1), cancel: cancel}
		t.dead.Store(m.State == cluster.StateDead)
		r.targets[m.ID] = t
		r.wg.Go(func() { r.watch(ctx, m.ID, t) })
	}
	for id, t := range r.targets {
		if !seen[id] {
			t.cancel()
			delete(r.targets, id)
			if r.down[id] {
				delete(r.down, id) // left: off the ring, nothing to route around
				r.wg.Go(func() { r.report(id, false) })
			}
		}
	}
}

// watch probes the node of t until ctx ends, or until it is dead in
// gossip, unreachable and holds no relays (probing it is then pointless: it
// is off the ring, and a return in gossip starts a new watch).
func (r *reach) watch(ctx context.Context, id string, t *target) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	p := r.newProbe(t.addr)
	defer p.close()
	misses := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-t.kick:
			timer.Stop()
		}
		start := time.Now()
		v := p.check(ctx, r.timeout)
		if ctx.Err() != nil {
			return
		}
		switch {
		case v == answered:
			misses = 0
			if r.set(id, false) {
				r.log.Info("node reachable again from this balancer", zap.String("node", id))
			}
		case v == slow && !t.dead.Load():
			// The path works and the process is alive in gossip, only
			// slow (a reconnect storm, a loaded machine): its relays are
			// fine. A frozen process is declared dead by gossip; then a
			// late answer counts as a miss.
		default:
			misses++
		}
		if misses >= r.misses {
			if r.set(id, true) {
				r.log.Warn("node unreachable from this balancer", zap.String("node", id), zap.String("addr", t.addr),
					zap.Int("misses", misses), zap.Bool("dead_in_gossip", t.dead.Load()))
			}
			r.mu.Lock()
			done := t.dead.Load() && !r.relays(id) && r.targets[id] == t
			if done {
				delete(r.targets, id)
			}
			r.mu.Unlock()
			if done {
				r.set(id, false) // off the ring everywhere: nothing to route around
				return
			}
		}
		timer.Reset(max(0, r.interval-time.Since(start)))
	}
}

// set records whether node id is unreachable and reports whether that changed.
func (r *reach) set(id string, down bool) bool {
	r.mu.Lock()
	if r.down[id] == down {
		r.mu.Unlock()
		return false
	}
	if down {
		r.down[id] = true
	} else {
		delete(r.down, id)
	}
	r.mu.Unlock()
	r.report(id, down)
	return true
}

func (r *reach) report(id string, down bool) {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	r.changed(id, down, r.unreachable())
}

// unreachable returns the sorted ids of the unreachable nodes.
func (r *reach) unreachable() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.down))
	for id := range r.down {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// isDown reports whether node id is unreachable.
func (r *reach) isDown(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.down[id]
}
