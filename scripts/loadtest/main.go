// Command loadtest drives a ringcast cluster with many WebSocket clients and
// HTTP publishes and prints what it held and delivered: connections held,
// publishes accepted, deliveries per second, delivery latency p50/p99/p999,
// missing deliveries, errors and close codes, and (with -local or -cpu-pid)
// the servers' CPU per 1,000 deliveries.
//
// Clients are spread over child processes (this binary re-run in a hidden
// mode; at most -per-proc each, under the 20,000-fd limit). Against a
// loopback cluster each process dials from -sources addresses of its own
// (127.0.<process+1>.10 and up), as users behind many addresses would, so
// a balancer's per-address limits see no single address flooding; against
// any other host the system picks the source. Client i subscribes to channel
// <prefix>-c<i % channels>. Publishes go to POST /v1/publish at -rate per
// second in total (0: as fast as -publishers closed loops go), round-robin
// over the channels; each carries its send time, so every subscriber
// measures delivery latency on this machine's clock. Messages published
// inside the measured window are counted against the deliveries they should
// have made (accepted publishes × the channel's subscribers).
//
// Point it at a running cluster:
//
//	go run ./scripts/loadtest -url ws://127.0.0.1:8080/ws -clients 5000 -channels 50 -rate 200 -size 64 -duration 10s
//
// or have it start a local one (real binaries, loopback) and measure the
// nodes' CPU too; -direct connects clients and publishes straight to node n1:
//
//	go run ./scripts/loadtest -local 1 -direct -clients 5000 -channels 1 -rate 0 -publishers 8
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/proc"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == clientMode {
		if err := runClient(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest client:", err)
			os.Exit(1)
		}
		return
	}
	proc.Main("loadtest", func(ctx context.Context, args []string, _ func(string) string, _ io.Writer) error {
		return run(ctx, args)
	})
}

type config struct {
	urls, httpURL, prefix, apiKey, cpuPids string
	clients, channels, perProc, conc       int
	sources                                int
	publishers, size, local                int
	rate                                   float64
	direct                                 bool
	connectTimeout, warmup, duration       time.Duration
	drain                                  time.Duration
	nodeArgs                               string
}

