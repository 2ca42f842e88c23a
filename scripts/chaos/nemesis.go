package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/proc"
)

// Fault kinds.
const (
	faultKill     = "kill"     // SIGKILL a node, restart it
	faultPause    = "pause"    // SIGSTOP a node past failure detection, then SIGCONT
	faultTerm     = "term"     // SIGTERM a node (graceful drain), restart it
	faultBalancer = "balancer" // SIGKILL a balancer, restart it
	faultRedis    = "redis"    // -bridge redis: SIGKILL redis-server, restart it empty (history is lost); cluster, sentinel: SIGKILL a primary, restart it once a replica took over
	faultRolling  = "rolling"  // SIGTERM every node in turn, restart it, wait until it is ready, next
	faultFlap     = "flap"     // SIGKILL a node and restart it, flapTimes times: down flapDown, up flapUp
	// With -net, each process in a network namespace:
	faultPartition = "partition"    // drop all packets between a node and the other nodes
	faultCutBal    = "cut-balancer" // drop all packets between a node and one balancer
)

var (
	faultKinds    = []string{faultKill, faultPause, faultTerm, faultBalancer, faultRedis, faultRolling, faultFlap, faultPartition, faultCutBal}
	defaultFaults = faultKinds[:4]
	netFaults     = faultKinds[7:]
)

// holdRange is how long each kind of fault is held, drawn uniformly: a
// pause outlasts failure detection (under 1 s with -detect fast).
var holdRange = map[string][2]time.Duration{
	faultKill:      {time.Second, 3 * time.Second},
	faultPause:     {2 * time.Second, 4 * time.Second},
	faultTerm:      {time.Second, 2 * time.Second},
	faultBalancer:  {time.Second, 2 * time.Second},
	faultRedis:     {time.Second, 2 * time.Second},
	faultPartition: {3 * time.Second, 6 * time.Second},
	faultCutBal:    {3 * time.Second, 6 * time.Second},
	faultFlap:      {flapTimes * (flapDown + flapUp), flapTimes * (flapDown + flapUp)},
	faultRolling:   {0, 0}, // rollingStep per node
}

// A flap: the node is down flapDown and up flapUp, flapTimes times.
const (
	flapTimes = 4
	flapDown  = 2 * time.Second
	flapUp    = 3 * time.Second
)

// rollingStep is what one node of a rolling restart is planned to take:
// its drain, restart and readiness.
const rollingStep = 8 * time.Second

// allNodes is the target of a rolling restart.
const allNodes = "nodes"

// termExit bounds a graceful shutdown: the drain window (2 s) plus leave
// and close.
const termExit = 10 * time.Second

// planned is one fault of the schedule.
type planned struct {
	At     time.Duration // from the start of the load
	Kind   string
	Target string
	Peer   string // cut-balancer: the balancer cut from Target
	Hold   time.Duration
}

// redisTarget names the Redis deployment in a schedule.
const redisTarget = "redis"

// busyFor is how long the target is expected to be out.
func (p planned) busyFor() time.Duration {
	if p.Kind == faultTerm {
		return p.Hold + termExit/2
	}
	return p.Hold + time.Second
}

// plan draws the fault schedule from seed: one fault every `every` while it
// can heal before the load stops, on a target that is not already out,
// keeping at least minAlive nodes untouched.
func plan(seed uint64, duration, every time.Duration, kinds, nodes, balancers []string, minAlive int) []planned {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out []planned
	for at := every; at < duration && len(kinds) > 0; at += every {
		outNow := map[string]bool{}
		for _, p := range out {
			if p.At <= at && at < p.At+p.busyFor() {
				outNow[p.Target] = true
				if p.Target == allNodes {
					for _, n := range nodes {
						outNow[n] = true
					}
				}
			}
		}
		kind := kinds[rng.IntN(len(kinds))]
		r := holdRange[kind]
		hold := r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])+1))
		var free []string
		switch kind {
		case faultRolling:
			hold = time.Duration(len(nodes)) * rollingStep
			if !slices.ContainsFunc(nodes, func(n string) bool { return outNow[n] }) {
				free = []string{allNodes}
			}
		case faultRedis:
			if !outNow[redisTarget] {
				free = []string{redisTarget}
			}
		case faultBalancer:
			for _, b := range balancers {
				if !outNow[b] {
					free = append(free, b)
				}
			}
		default:
			down := 0
			for _, n := range nodes {
				if outNow[n] {
					down++
				} else {
					free = append(free, n)
				}
			}
			if len(nodes)-down-1 < minAlive {
				free = nil
			}
		}
		if len(free) == 0 {
			continue
		}
		p := planned{At: at, Kind: kind, Target: free[rng.IntN(len(free))], Hold: hold}
		if kind == faultCutBal {
			p.Peer = balancers[rng.IntN(len(balancers))]
		}
		if p.At+p.busyFor() > duration {
			break
		}
		out = append(out, p)
	}
	return out
}

// nemesis runs a schedule against a cluster.
type nemesis struct {
	cl    *clustertest.Cluster
	net   *clustertest.Net // nil without -net
	redis deployment       // nil with -bridge mesh
	clk   clock
	out   io.Writer

	mu     sync.Mutex
	faults []fault
	busy   map[string]bool
}

