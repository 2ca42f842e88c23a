// Command rehome simulates the reconnect storm after a node dies: its
// clients redial through the balancers with the Go client's backoff, the
// balancers and the surviving nodes admit at most -max-pending set-ups at
// once each and answer the rest 503 with Retry-After: 1, and every set-up
// costs the CPU measured for it (scripts/loadtest prints "set-up cpu").
// It prints when the clients are back (p50/p99/max), how many set-ups
// were refused, the peak in flight and what each survivor gained.
//
// It is a model: CPU per set-up is a fixed cost on a first-come,
// first-served pool of cores per process, and the network adds a fixed
// round trip. Run it with this machine's figures (-calibrate) next to a
// measured storm (scripts/chaos) to see how far to trust it.
//
//	go run ./scripts/rehome -clients 100000 -survivors 9 -node-cores 8 -balancers 4 -balancer-cores 8
//	go run ./scripts/rehome -calibrate
package main

import (
	"container/heap"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"
)

type config struct {
	clients, survivors, balancers   int
	nodeCores, balancerCores        int
	nodeSetup, balancerSetup        time.Duration
	clientSetup, refuseCost         time.Duration
	sharedCores                     int
	nodePending, balancerPending    int
	retryAfter, minBackoff, maxBack time.Duration
	pendingWait, nodePendingWait    time.Duration // how long a set-up may wait for a slot before its 503
	detect, detectJitter, rtt       time.Duration
	channels                        int
	historyReads                    float64 // Redis reads per second; 0 = no history
	connKB                          float64
	seed                            uint64
}

func main() {
	var c config
	calibrate := false
	fs := flag.NewFlagSet("rehome", flag.ExitOnError)
	fs.IntVar(&c.clients, "clients", 100000, "clients of the dead node")
	fs.IntVar(&c.survivors, "survivors", 9, "nodes left; each client's new owner is uniform over them (the ring's spread)")
	fs.IntVar(&c.balancers, "balancers", 4, "balancers; each client redials through one at random")
	fs.IntVar(&c.nodeCores, "node-cores", 8, "cores per node")
	fs.IntVar(&c.balancerCores, "balancer-cores", 8, "cores per balancer")
	fs.DurationVar(&c.nodeSetup, "node-setup", 700*time.Microsecond, "node CPU per connection set-up (upgrade, auth, welcome, subscriptions): loadtest's set-up cpu per dial")
	fs.DurationVar(&c.balancerSetup, "balancer-setup", 400*time.Microsecond, "balancer CPU per relayed set-up: loadtest's or benchproxy -mode connect's figure")
	fs.DurationVar(&c.clientSetup, "client-setup", 0, "client CPU per set-up, counted only with -shared-cores (clients on the same machine)")
	fs.DurationVar(&c.refuseCost, "refuse-cost", 100*time.Microsecond, "CPU of answering one set-up 503 (read the request, write the answer), on whoever refuses")
	fs.IntVar(&c.sharedCores, "shared-cores", 0, "if > 0, every process (and the clients) shares this many cores, as on one test machine")
	fs.IntVar(&c.nodePending, "node-max-pending", 512, "node -max-pending")
	fs.IntVar(&c.balancerPending, "balancer-max-pending", 1024, "balancer -max-pending")
	fs.DurationVar(&c.pendingWait, "pending-wait", time.Second, "balancer -pending-wait: a set-up past -max-pending waits this long for a slot (up to 4 × max-pending waiting) before its 503; 0 = refused at once")
	fs.DurationVar(&c.nodePendingWait, "node-pending-wait", 250*time.Millisecond, "node -pending-wait, as -pending-wait")
	fs.DurationVar(&c.retryAfter, "retry-after", time.Second, "Retry-After of a 503")
	fs.DurationVar(&c.minBackoff, "min-backoff", 100*time.Millisecond, "client MinBackoff")
	fs.DurationVar(&c.maxBack, "max-backoff", 20*time.Second, "client MaxBackoff")
	fs.DurationVar(&c.detect, "detect", 0, "kill to the client seeing its link end (0: the kernel resets a killed process's sockets; ~1 s for a hung node with -detect fast)")
	fs.DurationVar(&c.detectJitter, "detect-jitter", 20*time.Millisecond, "spread of that moment over the clients (uniform)")
	fs.DurationVar(&c.rtt, "rtt", time.Millisecond, "network round trips a set-up waits for, in all (client-balancer and balancer-node)")
	fs.IntVar(&c.channels, "channels", 1, "subscriptions per client (each a Redis history read with -history-reads)")
	fs.Float64Var(&c.historyReads, "history-reads", 0, "with history on: Redis reads per second one Redis serves (e.g. 100000); 0 = no history reads")
	fs.Float64Var(&c.connKB, "conn-kb", 3.2, "node memory per idle connection, KB (scripts/benchmem)")
	fs.Uint64Var(&c.seed, "seed", 1, "random seed")
	fs.BoolVar(&calibrate, "calibrate", false, "this machine: 2,001 clients, 2 survivors, 1 balancer, everything on 2 shared cores; compare with scripts/chaos")
	fs.Parse(os.Args[1:])
	if calibrate {
		c.clients, c.survivors, c.balancers, c.nodeCores, c.balancerCores, c.sharedCores = 2001, 2, 1, 2, 2, 2
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["client-setup"] {
			c.clientSetup = 300 * time.Microsecond
		}
	}
	if c.clients < 1 || c.survivors < 1 || c.balancers < 1 || c.nodeCores < 1 || c.balancerCores < 1 || c.nodePending < 1 || c.balancerPending < 1 {
		fmt.Fprintln(os.Stderr, "rehome: counts must be ≥ 1")
		os.Exit(2)
	}
	fmt.Println("command: go run ./scripts/rehome " + strings.Join(os.Args[1:], " "))
	r := simulate(c)
	r.print(c)
}