func run(ctx context.Context, args []string) error {
	var cfg config
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.StringVar(&cfg.urls, "url", "", "WebSocket endpoint(s), comma-separated (balancers or nodes); client i uses the (i mod n)th")
	fs.StringVar(&cfg.httpURL, "http", "", "base URL for POST /v1/publish; default: the first -url as http")
	fs.StringVar(&cfg.apiKey, "api-key", "", "bearer key for /v1/publish, when the cluster has -api-key")
	fs.StringVar(&cfg.prefix, "prefix", "lt", "client id and channel name prefix")
	fs.IntVar(&cfg.clients, "clients", 1000, "WebSocket clients")
	fs.IntVar(&cfg.channels, "channels", 10, "channels; client i subscribes to <prefix>-c<i mod channels>")
	fs.IntVar(&cfg.perProc, "per-proc", 6000, "clients per client process (each process may hold 20,000 fds)")
	fs.IntVar(&cfg.sources, "sources", 200, "source addresses per client process against a loopback cluster (1-240; 1: one address per process)")
	fs.IntVar(&cfg.conc, "conc", 200, "dials in flight, over all client processes")
	fs.Float64Var(&cfg.rate, "rate", 100, "HTTP publishes per second in total (0: closed loop, as fast as -publishers go)")
	fs.IntVar(&cfg.publishers, "publishers", 8, "concurrent HTTP publishers")
	fs.IntVar(&cfg.size, "size", 64, "message data size in bytes (a JSON object padded to this size)")
	fs.DurationVar(&cfg.connectTimeout, "connect-timeout", 2*time.Minute, "how long all clients may take to be held")
	fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "publishing before the measured window")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured window")
	fs.DurationVar(&cfg.drain, "drain", 3*time.Second, "after the window, wait at most this long for deliveries to stop arriving")
	fs.StringVar(&cfg.cpuPids, "cpu-pid", "", "comma-separated server pids whose CPU time is reported per 1,000 deliveries")
	fs.IntVar(&cfg.local, "local", 0, "start a local cluster of this many nodes and one balancer instead of -url")
	fs.BoolVar(&cfg.direct, "direct", false, "with -local: clients and publishes go straight to node n1, not through the balancer")
	fs.StringVar(&cfg.nodeArgs, "node-args", "", "with -local: extra node flags, space-separated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (cfg.urls == "") == (cfg.local == 0) {
		return errors.New("give -url (a running cluster) or -local N (start one)")
	}
	if cfg.clients < 1 || cfg.channels < 1 || cfg.perProc < 1 || cfg.perProc > 18000 || cfg.conc < 1 ||
		cfg.sources < 1 || cfg.sources > 240 || cfg.rate < 0 || cfg.publishers < 1 || cfg.size < 1 || cfg.duration <= 0 {
		return errors.New("need -clients, -channels, -conc, -publishers, -size ≥ 1, 1 ≤ -per-proc ≤ 18000, 1 ≤ -sources ≤ 240, -rate ≥ 0, -duration > 0")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	var pids []pidName
	if cfg.local > 0 {
		o := clustertest.Options{Nodes: cfg.local, Heartbeat: "30s", BalancerArgs: clustertest.NoAdmissionLimits}
		if cfg.nodeArgs != "" {
			o.NodeArgs = strings.Fields(cfg.nodeArgs)
		}
		c, err := clustertest.Start(ctx, o)
		if err != nil {
			return err
		}
		defer c.Close()
		defer c.RemoveLogs()
		if cfg.direct {
			cfg.urls = "ws://" + c.Nodes[0].Addr + "/ws"
		} else {
			cfg.urls = c.URL()
		}
		for _, p := range c.All() {
			pids = append(pids, pidName{p.Pid(), p.Name})
		}
	}
	for _, s := range strings.Split(cfg.cpuPids, ",") {
		if s = strings.TrimSpace(s); s != "" {
			pid, err := strconv.Atoi(s)
			if err != nil {
				return fmt.Errorf("-cpu-pid %q: %w", s, err)
			}
			pids = append(pids, pidName{pid, "pid " + s})
		}
	}
	if cfg.httpURL == "" {
		u := strings.Split(cfg.urls, ",")[0]
		u = strings.Replace(strings.Replace(u, "wss://", "https://", 1), "ws://", "http://", 1)
		cfg.httpURL = strings.TrimSuffix(u, "/ws")
	}

	fmt.Println("command: go run ./scripts/loadtest " + strings.Join(args, " "))
	fmt.Printf("machine: %d CPUs, load average %s at start (shared machines: compare runs made back to back)\n", runtime.NumCPU(), clustertest.LoadAvg())
	fmt.Printf("target: %s, publishes to %s/v1/publish\n", cfg.urls, cfg.httpURL)
	rate := "closed loop"
	if cfg.rate > 0 {
		rate = fmt.Sprintf("%.0f/s", cfg.rate)
	}
	fmt.Printf("load: %d clients in %d processes, %d channels, publishes %s by %d publishers, %d B data, %v warm-up, %v window\n",
		cfg.clients, (cfg.clients+cfg.perProc-1)/cfg.perProc, cfg.channels, rate, cfg.publishers, cfg.size, cfg.warmup, cfg.duration)

	setup0 := cpuTimes(pids)
	fl, err := startFleet(ctx, self, cfg)
	if err != nil {
		return err
	}
	defer fl.stop()
	t0 := time.Now()
	if err := fl.waitHeld(ctx, cfg.clients, cfg.connectTimeout); err != nil {
		return err
	}
	up := fl.sum()
	fmt.Printf("connections held: %d of %d after %v, %d dials\n", up.Held, cfg.clients, time.Since(t0).Round(time.Millisecond), up.Dials)
	// What a connection costs each server to set up (upgrade, welcome,
	// its subscription), idle time of the connect phase included.
	setup1 := cpuTimes(pids)
	for i, p := range pids {
		d := setup1[i] - setup0[i]
		fmt.Printf("set-up cpu %s (pid %d): %v over the connect phase, %.1f µs per connection held, %.1f µs per dial\n",
			p.name, p.pid, d.Round(time.Millisecond), float64(d.Microseconds())/float64(max(up.Held, 1)),
			float64(d.Microseconds())/float64(max(up.Dials, 1)))
	}

	pub := newPublisher(cfg)
	pctx, stopPub := context.WithCancel(ctx)
	pubDone := make(chan struct{})
	go func() {
		pub.run(pctx)
		close(pubDone)
	}()
	proc.Sleep(ctx, cfg.warmup)
	before := fl.sum()
	cpu0 := cpuTimes(pids)
	minHeld := before.Held
	pub.window.Store(true)
	start := time.Now()
	for time.Since(start) < cfg.duration && ctx.Err() == nil {
		proc.Sleep(ctx, min(reportEvery, cfg.duration-time.Since(start)))
		minHeld = min(minHeld, fl.sum().Held)
	}
	pub.window.Store(false)
	window := time.Since(start)
	mid := fl.sum()
	cpu1 := cpuTimes(pids)
	stopPub()
	<-pubDone
	// Wait for the window's deliveries to stop arriving.
	last, quiet := mid.Window, 0
	for deadline := time.Now().Add(cfg.drain); time.Now().Before(deadline) && quiet < 2 && ctx.Err() == nil; {
		proc.Sleep(ctx, reportEvery)
		if w := fl.sum().Window; w == last {
			quiet++
		} else {
			last, quiet = w, 0
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	final := fl.stop()

	fmt.Println()
	accepted := pub.accepted.Load()
	fmt.Printf("publishes in window: %d accepted (%.0f/s), %d failed, %d not sent (publishers behind the rate)\n",
		accepted, float64(accepted)/window.Seconds(), pub.failed.Load(), pub.behind.Load())
	if e := pub.firstError(); e != "" {
		fmt.Printf("  first publish error: %s\n", e)
	}
	var expected uint64
	for ch := range cfg.channels {
		subs := cfg.clients / cfg.channels
		if ch < cfg.clients%cfg.channels {
			subs++
		}
		expected += pub.perChannel[ch].Load() * uint64(subs)
	}
	got := final.Window
	fmt.Printf("deliveries of the window's messages: %d of %d expected (%d missing, %.3f %%), %.0f/s over the window\n",
		got, expected, int64(expected)-int64(got), 100*float64(int64(expected)-int64(got))/float64(max(expected, 1)),
		float64(mid.Window-before.Window)/window.Seconds())
	fmt.Printf("delivery latency (publish sent → frame read by the client): p50 %v  p99 %v  p999 %v  max %v  (%d samples)\n",
		rnd(final.Lat.quantile(0.50)), rnd(final.Lat.quantile(0.99)), rnd(final.Lat.quantile(0.999)), rnd(final.Lat.quantile(1)), final.Lat.total())
	fmt.Printf("connections: %d held at the end, %d at least during the window; %d dials in all\n", final.Held, minHeld, final.Dials)
	fmt.Printf("client errors: %d", final.Errors)
	if final.FirstError != "" {
		fmt.Printf(" (first: %s)", final.FirstError)
	}
	fmt.Println()
	codes := "none"
	if len(final.Codes) > 0 {
		var cs []string
		for _, k := range slices.Sorted(maps.Keys(final.Codes)) {
			cs = append(cs, fmt.Sprintf("%s ×%d", k, final.Codes[k]))
		}
		codes = strings.Join(cs, ", ")
	}
	fmt.Printf("close codes and reconnect requests received: %s\n", codes)
	deliv := mid.Window - before.Window
	for i, p := range pids {
		d := cpu1[i] - cpu0[i]
		per := "-"
		if deliv > 0 {
			per = fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000/(float64(deliv)/1000))
		}
		fmt.Printf("cpu %s (pid %d): %v over the window = %.0f %% of a core, %s per 1,000 deliveries, %.1f µs per accepted publish\n",
			p.name, p.pid, d.Round(time.Millisecond), 100*d.Seconds()/window.Seconds(), per,
			float64(d.Microseconds())/float64(max(accepted, 1)))
	}
	fmt.Printf("load average at end: %s\n", clustertest.LoadAvg())
	return nil
}

func rnd(d time.Duration) time.Duration {
	switch {
	case d > 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d > 10*time.Microsecond:
		return d.Round(time.Microsecond)
	}
	return d
}

// fleet is the client processes.
type fleet struct {
	mu    sync.Mutex
	procs []*clientProc
}

type clientProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	last  report        // latest report line; guarded by fleet.mu
	done  chan struct{} // closed when stdout ended
	err   error
}

