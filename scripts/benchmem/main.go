// Command benchmem measures what an idle WebSocket costs: node RSS per
// subscribed connection (direct) and balancer RSS and fds per proxied one.
//
// It starts real balancer and node processes (clustertest), opens the
// connections from child processes (this binary re-run with -client, each
// holding at most -per-proc connections from its own 127.0.0.x source
// address) and reads /proc/<pid>/status and /proc/<pid>/fd once RSS is
// stable. Run from the module root:
//
//	go run ./scripts/benchmem [-n 5000] [-n2 10000] [-rounds 2] [-skip-node] [-skip-balancer] [-tls]
//	    [-node-args "-idle-wait epoll"] [-heartbeat 10s] [-cpu 10s]
//
// With -tls every balancer round is repeated with the balancer serving
// wss:// (-tls-cert/-tls-key, a self-signed pair made with openssl). With
// -heartbeat the nodes tell that heartbeat and every client pings once per
// interval (as pkg/client does) instead of staying silent; the cpu column is
// the measured process's CPU per second of wall time over -cpu, once its
// memory was measured: what holding the idle connections costs.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/proc"
)

type config struct {
	n, n2, rounds, conc, perProc, channels int
	skipNode, skipBalancer, tls            bool
	nodeArgs                               []string
	heartbeat, cpu                         time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == clientFlag {
		if err := runClient(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "benchmem client:", err)
			os.Exit(1)
		}
		return
	}
	proc.Main("benchmem", func(ctx context.Context, args []string, _ func(string) string, _ io.Writer) error {
		return run(ctx, args)
	})
}