// A pool is a first-come, first-served set of cores.
type pool struct {
	cores, busy int
	wait        []func()
}

func (p *pool) run(s *sim, cost time.Duration, done func()) {
	start := func() {
		p.busy++
		s.at(s.now+cost, func() {
			p.busy--
			if len(p.wait) > 0 {
				next := p.wait[0]
				p.wait = p.wait[1:]
				next()
			}
			done()
		})
	}
	if p.busy < p.cores {
		start()
		return
	}
	p.wait = append(p.wait, start)
}

type event struct {
	t   time.Duration
	seq int
	f   func()
}

type events []event

func (e events) Len() int { return len(e) }
func (e events) Less(i, j int) bool {
	return e[i].t < e[j].t || e[i].t == e[j].t && e[i].seq < e[j].seq
}
func (e events) Swap(i, j int)              { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)                { *e = append(*e, x.(event)) }
func (e *events) Pop() any                  { o := *e; x := o[len(o)-1]; *e = o[:len(o)-1]; return x }
func (s *sim) at(t time.Duration, f func()) { s.seq++; heap.Push(&s.q, event{t, s.seq, f}) }

type sim struct {
	now time.Duration
	seq int
	q   events
	rnd *rand.Rand
}

type result struct {
	back                    []time.Duration
	nodeRefused, balRefused int
	dials                   int
	peakNode, peakBal       int
	gained                  []int
	redisBusy               time.Duration
}

// A gate admits max set-ups at once; with wait > 0 up to 4 × max more
// wait that long for a slot, the rest are refused at once (as pkg/gate).
type gate struct {
	max, in, peak int
	wait          time.Duration
	waiters       []*waiter
}

type waiter struct {
	admit, refuse func()
	done          bool
}

func (g *gate) enter(s *sim, admit, refuse func()) {
	if g.in < g.max {
		g.in++
		g.peak = max(g.peak, g.in)
		admit()
		return
	}
	if g.wait <= 0 || len(g.waiters) >= 4*g.max {
		refuse()
		return
	}
	w := &waiter{admit: admit, refuse: refuse}
	g.waiters = append(g.waiters, w)
	s.at(s.now+g.wait, func() {
		if !w.done {
			w.done = true
			g.waiters = slices.DeleteFunc(g.waiters, func(x *waiter) bool { return x == w })
			refuse()
		}
	})
}

func (g *gate) leave() {
	g.in--
	if len(g.waiters) > 0 {
		w := g.waiters[0]
		g.waiters = g.waiters[1:]
		w.done = true
		g.in++
		w.admit()
	}
}