func (n *nemesis) proc(name string) *clustertest.Proc {
	for _, p := range n.cl.All() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// run injects the schedule, start being the start of the load, and returns
// once every fault it injected has healed. Cancelling ctx heals at once.
func (n *nemesis) run(ctx context.Context, start time.Time, schedule []planned) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, p := range schedule {
		t := time.NewTimer(time.Until(start.Add(p.At)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		n.mu.Lock()
		busy := n.busy[p.Target]
		if !busy {
			n.busy[p.Target] = true
		}
		n.mu.Unlock()
		if busy {
			fmt.Fprintf(n.out, "[%6.1fs] skip %s %s: still out\n", n.clk.now().Seconds(), p.Kind, p.Target)
			continue
		}
		wg.Go(func() { n.episode(ctx, p) })
	}
}

// episode injects one fault, holds it and heals it.
func (n *nemesis) episode(ctx context.Context, p planned) {
	pr := n.proc(p.Target)
	began := time.Now()
	f := fault{Kind: p.Kind, Target: p.Target, Start: n.clk.now(), End: open}
	what := p.Kind + " " + p.Target
	if p.Peer != "" {
		what += " from " + p.Peer
		f.Note = "from " + p.Peer
	}
	fmt.Fprintf(n.out, "[%6.1fs] %s for %v\n", f.Start.Seconds(), what, p.Hold.Round(100*time.Millisecond))
	switch p.Kind {
	case faultRolling:
		n.rolling(ctx)
		n.release(p.Target)
		return
	case faultFlap:
		n.flap(ctx, pr)
		n.release(p.Target)
		return
	}
	var err error
	var ready chan struct{} // closed when a Redis fault's readiness is known
	switch p.Kind {
	case faultPartition:
		var others []string
		for _, o := range n.cl.Nodes {
			if o.Name != p.Target {
				others = append(others, o.Name)
			}
		}
		err = n.net.Cut(p.Target, others...)
	case faultCutBal:
		err = n.net.Cut(p.Target, p.Peer)
	case faultRedis:
		var hit string
		if hit, err = n.redis.fail(); err == nil {
			f.Note = hit
			rd := &readiness{NotReadyMS: waitReadyz(ctx, n.cl.Nodes, false, began, notReadyWait)}
			f.Readiness, ready = rd, make(chan struct{})
			// Ready again may come before the heal: a replica took over.
			go func() {
				defer close(ready)
				rd.ReadyMS = waitReadyz(ctx, n.cl.Nodes, true, began, readyWait)
			}()
		}
	case faultKill, faultBalancer:
		pr.Kill()
	case faultPause:
		err = pr.Freeze()
	case faultTerm:
		err = pr.Term(termExit)
	}
	if err != nil {
		f.Note += " " + err.Error()
	}
	t := time.NewTimer(p.Hold)
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	t.Stop()
	switch p.Kind {
	case faultPartition, faultCutBal:
		err = n.net.Heal(p.Target)
	case faultRedis:
		err = n.redis.heal()
		if ready != nil {
			<-ready
		}
	case faultPause:
		err = pr.Signal(syscall.SIGCONT)
	default:
		err = pr.Start()
	}
	if err != nil {
		f.Note += " heal: " + err.Error()
	}
	f.End = n.clk.now()
	fmt.Fprintf(n.out, "[%6.1fs] healed %s\n", f.End.Seconds(), what)
	n.record(f)
	n.release(p.Target)
}

func (n *nemesis) record(f fault) {
	n.mu.Lock()
	n.faults = append(n.faults, f)
	n.mu.Unlock()
}

func (n *nemesis) release(target string) {
	n.mu.Lock()
	delete(n.busy, target)
	n.mu.Unlock()
}

// rolling restarts every node in turn, as a deploy does: SIGTERM (the node
// drains its clients), start it again, wait until it is ready and every
// balancer sees it, then the next. Each node's step is one fault.
func (n *nemesis) rolling(ctx context.Context) {
	for _, pr := range n.cl.Nodes {
		if ctx.Err() != nil {
			return
		}
		f := fault{Kind: faultRolling, Target: pr.Name, Start: n.clk.now()}
		if err := pr.Term(termExit); err != nil {
			f.Note = err.Error()
		}
		if err := pr.Start(); err != nil {
			f.Note += " start: " + err.Error()
		}
		if err := n.cl.WaitConverged(ctx, len(n.cl.Nodes)); err != nil {
			f.Note += " ready: " + err.Error()
		}
		f.End = n.clk.now()
		fmt.Fprintf(n.out, "[%6.1fs] rolled %s in %v %s\n", f.End.Seconds(), pr.Name, (f.End - f.Start).Round(100*time.Millisecond), f.Note)
		n.record(f)
	}
}

// flap kills pr and restarts it flapTimes times. Each kill is one fault.
func (n *nemesis) flap(ctx context.Context, pr *clustertest.Proc) {
	for range flapTimes {
		f := fault{Kind: faultFlap, Target: pr.Name, Start: n.clk.now()}
		pr.Kill()
		proc.Sleep(ctx, flapDown)
		if err := pr.Start(); err != nil {
			f.Note = "start: " + err.Error()
		}
		f.End = n.clk.now()
		n.record(f)
		proc.Sleep(ctx, flapUp)
	}
	fmt.Fprintf(n.out, "[%6.1fs] flapped %s %d times\n", n.clk.now().Seconds(), pr.Name, flapTimes)
}

func (n *nemesis) injected() []fault {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := slices.Clone(n.faults)
	slices.SortFunc(out, func(a, b fault) int { return cmp.Compare(a.Start, b.Start) })
	return out
}
