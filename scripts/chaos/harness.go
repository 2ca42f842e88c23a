package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// probeWait bounds the wait for the final probe messages.
const probeWait = 5 * time.Second

// scrapeTimeout bounds one read of a node's /metrics: a paused node is
// unreachable, not waited for.
const scrapeTimeout = time.Second

// scenario runs one chaos scenario and returns its report.
func scenario(ctx context.Context, cfg config, out io.Writer) (*report, error) {
	out = &lockedWriter{w: out} // the timeline and the nemesis print from their own goroutines
	logs := cfg.Logs
	var err error
	if logs == "" {
		logs, err = os.MkdirTemp("", "ringcast-chaos-")
	} else {
		err = os.MkdirAll(logs, 0o755)
	}
	if err != nil {
		return nil, err
	}
	opts := clustertest.Options{Nodes: cfg.Nodes, Balancers: cfg.Balancers, HistorySize: cfg.History, LogDir: logs,
		BalancerArgs: append(slices.Clone(clustertest.NoAdmissionLimits), cfg.BalancerArgs...)}
	bridge, host := "mesh", "127.0.0.1"
	var nw *clustertest.Net
	if cfg.Net {
		if nw, err = clustertest.NewNet(opts); err != nil {
			return nil, err
		}
		defer nw.Close()
		host = nw.Host()
	}
	var channels []string
	for i := range cfg.Channels {
		channels = append(channels, fmt.Sprintf("chaos-%d", i))
	}
	var rd deployment
	if cfg.Bridge != bridgeMesh {
		if rd, err = startDeployment(cfg.Bridge, logs, host, channels); err != nil {
			return nil, err
		}
		defer rd.stop()
		bridge = rd.url()
	}
	fmt.Fprintf(out, "starting %d balancer(s) and %d nodes (bridge %s, history %d); logs in %s\n",
		cfg.Balancers, cfg.Nodes, bridge, cfg.History, logs)
	opts.Bridge = bridge
	var cl *clustertest.Cluster
	if nw != nil {
		cl, err = nw.Start(ctx, opts)
	} else {
		cl, err = clustertest.Start(ctx, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w\n%s", err, tailFile(filepath.Join(logs, "n1.log"), 1500))
	}
	defer cl.Close()

	var urls, bases, balancers, nodes []string
	for _, b := range cl.Balancers {
		urls, bases, balancers = append(urls, "ws://"+b.Addr+"/ws"), append(bases, "http://"+b.Addr), append(balancers, b.Name)
	}
	for _, n := range cl.Nodes {
		nodes = append(nodes, n.Name)
	}
	clk := clock{t0: time.Now()}
	fl, err := startFleet(ctx, clk, cfg.Clients, urls, balancers, channels)
	if err != nil {
		return nil, err
	}
	defer fl.close()
	pubw, err := newMember(clk, "pub-w1", urls[0], balancers[0], nil)
	if err != nil {
		return nil, err
	}
	var bg sync.WaitGroup // the publishing client, the sampler
	bgctx, stopBG := context.WithCancel(context.Background())
	defer func() { stopBG(); pubw.c.Close(); bg.Wait() }()
	bg.Go(func() { pubw.c.Run(bgctx) })
	tl := &timeline{cl: cl, clk: clk}
	if cfg.Verbose {
		tl.out = out
	}
	bg.Go(func() { tl.run(bgctx) })
	cm := &cpuMeter{cl: cl, clk: clk}
	bg.Go(func() { cm.run(bgctx) })
	if err := testkit.Wait(ctx, 10*time.Second, func() error {
		if _, ok := pubw.current(); !ok {
			return errors.New("publishing client not connected")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "%d clients subscribed at %.1fs; load for %v, seed %d\n", cfg.Clients, clk.now().Seconds(), cfg.Duration, cfg.Seed)

	// Load and faults.
	var pubs, sends oplog
	ids := make([]string, len(fl.members))
	for i, m := range fl.members {
		ids[i] = m.log.ID
	}
	publishers := map[string]publishFunc{"w1": wsPublish(pubw.c)}
	for i, b := range bases {
		publishers[fmt.Sprintf("h%d", i+1)] = httpPublish(b)
	}
	every := time.Duration(float64(time.Second) * float64(len(publishers)) / cfg.Rate)
	sendEvery := time.Duration(float64(time.Second) * 10 / cfg.Rate)
	lctx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for name, pub := range publishers {
		load.Go(func() { publisher(lctx, clk, name, every, channels, pub, &pubs) })
	}
	load.Go(func() {
		sender(lctx, clk, "d1", sendEvery, bases, ids, rand.New(rand.NewPCG(cfg.Seed, 1)), &sends)
	})
	start := time.Now()
	schedule := plan(cfg.Seed, cfg.Duration, cfg.FaultEvery, cfg.Faults, nodes, balancers, cfg.MinAlive)
	if cfg.Verbose {
		for _, p := range schedule {
			fmt.Fprintf(out, "planned: +%v %s %s for %v\n", p.At, p.Kind, p.Target, p.Hold.Round(100*time.Millisecond))
		}
	}
	nem := &nemesis{cl: cl, net: nw, redis: rd, clk: clk, out: out, busy: map[string]bool{}}
	nemDone := make(chan struct{})
	go func() { defer close(nemDone); nem.run(ctx, start, schedule) }()
	select {
	case <-ctx.Done():
	case <-time.After(cfg.Duration):
	}
	stopLoad()
	load.Wait()
	<-nemDone
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Settle, then the final state and a probe every client must get.
	fmt.Fprintf(out, "[%6.1fs] load stopped; settling (up to %v)\n", clk.now().Seconds(), cfg.Settle)
	if err := cl.WaitConverged(ctx, len(cl.Nodes)); err != nil {
		fmt.Fprintf(out, "cluster did not converge: %v\n", err)
	}
	members := append(slices.Clone(fl.members), pubw)
	stopped := clk.now()
	var fin final
	err = testkit.Wait(ctx, cfg.Settle, func() error {
		fin = finalState(ctx, cl, members)
		if clk.now()-stopped < 2*time.Second {
			return errors.New("settling")
		}
		return fin.err()
	})
	if err == nil {
		fin.SettledS = round((clk.now() - stopped).Seconds())
	}
	stopBG()
	bg.Wait()
	tl.sample(ctx)
	probe(ctx, clk, bases[0], channels, fl.members, &pubs)

	h := &history{HistoryOn: cfg.History > 0, Publishes: pubs.snapshot(), Sends: sends.snapshot(), Faults: nem.injected()}
	for _, m := range fl.members {
		h.Clients = append(h.Clients, m.snapshot())
	}
	res := check(h)
	for j, f := range h.Faults {
		fo := res.PerFault[j]
		took := time.Duration(fo.MaxMS * float64(time.Millisecond))
		if !overlaps(h.Faults, j, f.Start-cpuBaseline, f.Start+took) {
			fo.CPU = cm.recovery(f.Start, took, fo.Affected-fo.Never)
		}
	}
	return newReport(cfg, logs, h, res, fin, tl.snapshot()), nil
}

// probe publishes one message per channel once everything has settled and
// waits until every subscriber has it: the cluster must work after the chaos.
func probe(ctx context.Context, clk clock, base string, channels []string, members []*member, pubs *oplog) {
	pub := httpPublish(base)
	for i, ch := range channels {
		start := clk.now()
		st := pub(ctx, ch, tag{P: "probe", S: int64(i + 1)})
		pubs.add(op{Pub: "probe", Seq: int64(i + 1), Channel: ch, Start: start, End: clk.now(), Status: st})
	}
	testkit.Wait(ctx, probeWait, func() error {
		for _, m := range members {
			for i, ch := range channels {
				if slices.Contains(m.log.Channels, ch) && !m.has(ch, "probe", int64(i+1)) {
					return errors.New("probe not delivered")
				}
			}
		}
		return nil
	})
}

// final is the cluster's state after the settle.
type final struct {
	Stranded    []string       // clients not connected, subscribed and on their owner
	Disagree    []string       // clients the balancers route differently
	Ghosts      map[string]int // node → sessions held beyond the clients connected to it
	Unreachable []string       // processes that did not answer
	SettledS    float64        // seconds from the end of the load until all was well; 0 if never
}

func (f final) err() error {
	if len(f.Stranded)+len(f.Disagree)+len(f.Ghosts)+len(f.Unreachable) > 0 {
		return fmt.Errorf("%d stranded, %d owner disagreements, ghosts %v, unreachable %v",
			len(f.Stranded), len(f.Disagree), f.Ghosts, f.Unreachable)
	}
	return nil
}

// finalState checks every member against the balancers' owners and every
// node's own session count against the members connected to it.
func finalState(ctx context.Context, cl *clustertest.Cluster, members []*member) final {
	var f final
	owners := make([]map[string]string, len(cl.Balancers))
	for i, b := range cl.Balancers {
		owners[i] = map[string]string{}
		for _, m := range members {
			var o struct {
				Node string `json:"node"`
			}
			if err := clustertest.GetJSON(ctx, "http://"+b.Addr+"/v1/owner?client_id="+m.log.ID, &o); err != nil {
				f.Unreachable = append(f.Unreachable, b.Name)
				return f
			}
			owners[i][m.log.ID] = o.Node
		}
	}
	on := map[string]int{}
	for _, m := range members {
		id := m.log.ID
		node, subscribed := m.current()
		owner := owners[0][id]
		switch {
		case node == "":
			f.Stranded = append(f.Stranded, id+": not connected")
		case !subscribed:
			f.Stranded = append(f.Stranded, id+": not subscribed on "+node)
		case node != owner:
			f.Stranded = append(f.Stranded, id+": on "+node+", owner "+owner)
		}
		for i := 1; i < len(owners); i++ {
			if owners[i][id] != owner {
				f.Disagree = append(f.Disagree, fmt.Sprintf("%s: %s says %s, %s says %s", id, cl.Balancers[0].Name, owner, cl.Balancers[i].Name, owners[i][id]))
			}
		}
		if node != "" {
			on[node]++
		}
	}
	for _, n := range cl.Nodes {
		held, err := nodeSessions(ctx, n.Addr)
		if err != nil {
			f.Unreachable = append(f.Unreachable, n.Name)
			continue
		}
		if held > on[n.Name] {
			if f.Ghosts == nil {
				f.Ghosts = map[string]int{}
			}
			f.Ghosts[n.Name] = held - on[n.Name]
		}
	}
	return f
}

// nodeSessions reads ringcast_node_connections from a node's /metrics.
func nodeSessions(ctx context.Context, addr string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	v, err := testkit.Scrape(ctx, "http://"+addr+"/metrics", "ringcast_node_connections")
	return int(v), err
}

// timeline samples the balancers' /v1/cluster and every node's own session
// count once a second.
type timeline struct {
	cl  *clustertest.Cluster
	clk clock
	out io.Writer // nil: silent

	mu      sync.Mutex
	samples []sample
}

type sample struct {
	T           float64                `json:"t"`
	Nodes       map[string]*nodeSample `json:"nodes"`
	ViewsDiffer bool                   `json:"views_differ,omitempty"` // balancers disagree on the alive nodes
}

type nodeSample struct {
	State   string `json:"state"`   // as the first answering balancer sees it; "" unknown
	Relayed int    `json:"relayed"` // connections the balancers relay to it
	Held    int    `json:"held"`    // sessions the node itself holds; -1 when it did not answer
}

func (tl *timeline) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		tl.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (tl *timeline) sample(ctx context.Context) {
	s := sample{T: tl.clk.now().Seconds(), Nodes: map[string]*nodeSample{}}
	for _, n := range tl.cl.Nodes {
		s.Nodes[n.Name] = &nodeSample{Held: -1}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var views []string
	for i := range tl.cl.Balancers {
		wg.Go(func() {
			ci, err := tl.cl.Info(ctx, i)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			views = append(views, strings.Join(ci.Alive(), ","))
			for _, n := range ci.Nodes {
				if ns := s.Nodes[n.ID]; ns != nil {
					ns.Relayed += n.Connections
					if ns.State == "" || i == 0 {
						ns.State = n.State
					}
				}
			}
		})
	}
	for _, n := range tl.cl.Nodes {
		wg.Go(func() {
			if held, err := nodeSessions(ctx, n.Addr); err == nil {
				mu.Lock()
				s.Nodes[n.Name].Held = held
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, v := range views {
		s.ViewsDiffer = s.ViewsDiffer || v != views[0]
	}
	tl.mu.Lock()
	tl.samples = append(tl.samples, s)
	tl.mu.Unlock()
	if tl.out != nil {
		line := fmt.Sprintf("[%6.1fs]", s.T)
		for _, n := range tl.cl.Nodes {
			line += fmt.Sprintf(" %s %s", n.Name, s.Nodes[n.Name].cell())
		}
		if s.ViewsDiffer {
			line += " (balancers differ)"
		}
		fmt.Fprintln(tl.out, line)
	}
}

func (tl *timeline) snapshot() []sample {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return slices.Clone(tl.samples)
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// lockedWriter serialises the writes of several goroutines to one writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