func simulate(c config) result {
	s := &sim{rnd: rand.New(rand.NewPCG(c.seed, 1))}
	var shared *pool
	if c.sharedCores > 0 {
		shared = &pool{cores: c.sharedCores}
	}
	mk := func(cores int) *pool {
		if shared != nil {
			return shared
		}
		return &pool{cores: cores}
	}
	nodes := make([]*pool, c.survivors)
	nodeGate := make([]*gate, c.survivors)
	for i := range nodes {
		nodes[i] = mk(c.nodeCores)
		nodeGate[i] = &gate{max: c.nodePending, wait: c.nodePendingWait}
	}
	bals := make([]*pool, c.balancers)
	balGate := make([]*gate, c.balancers)
	for i := range bals {
		bals[i] = mk(c.balancerCores)
		balGate[i] = &gate{max: c.balancerPending, wait: c.pendingWait}
	}
	redis := &pool{cores: 1}
	var r result
	r.gained = make([]int, c.survivors)

	var dial func(owner int, lost time.Duration)
	retry := func(owner int, lost time.Duration, wait time.Duration) {
		ceil := min(max((s.now-lost)/2, c.minBackoff), c.maxBack)
		s.at(s.now+wait+time.Duration(s.rnd.Int64N(int64(ceil)+1)), func() { dial(owner, lost) })
	}
	dial = func(owner int, lost time.Duration) {
		r.dials++
		b := s.rnd.IntN(c.balancers)
		bp, bg, np, ng := bals[b], balGate[b], nodes[owner], nodeGate[owner]
		cost := c.balancerSetup
		if shared != nil {
			cost += c.clientSetup
		}
		bg.enter(s, func() {
			bp.run(s, cost, func() {
				ng.enter(s, func() {
					np.run(s, c.nodeSetup, func() {
						ng.leave()
						bg.leave()
						finish := func() {
							s.at(s.now+c.rtt, func() {
								r.back = append(r.back, s.now)
								r.gained[owner]++
							})
						}
						if c.historyReads <= 0 {
							finish()
							return
						}
						read := time.Duration(float64(c.channels) / c.historyReads * float64(time.Second))
						r.redisBusy += read
						redis.run(s, read, finish)
					})
				}, func() {
					r.nodeRefused++
					np.run(s, c.refuseCost, func() {
						bg.leave()
						retry(owner, lost, c.retryAfter)
					})
				})
			})
		}, func() {
			r.balRefused++
			bp.run(s, c.refuseCost, func() { retry(owner, lost, c.retryAfter) })
		})
	}
	for range c.clients {
		owner := s.rnd.IntN(c.survivors)
		seen := c.detect + time.Duration(s.rnd.Int64N(int64(c.detectJitter)+1))
		s.at(seen, func() { retry(owner, seen, 0) })
	}
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(event)
		s.now = e.t
		e.f()
	}
	for _, g := range nodeGate {
		r.peakNode = max(r.peakNode, g.peak)
	}
	for _, g := range balGate {
		r.peakBal = max(r.peakBal, g.peak)
	}
	return r
}

func (r result) print(c config) {
	slices.Sort(r.back)
	q := func(p float64) time.Duration { return r.back[min(len(r.back)-1, int(p*float64(len(r.back))))] }
	if shared := c.sharedCores; shared > 0 {
		fmt.Printf("model: %d clients, %d survivors, %d balancers, all on %d shared cores; set-up cpu node %v, balancer %v, client %v\n",
			c.clients, c.survivors, c.balancers, shared, c.nodeSetup, c.balancerSetup, c.clientSetup)
	} else {
		fmt.Printf("model: %d clients, %d survivors × %d cores, %d balancers × %d cores; set-up cpu node %v, balancer %v\n",
			c.clients, c.survivors, c.nodeCores, c.balancers, c.balancerCores, c.nodeSetup, c.balancerSetup)
	}
	fmt.Printf("admission: node -max-pending %d -pending-wait %v, balancer -max-pending %d -pending-wait %v, Retry-After %v; client backoff %v..%v; link end seen at %v + up to %v\n",
		c.nodePending, c.nodePendingWait, c.balancerPending, c.pendingWait, c.retryAfter, c.minBackoff, c.maxBack, c.detect, c.detectJitter)
	fmt.Printf("back (kill → set up on the new owner): p50 %v  p99 %v  max %v  (%d of %d)\n",
		q(0.50).Round(time.Millisecond), q(0.99).Round(time.Millisecond), r.back[len(r.back)-1].Round(time.Millisecond), len(r.back), c.clients)
	fmt.Printf("dials %d (%.2f per client); refused 503 by nodes %d, by balancers %d; peak set-ups in flight: node %d, balancer %d\n",
		r.dials, float64(r.dials)/float64(c.clients), r.nodeRefused, r.balRefused, r.peakNode, r.peakBal)
	lo, hi := slices.Min(r.gained), slices.Max(r.gained)
	fmt.Printf("each survivor gained %d–%d connections (%.0f–%.0f MB at %.1f KB each)\n",
		lo, hi, float64(lo)*c.connKB/1024, float64(hi)*c.connKB/1024, c.connKB)
	if c.historyReads > 0 {
		span := r.back[len(r.back)-1]
		fmt.Printf("Redis: %d history reads, busy %v of the %v storm (%.0f %% of one Redis core)\n",
			c.clients*c.channels, r.redisBusy.Round(time.Millisecond), span.Round(time.Millisecond), 100*r.redisBusy.Seconds()/span.Seconds())
	}
}