func run(ctx context.Context, args []string) error {
	var cfg config
	fs := flag.NewFlagSet("benchmem", flag.ContinueOnError)
	fs.IntVar(&cfg.n, "n", 5000, "idle connections per measurement")
	fs.IntVar(&cfg.n2, "n2", 10000, "second, larger node measurement (0 = off)")
	fs.IntVar(&cfg.rounds, "rounds", 2, "repeat every measurement on a fresh cluster this many times")
	fs.IntVar(&cfg.conc, "conc", 200, "dials in flight, over all client processes")
	fs.IntVar(&cfg.perProc, "per-proc", 9000, "connections per client process (fd limit 20,000)")
	fs.IntVar(&cfg.channels, "channels", 100, "channels the connections are spread over")
	fs.BoolVar(&cfg.skipNode, "skip-node", false, "skip the node measurement")
	fs.BoolVar(&cfg.skipBalancer, "skip-balancer", false, "skip the balancer measurement")
	fs.BoolVar(&cfg.tls, "tls", false, "also measure the balancer serving wss:// (needs openssl)")
	nodeArgs := fs.String("node-args", "", `extra node flags, space-separated (e.g. "-idle-wait epoll")`)
	fs.DurationVar(&cfg.heartbeat, "heartbeat", 0, "node heartbeat; clients ping once per interval (0 = 5m and silent clients)")
	fs.DurationVar(&cfg.cpu, "cpu", 10*time.Second, "window of the CPU measurement (0 = off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.nodeArgs = strings.Fields(*nodeArgs)
	if cfg.n <= 0 || cfg.rounds <= 0 || cfg.conc <= 0 || cfg.perProc <= 0 || cfg.channels <= 0 || cfg.heartbeat < 0 || cfg.cpu < 0 {
		return errors.New("-n, -rounds, -conc, -per-proc and -channels must be positive, -heartbeat and -cpu not negative")
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read fd limit: %w", err)
	}
	// Headroom for listeners, gossip, mesh links and log files.
	const spare = 200
	if cfg.n2 > 0 && cfg.n2+spare > int(lim.Cur) {
		fmt.Printf("-n2 %d skipped: a node would need more than its %d fds\n", cfg.n2, lim.Cur)
		cfg.n2 = 0
	}
	if cfg.perProc+spare > int(lim.Cur) {
		return fmt.Errorf("-per-proc %d needs more than the %d fds a process may hold", cfg.perProc, lim.Cur)
	}
	if !cfg.skipBalancer && 2*cfg.n+spare > int(lim.Cur) {
		return fmt.Errorf("-n %d needs %d balancer fds, the limit is %d", cfg.n, 2*cfg.n+spare, lim.Cur)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	if _, err := clustertest.Build(); err != nil {
		return err
	}
	fmt.Printf("command: %s\n", strings.Join(append([]string{"go run ./scripts/benchmem"}, args...), " "))
	for _, k := range []string{"GOGC", "GOMEMLIMIT", "GODEBUG"} {
		if v, ok := os.LookupEnv(k); ok {
			fmt.Printf("env (inherited by every process): %s=%s\n", k, v)
		}
	}
	fmt.Printf("load average at start: %s\n\n", clustertest.LoadAvg())
	defer func() { fmt.Printf("\nload average at end: %s\n", clustertest.LoadAvg()) }()
	fmt.Printf(rowFormat, "what", "round", "conns", "rss_before", "rss_after", "per_conn", "fds/conn",
		"go_heap/conn", "go_stack/conn", "goroutines/conn", "cpu")
	b := &bench{cfg: cfg, self: self}
	for r := 1; r <= cfg.rounds; r++ {
		if !cfg.skipNode {
			if err := b.node(ctx, r); err != nil {
				return fmt.Errorf("node round %d: %w", r, err)
			}
		}
		if !cfg.skipBalancer {
			if err := b.balancer(ctx, r, false); err != nil {
				return fmt.Errorf("balancer round %d: %w", r, err)
			}
		}
		if !cfg.skipBalancer && cfg.tls {
			if err := b.balancer(ctx, r, true); err != nil {
				return fmt.Errorf("balancer over TLS, round %d: %w", r, err)
			}
		}
	}
	return nil
}

type bench struct {
	cfg   config
	self  string
	addrs int // source addresses handed out so far
}

// node measures one node with idle subscribed connections straight to it.
func (b *bench) node(ctx context.Context, round int) error {
	c, err := clustertest.Start(ctx, clustertest.Options{Nodes: 1, Heartbeat: b.heartbeat(), NodeArgs: b.cfg.nodeArgs, BalancerArgs: clustertest.NoAdmissionLimits})
	if err != nil {
		return err
	}
	defer c.Close()
	n := c.Nodes[0]
	logf("node pid %d at %s", n.Pid(), n.Addr)
	f := &fleet{bench: b}
	defer f.close()
	before, err := measure(ctx, n)
	if err != nil {
		return err
	}
	url := "ws://" + n.Addr + "/ws"
	open := 0
	for _, want := range []int{b.cfg.n, b.cfg.n2} {
		if want <= open {
			continue
		}
		if err := f.open(ctx, url, open, want); err != nil {
			return err
		}
		open = want
		after, err := b.measureAfter(ctx, n)
		if err != nil {
			return err
		}
		b.row("node, idle subscribed (direct)", round, open, before, after)
	}
	return nil
}

// balancer measures the balancer with idle connections relayed to two
// nodes, over wss:// when withTLS.
func (b *bench) balancer(ctx context.Context, round int, withTLS bool) error {
	o := clustertest.Options{Nodes: 2, Heartbeat: b.heartbeat(), NodeArgs: b.cfg.nodeArgs, BalancerArgs: clustertest.NoAdmissionLimits}
	what := "balancer, idle proxied"
	if withTLS {
		dir, err := os.MkdirTemp("", "benchmem-tls-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if o.TLSCert, o.TLSKey, o.TLSRoots, err = selfSigned(dir); err != nil {
			return err
		}
		what = "balancer, idle proxied over TLS"
	}
	c, err := clustertest.Start(ctx, o)
	if err != nil {
		return err
	}
	defer c.Close()
	p := c.Balancers[0]
	logf("balancer pid %d at %s", p.Pid(), p.Addr)
	f := &fleet{bench: b}
	defer f.close()
	before, err := measure(ctx, p)
	if err != nil {
		return err
	}
	if err := f.open(ctx, c.URL(), 0, b.cfg.n); err != nil {
		return err
	}
	after, err := b.measureAfter(ctx, p)
	if err != nil {
		return err
	}
	b.row(what, round, b.cfg.n, before, after)
	return nil
}

// selfSigned makes a self-signed pair for 127.0.0.1 in dir with openssl, as
// the README's TLS recipe does, and a pool that trusts it.
func selfSigned(dir string) (cert, key string, pool *x509.CertPool, err error) {
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
		"-keyout", key, "-out", cert).CombinedOutput()
	if err != nil {
		return "", "", nil, fmt.Errorf("openssl: %w: %s", err, out)
	}
	pem, err := os.ReadFile(cert)
	if err != nil {
		return "", "", nil, err
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return cert, key, pool, nil
}

// heartbeat is the nodes' -heartbeat.
func (b *bench) heartbeat() string {
	if b.cfg.heartbeat == 0 {
		return "5m"
	}
	return b.cfg.heartbeat.String()
}

// measureAfter measures p holding its connections: memory, then CPU over
// the -cpu window.
func (b *bench) measureAfter(ctx context.Context, p *clustertest.Proc) (sample, error) {
	s, err := measure(ctx, p)
	if err != nil || b.cfg.cpu == 0 {
		return s, err
	}
	t0, c0 := time.Now(), clustertest.CPUTime(p.Pid())
	select {
	case <-ctx.Done():
		return s, ctx.Err()
	case <-time.After(b.cfg.cpu):
	}
	s.cpu = float64(clustertest.CPUTime(p.Pid())-c0) / float64(time.Since(t0))
	// Connections lost meanwhile (a missed heartbeat) void the figure; a
	// /metrics connection or two may come and go.
	if _, fds, err := footprint(p.Pid()); err != nil {
		return s, err
	} else if fds < s.fds-2 {
		s.lost = s.fds - fds
	}
	return s, nil
}

func (b *bench) row(what string, round, conns int, before, after sample) {
	per := func(a, z float64) float64 { return (z - a) / float64(conns) }
	mark := ""
	if !after.stable || !before.stable {
		mark = " (rss unsettled)"
	}
	if after.lost > 0 {
		mark += fmt.Sprintf(" (%d conns lost in the cpu window)", after.lost)
	}
	fmt.Printf(rowFormat, what+mark, strconv.Itoa(round), strconv.Itoa(conns),
		fmt.Sprintf("%d KB", before.rssKB), fmt.Sprintf("%d KB", after.rssKB),
		fmt.Sprintf("%.2f KB", per(float64(before.rssKB), float64(after.rssKB))),
		fmt.Sprintf("%.2f", per(float64(before.fds), float64(after.fds))),
		fmt.Sprintf("%.2f KB", per(before.heap, after.heap)/1024),
		fmt.Sprintf("%.2f KB", per(before.stack, after.stack)/1024),
		fmt.Sprintf("%.2f", per(before.goroutines, after.goroutines)), cpuText(after))
}

// cpuText is a sample's CPU in milliseconds per second, or "-".
func cpuText(s sample) string {
	if s.cpu < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f ms/s", 1000*s.cpu)
}

const rowFormat = "%-46s %5s %6s %11s %11s %9s %8s %12s %13s %15s %10s\n"

// sample is one process's footprint.
type sample struct {
	rssKB, fds              int
	heap, stack, goroutines float64 // the Go runtime's view, from /metrics
	stable                  bool    // RSS held still for settleWindow
	cpu                     float64 // CPU seconds per second over the -cpu window; -1 = not measured
	lost                    int     // fds fewer at the end of the -cpu window than at its start
}

const (
	settlePoll    = 100 * time.Millisecond
	settleWindow  = time.Second
	settleTimeout = 20 * time.Second
)

// measure reads p's runtime metrics, then waits until its RSS has moved by
// at most max(64 KB, 1 %) over settleWindow and returns the window's mean.
// (An idle Go process still allocates, e.g. gossip packet buffers, so its
// RSS saws up and down between collections; the mean damps that.)
func measure(ctx context.Context, p *clustertest.Proc) (sample, error) {
	s := sample{cpu: -1}
	m, err := goMetrics(ctx, "http://"+p.Addr+"/metrics")
	if err != nil {
		return s, err
	}
	s.heap, s.stack, s.goroutines = m["go_memstats_heap_inuse_bytes"], m["go_memstats_stack_inuse_bytes"], m["go_goroutines"]
	pid := p.Pid()
	if pid == 0 {
		return s, fmt.Errorf("%s is not running", p.Name)
	}
	start := time.Now()
	defer func() {
		logf("%s rss %d KB, %d fds, settled %v after %v", p.Name, s.rssKB, s.fds, s.stable, time.Since(start).Round(time.Millisecond))
	}()
	var hist []int
	t := time.NewTicker(settlePoll)
	defer t.Stop()
	for {
		var rss int
		if rss, s.fds, err = footprint(pid); err != nil {
			return s, err
		}
		hist = append(hist, rss)
		if n := int(settleWindow/settlePoll) + 1; len(hist) >= n {
			hist = hist[len(hist)-n:]
			lo, hi, sum := hist[0], hist[0], 0
			for _, v := range hist {
				lo, hi, sum = min(lo, v), max(hi, v), sum+v
			}
			s.rssKB = sum / n
			s.stable = hi-lo <= max(64, rss/100)
			if s.stable || time.Since(start) > settleTimeout {
				return s, nil
			}
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-t.C:
		}
	}
}

// footprint returns a process's resident set in KB and its open fds.
func footprint(pid int) (rssKB, fds int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rssKB, err = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				return 0, 0, fmt.Errorf("parse VmRSS %q: %w", v, err)
			}
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return rssKB, len(ents), err
}

// goMetrics fetches the unlabelled samples of a Prometheus text endpoint.
func goMetrics(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			m[name] = f
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	return m, nil
}

// logf reports progress on stderr, keeping stdout for the table.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "# "+format+"\n", args...)
}