func startFleet(ctx context.Context, self string, cfg config) (*fleet, error) {
	fl := &fleet{}
	k := (cfg.clients + cfg.perProc - 1) / cfg.perProc
	for n, lo := 0, 0; lo < cfg.clients; n, lo = n+1, lo+cfg.perProc {
		hi := min(lo+cfg.perProc, cfg.clients)
		cmd := exec.CommandContext(ctx, self, clientMode, "-urls", cfg.urls, "-prefix", cfg.prefix,
			"-from", strconv.Itoa(lo), "-to", strconv.Itoa(hi),
			"-laddr", laddr(cfg.urls, n), "-sources", strconv.Itoa(cfg.sources),
			"-conc", strconv.Itoa(max(1, cfg.conc/k)), "-channels", strconv.Itoa(cfg.channels))
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			fl.stop()
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			fl.stop()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			fl.stop()
			return nil, fmt.Errorf("start client process: %w", err)
		}
		p := &clientProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
		fl.procs = append(fl.procs, p)
		go fl.read(p, out)
	}
	return fl, nil
}

func (fl *fleet) read(p *clientProc, out io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var r report
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			p.err = fmt.Errorf("decode client report: %w", err)
			return
		}
		fl.mu.Lock()
		p.last = r
		fl.mu.Unlock()
	}
}

