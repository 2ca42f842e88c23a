package balancer

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/cluster"
)

// fakeNet answers the probes of a reach: a node is up unless cut. A cut
// node's probe hangs until its timeout, as over a path that drops packets.
type fakeNet struct {
	mu     sync.Mutex
	cut    map[string]bool // addr → probes hang, unacknowledged
	frozen map[string]bool // addr → probes hang, acknowledged by the node's kernel
	probes map[string]int
	events []string // "down n2 @1.05s", "up n2 @…"
	relays map[string]bool
	start  time.Time
}

func newFakeNet() *fakeNet {
	return &fakeNet{cut: map[string]bool{}, frozen: map[string]bool{}, probes: map[string]int{}, relays: map[string]bool{}, start: time.Now()}
}

func (f *fakeNet) reach(interval, timeout time.Duration, misses int) *reach {
	return &reach{
		interval: interval, timeout: timeout, misses: misses, log: zap.NewNop(),
		newProbe: func(addr string) prober { return &fakeProbe{f, addr} },
		changed: func(id string, down bool, set []string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			what := "up"
			if down {
				what = "down"
				f.relays[id] = false // the balancer closes them
			}
			f.events = append(f.events, what+" "+id+" @"+time.Since(f.start).String())
		},
		relays: func(id string) bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.relays[id]
		},
		targets: map[string]*target{},
		down:    map[string]bool{},
	}
}

// fakeProbe answers at once unless its node is cut or frozen; then it
// takes the whole timeout.
type fakeProbe struct {
	f    *fakeNet
	addr string
}

func (p *fakeProbe) check(ctx context.Context, timeout time.Duration) verdict {
	f := p.f
	f.mu.Lock()
	f.probes[p.addr]++
	cut, frozen := f.cut[p.addr], f.frozen[p.addr]
	f.mu.Unlock()
	if !cut && !frozen {
		return answered
	}
	select {
	case <-ctx.Done():
	case <-time.After(timeout):
	}
	if cut {
		return missed
	}
	return slow
}

func (p *fakeProbe) close() {}

func (f *fakeNet) freeze(addr string, frozen bool) {
	f.mu.Lock()
	f.frozen[addr] = frozen
	f.mu.Unlock()
}

func (f *fakeNet) set(addr string, cut bool) {
	f.mu.Lock()
	f.cut[addr] = cut
	f.mu.Unlock()
}

func (f *fakeNet) count(addr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.probes[addr]
}

func (f *fakeNet) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

func nodes(states ...cluster.State) []cluster.Member {
	var ms []cluster.Member
	for i, st := range states {
		id := string(rune('1' + i))
		ms = append(ms, cluster.Member{ID: "n" + id, Role: cluster.RoleNode, Addr: "a" + id, State: st})
	}
	return ms
}

// TestReachCut checks the timing of the balancer's own probes: a node cut
// off this balancer's path is unreachable after 3 probes in a row failed
// (each one hanging for its 300 ms timeout), its relays are closed then,
// and one probe that succeeds after the heal brings it back.
func TestReachCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		r := f.reach(250*time.Millisecond, 300*time.Millisecond, 3)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { r.run(ctx); close(done) }()
		synctest.Wait()
		r.sync(nodes(cluster.StateAlive, cluster.StateAlive))
		time.Sleep(time.Second)
		synctest.Wait()
		if ev := f.log(); len(ev) != 0 || r.isDown("n2") {
			t.Fatalf("events before any cut: %q", ev)
		}
		if n := f.count("a2"); n != 5 {
			t.Fatalf("%d probes of n2 in 1 s, want 5 (at 0, 250, 500, 750 ms and 1 s)", n)
		}
		f.mu.Lock()
		f.relays["n2"] = true
		f.mu.Unlock()

		// t = 1.1 s: cut n2. Probes start at 1.25, 1.55, 1.85 s (each
		// hangs 300 ms, longer than the interval): unreachable at 2.15 s.
		time.Sleep(100 * time.Millisecond)
		f.set("a2", true)
		time.Sleep(950 * time.Millisecond)
		if r.isDown("n2") {
			t.Fatal("n2 unreachable after 2 failed probes")
		}
		time.Sleep(150 * time.Millisecond)
		if !r.isDown("n2") || r.isDown("n1") {
			t.Fatalf("after 3 failed probes: n1 down %v, n2 down %v; events %q", r.isDown("n1"), r.isDown("n2"), f.log())
		}
		if got := r.unreachable(); !slices.Equal(got, []string{"n2"}) {
			t.Errorf("unreachable = %q", got)
		}
		if ev := f.log(); !slices.Equal(ev, []string{"down n2 @2.15s"}) {
			t.Errorf("events %q, want [down n2 @2.15s]", ev)
		}

		// Heal: the next probe (at most 300 ms later) brings it back.
		f.set("a2", false)
		time.Sleep(350 * time.Millisecond)
		if r.isDown("n2") {
			t.Fatalf("n2 still unreachable after the heal; events %q", f.log())
		}
		cancel()
		<-done
	})
}

// TestReachGossipDeath checks that a gossip death the probes contradict
// closes nothing (a starved node gossip gave up on still serves its
// clients), that a real death is acted on without waiting for the next
// tick, and that a dead node's probing stops once nothing is left to do.
func TestReachGossipDeath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		r := f.reach(time.Second, 300*time.Millisecond, 1)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { r.run(ctx); close(done) }()
		synctest.Wait()
		r.sync(nodes(cluster.StateAlive, cluster.StateAlive))
		f.mu.Lock()
		f.relays["n1"], f.relays["n2"] = true, true
		f.mu.Unlock()
		time.Sleep(100 * time.Millisecond)

		// n1: dead in gossip, but answers.
		r.sync(nodes(cluster.StateDead, cluster.StateAlive))
		time.Sleep(2 * time.Second)
		if r.isDown("n1") || len(f.log()) != 0 {
			t.Fatalf("a gossip death the probes contradict acted on: %q", f.log())
		}

		// n2 froze: its kernel still acknowledges, so while gossip says
		// alive its late answers are only slow.
		f.freeze("a2", true)
		time.Sleep(100 * time.Millisecond)
		if r.isDown("n2") {
			t.Fatal("a slow node gossip sees alive was called unreachable")
		}
		// Gossip says dead at 2.2 s; the probe starts at once instead of
		// at the 3 s tick, and is late (a miss now) at 2.5 s.
		r.sync(nodes(cluster.StateDead, cluster.StateDead))
		time.Sleep(350 * time.Millisecond)
		// Its relays closed and it is dead: probing it stops, and it
		// leaves the unreachable set (off the ring, nothing to route around).
		if ev := f.log(); !slices.Equal(ev, []string{"down n2 @2.5s", "up n2 @2.5s"}) {
			t.Fatalf("events %q, want [down n2 @2.5s up n2 @2.5s]", ev)
		}
		r.mu.Lock()
		_, probing := r.targets["n2"]
		r.mu.Unlock()
		if probing || r.isDown("n2") {
			t.Errorf("dead, unreachable n2 without relays: probing %v, down %v", probing, r.isDown("n2"))
		}

		// Left: n1 is no longer probed.
		before := f.count("a1")
		r.sync([]cluster.Member{{ID: "n1", Role: cluster.RoleNode, Addr: "a1", State: cluster.StateLeft}})
		time.Sleep(3 * time.Second)
		if n := f.count("a1"); n != before {
			t.Errorf("a node that left was probed %d more times", n-before)
		}
		cancel()
		<-done
	})
}