// fleet is the client processes holding one measurement's connections.
type fleet struct {
	*bench
	procs []*exec.Cmd
	wg    sync.WaitGroup // stdout readers
}

// open starts client processes for client ids m<from>…m<to-1> and waits
// until every connection is subscribed.
func (f *fleet) open(ctx context.Context, url string, from, to int) error {
	start := time.Now()
	defer func() { logf("opened m%d…m%d in %v", from, to-1, time.Since(start).Round(time.Millisecond)) }()
	k := (to - from + f.cfg.perProc - 1) / f.cfg.perProc
	ready := make(chan error, k)
	for lo := from; lo < to; lo += f.cfg.perProc {
		hi := min(lo+f.cfg.perProc, to)
		f.addrs++
		cmd := exec.Command(f.self, clientFlag, "-url", url,
			"-from", strconv.Itoa(lo), "-to", strconv.Itoa(hi),
			"-laddr", fmt.Sprintf("127.0.0.%d", 10+f.addrs%240),
			"-conc", strconv.Itoa(max(1, f.cfg.conc/k)), "-channels", strconv.Itoa(f.cfg.channels),
			"-ping", f.cfg.heartbeat.String())
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if _, err := cmd.StdinPipe(); err != nil { // EOF tells the client to exit
			return err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start client: %w", err)
		}
		f.procs = append(f.procs, cmd)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			line, _ := bufio.NewReader(out).ReadString('\n')
			if line != readyLine+"\n" {
				ready <- fmt.Errorf("client for m%d…m%d exited before all were subscribed", lo, hi-1)
				return
			}
			ready <- nil
		}()
	}
	for range k {
		select {
		case err := <-ready:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// close kills the client processes and waits for them.
func (f *fleet) close() {
	for _, cmd := range f.procs {
		cmd.Process.Kill()
		cmd.Wait()
	}
	f.wg.Wait()
	f.procs = nil
}