// sum adds up the latest reports.
func (fl *fleet) sum() report {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	var t report
	t.Codes = map[string]int{}
	for _, p := range fl.procs {
		r := p.last
		t.Held += r.Held
		t.Deliveries += r.Deliveries
		t.Window += r.Window
		t.Dials += r.Dials
		t.Errors += r.Errors
		if t.FirstError == "" {
			t.FirstError = r.FirstError
		}
		t.Lat.merge(r.Lat)
		for k, v := range r.Codes {
			t.Codes[k] += v
		}
	}
	return t
}

// waitHeld waits until n clients are held.
func (fl *fleet) waitHeld(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s := fl.sum()
		if s.Held >= n {
			return nil
		}
		for _, p := range fl.procs {
			select {
			case <-p.done:
				return fmt.Errorf("a client process exited early: %v", p.err)
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d clients held after %v (%d errors, first: %s)", s.Held, n, timeout, s.Errors, s.FirstError)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		proc.Sleep(ctx, 200*time.Millisecond)
	}
}

// stop closes the client processes' stdin, which makes each print a final
// report and exit, waits for them and returns the final sum.
func (fl *fleet) stop() report {
	for _, p := range fl.procs {
		p.stdin.Close()
	}
	for _, p := range fl.procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		p.cmd.Wait()
	}
	return fl.sum()
}

// publisher posts to /v1/publish.
type publisher struct {
	cfg        config
	client     *http.Client
	pad        string
	window     atomic.Bool // publishes now are inside the measured window
	accepted   atomic.Uint64
	failed     atomic.Uint64
	behind     atomic.Uint64
	perChannel []atomic.Uint64 // accepted inside the window, by channel
	next       atomic.Uint64   // round-robin channel counter
	errMu      sync.Mutex
	firstErr   string
}

func newPublisher(cfg config) *publisher {
	// {"lt_t":1234567890123456789,"lt_w":1,"p":""} is 44 bytes.
	return &publisher{cfg: cfg, pad: strings.Repeat("x", max(0, cfg.size-44)),
		perChannel: make([]atomic.Uint64, cfg.channels),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: cfg.publishers, MaxConnsPerHost: cfg.publishers}}}
}

func (p *publisher) firstError() string {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.firstErr
}

func (p *publisher) run(ctx context.Context) {
	tokens := make(chan struct{}, p.cfg.publishers)
	var wg sync.WaitGroup
	for range p.cfg.publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if p.cfg.rate > 0 {
					select {
					case <-tokens:
					case <-ctx.Done():
						return
					}
				} else if ctx.Err() != nil {
					return
				}
				p.publish()
			}
		}()
	}
	if p.cfg.rate > 0 {
		// Hand out tokens at the rate; a token nobody takes is counted.
		start, sent := time.Now(), 0.0
		t := time.NewTicker(time.Millisecond)
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case now := <-t.C:
				for due := now.Sub(start).Seconds() * p.cfg.rate; sent+1 <= due; sent++ {
					select {
					case tokens <- struct{}{}:
					default:
						if p.window.Load() {
							p.behind.Add(1)
						}
					}
				}
			}
		}
		t.Stop()
	}
	wg.Wait()
}

func (p *publisher) publish() {
	ch := int(p.next.Add(1) % uint64(p.cfg.channels))
	w := 0
	if p.window.Load() {
		w = 1
	}
	body := fmt.Sprintf(`{"channel":"%s-c%d","data":{"lt_t":%d,"lt_w":%d,"p":"%s"}}`, p.cfg.prefix, ch, time.Now().UnixNano(), w, p.pad)
	// Not cancelled with ctx: a publish in flight when the window closes
	// may be delivered, so its answer is awaited and counted.
	req, err := http.NewRequest(http.MethodPost, p.cfg.httpURL+"/v1/publish", strings.NewReader(body))
	if err != nil {
		p.fail(w, err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	if p.cfg.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.cfg.apiKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		p.fail(w, err)
		return
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		p.fail(w, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b))))
		return
	}
	if w == 1 {
		p.accepted.Add(1)
		p.perChannel[ch].Add(1)
	}
}

func (p *publisher) fail(w int, err error) {
	if w == 1 {
		p.failed.Add(1)
	}
	p.errMu.Lock()
	if p.firstErr == "" {
		p.firstErr = err.Error()
	}
	p.errMu.Unlock()
}

type pidName struct {
	pid  int
	name string
}

// cpuTimes returns each pid's user+system CPU time so far, from /proc.
func cpuTimes(pids []pidName) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, p := range pids {
		out[i] = clustertest.CPUTime(p.pid)
	}
	return out
}

// laddr is client process n's source: a 127.0.<n+1> prefix when the first
// target is on loopback, else the system's choice.
func laddr(urls string, n int) string {
	u, err := url.Parse(strings.Split(urls, ",")[0])
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		if u.Hostname() != "localhost" {
			return ""
		}
	}
	return fmt.Sprintf("127.0.%d", 1+n%250)
}
