// Command benchproxy compares WebSocket traffic through one hop: direct to
// the backend, through nginx (hash $arg_client_id consistent), through HAProxy
// (balance url_param client_id, hash-type consistent), through pkg/proxy.
// -mode echo measures closed-loop echo round trips on open connections;
// -mode connect measures new connections per second (open, echo once, close).
//
// Every part is its own process: the echo backend, the relay and the load
// generator are this binary re-run in a hidden mode; nginx and HAProxy are
// Debian's (apt-get install -y nginx-light haproxy; a missing one is skipped).
// The relay is proxy.New, the balancer's /ws handler, with a static picker
// hashing client_id over the backends with pkg/ring: the balancer's hot path
// without gossip. Paths run one after another in every round, in rotating
// order, and the summary reports the median of the per-round ratios with
// their range. Run from the module root:
//
//	go run ./scripts/benchproxy [-mode echo|connect] [-tls] [-conns 100] [-size 64] [-warmup 2s] [-duration 6s] [-rounds 5] [-cpuprofile relay.pprof] [-baseline old-benchproxy]
//
// -baseline adds a row relayed by another build of this command (built from
// an earlier commit with go build -o old-benchproxy ./scripts/benchproxy),
// measured in the same rounds: an A/B of the relay under the same load.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
)

// Hidden first arguments that select a child mode.
const (
	echoMode  = "-echo-child"
	relayMode = "-relay-child"
	loadMode  = "-load-child"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case echoMode:
		err = runEcho(ctx, os.Args[2:])
	case relayMode:
		err = runRelay(ctx, os.Args[2:])
	case loadMode:
		err = runLoad(ctx, os.Args[2:])
	default:
		mode = "benchproxy"
		err = run(ctx, os.Args[1:])
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", strings.TrimPrefix(mode, "-"), err)
		os.Exit(1)
	}
}

type config struct {
	conns, size, rounds, backends int
	warmup, duration              time.Duration
	cpuprofile, nginx, haproxy    string
	baseline                      string
	mode                          string
	tls                           bool
}

func run(ctx context.Context, args []string) error {
	var cfg config
	fs := flag.NewFlagSet("benchproxy", flag.ContinueOnError)
	fs.IntVar(&cfg.conns, "conns", 100, "concurrent connections, each a closed loop")
	fs.IntVar(&cfg.size, "size", 64, "text message size in bytes")
	fs.IntVar(&cfg.backends, "backends", 3, "echo listeners (one process) playing the nodes")
	fs.IntVar(&cfg.rounds, "rounds", 5, "rounds over all paths, in rotating order; the summary is the median of per-round ratios")
	fs.StringVar(&cfg.mode, "mode", "echo", "echo: round trips on open connections; connect: new connections per second (open, echo once, close)")
	fs.StringVar(&cfg.haproxy, "haproxy", "haproxy", "HAProxy binary; the haproxy row is skipped when it is not found")
	fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "load before measuring, per path and round")
	fs.DurationVar(&cfg.duration, "duration", 6*time.Second, "measured window, per path and round")
	fs.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write the relay process's CPU profile over each measured window to this path plus .<round>")
	fs.StringVar(&cfg.nginx, "nginx", "nginx", "nginx binary; the nginx row is skipped when it is not found")
	fs.StringVar(&cfg.baseline, "baseline", "", "another build of benchproxy (e.g. from an earlier commit): adds a \"relay baseline\" row relayed by its relay, in the same rounds")
	fs.BoolVar(&cfg.tls, "tls", false, "add a row: the relay serving wss:// (self-signed, TLS 1.3) with its goroutine relay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// The relay holds 2 fds per connection; the limit is 20,000 per process.
	if cfg.conns < 1 || cfg.conns > 9000 || cfg.size < 1 || cfg.size > 1<<20 || cfg.backends < 1 ||
		cfg.rounds < 1 || cfg.warmup < 0 || cfg.duration <= 0 {
		return errors.New("need 1 ≤ -conns ≤ 9000, 1 ≤ -size ≤ 1 MiB, -backends ≥ 1, -rounds ≥ 1, -duration > 0")
	}
	unit := map[string]string{"echo": "msg", "connect": "conn"}[cfg.mode]
	if unit == "" {
		return fmt.Errorf("-mode %q: want echo or connect", cfg.mode)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	nginxBin, nginxErr := exec.LookPath(cfg.nginx)
	haproxyBin, haproxyErr := exec.LookPath(cfg.haproxy)

	var procs []*child
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	// start runs a child, stopped at return, and reads the address it prints.
	start := func(name, bin string, args ...string) (*child, string, error) {
		c, err := startChild(ctx, name, bin, args...)
		if err != nil {
			return nil, "", err
		}
		procs = append(procs, c)
		line, err := c.line(ctx, 10*time.Second)
		return c, line, err
	}
	_, line, err := start("echo", self, echoMode, "-n", fmt.Sprint(cfg.backends))
	if err != nil {
		return err
	}
	backends := strings.Split(line, ",")

	paths := []hop{{name: "direct", urls: wsURLs(backends)}}
	nginxNote := "nginx: skipped, " + fmt.Sprint(nginxErr) + " (apt-get install -y nginx-light)"
	if nginxErr == nil {
		ng, addr, version, err := startNginx(ctx, nginxBin, backends, cfg.conns)
		if err != nil {
			return err
		}
		procs = append(procs, ng)
		paths = append(paths, hop{name: "nginx", urls: wsURLs([]string{addr}), proc: ng})
		nginxNote = fmt.Sprintf("nginx: %s, worker_processes auto, upstream hash $arg_client_id consistent, proxy_http_version 1.1 + Upgrade/Connection", version)
	} else {
		fmt.Printf("nginx not found (%v): the nginx row is skipped; install it with apt-get install -y nginx-light\n\n", nginxErr)
	}
	haproxyNote := "haproxy: skipped, " + fmt.Sprint(haproxyErr) + " (apt-get install -y haproxy)"
	if haproxyErr == nil {
		hp, addr, version, err := startHAProxy(ctx, haproxyBin, backends, cfg.conns)
		if err != nil {
			return err
		}
		procs = append(procs, hp)
		paths = append(paths, hop{name: "haproxy", urls: wsURLs([]string{addr}), proc: hp})
		haproxyNote = fmt.Sprintf("haproxy: %s, nbthread = CPUs, mode http, balance url_param client_id, hash-type consistent, timeout tunnel 1h", version)
	} else {
		fmt.Printf("haproxy not found (%v): the haproxy row is skipped; install it with apt-get install -y haproxy\n\n", haproxyErr)
	}
	relayArgs := []string{relayMode, "-backends", strings.Join(backends, ",")}
	if cfg.cpuprofile != "" {
		relayArgs = append(relayArgs, "-pprof")
	}
	relay, relayAddr, err := start("relay", self, relayArgs...)
	if err != nil {
		return err
	}
	paths = append(paths, hop{name: "ringcast relay", urls: wsURLs([]string{relayAddr}), proc: relay, pprof: cfg.cpuprofile != ""})
	if cfg.baseline != "" {
		base, addr, err := start("baseline relay", cfg.baseline, relayMode, "-backends", strings.Join(backends, ","))
		if err != nil {
			return err
		}
		paths = append(paths, hop{name: "relay baseline", urls: wsURLs([]string{addr}), proc: base})
	}
	if cfg.tls {
		tlsRelay, addr, err := start("relay", self, relayMode, "-backends", strings.Join(backends, ","), "-tls")
		if err != nil {
			return err
		}
		paths = append(paths, hop{name: "ringcast relay tls", urls: []string{"wss://" + addr + "/ws"}, proc: tlsRelay})
	}

	what := "WebSocket echo round trips, %d conns × %d B text, closed loop (send, await echo, repeat)"
	if cfg.mode == "connect" {
		what = "new WebSocket connections, %d loops each opening a connection, echoing one %d B text message and closing it"
	}
	fmt.Printf("benchproxy: "+what+", %v warm-up + %v measured per path; rounds: %d, paths in rotating order\n",
		cfg.conns, cfg.size, cfg.warmup, cfg.duration, cfg.rounds)
	fmt.Println(strings.TrimSpace("command: go run ./scripts/benchproxy " + strings.Join(args, " ")))
	fmt.Printf("machine: %d CPUs, GOMAXPROCS %d per Go process; load generator, echo backend and the hop under test are separate processes sharing these cores\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Printf("load average at start: %s (the machine may be shared: compare ratios within a round, not absolute rates)\n", clustertest.LoadAvg())
	fmt.Printf("backend: one gobwas/ws echo process, %d listeners playing %d nodes (one process: the same backend cost on every path)\n", cfg.backends, cfg.backends)
	fmt.Println(nginxNote)
	fmt.Println(haproxyNote)
	fmt.Println("ringcast relay: pkg/proxy.New (the balancer's /ws handler and relay) in its own process, static picker hashing client_id over the backends with pkg/ring; no gossip or admin API")
	if cfg.baseline != "" {
		fmt.Printf("relay baseline: the same relay row, relayed by %s\n", cfg.baseline)
	}
	if cfg.cpuprofile != "" {
		fmt.Printf("profiling: the relay rows run under a CPU profile, written to %s.<round> (go tool pprof -top %s.* merges them)\n", cfg.cpuprofile, cfg.cpuprofile)
	}
	fmt.Println()

	got := make(map[string][]sample) // path name → one sample per round
	for round := range cfg.rounds {
		// Rotate the order so that no path always runs first or after the same one.
		for k := range paths {
			h := paths[(k+round)%len(paths)]
			profile := ""
			if h.pprof {
				profile = fmt.Sprintf("%s.%d", cfg.cpuprofile, round+1)
			}
			res, cpu, err := measure(ctx, self, cfg, h, profile)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", h.name, round+1, err)
			}
			got[h.name] = append(got[h.name], newSample(res, cpu))
		}
	}
	var names []string
	for _, h := range paths {
		names = append(names, h.name)
	}
	printTables(os.Stdout, names, cfg.conns, unit, got)
	fmt.Printf("load average at end: %s\n", clustertest.LoadAvg())
	return nil
}

// hop is one path under test.
type hop struct {
	name  string
	urls  []string
	proc  *child // the hop process, for its CPU time; nil when direct
	pprof bool   // proc serves /debug/pprof/profile
}

func wsURLs(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = "ws://" + a + "/ws"
	}
	return out
}

// measure runs the load generator against h and returns its result and the
// CPU time the hop process (and its children) used over the window.
// With profile set, it saves the hop's CPU profile over the window there.
func measure(ctx context.Context, self string, cfg config, h hop, profile string) (result, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.warmup+cfg.duration+60*time.Second)
	defer cancel()
	load, err := startChild(ctx, "load", self, loadMode, "-urls", strings.Join(h.urls, ","),
		"-conns", fmt.Sprint(cfg.conns), "-size", fmt.Sprint(cfg.size),
		"-warmup", cfg.warmup.String(), "-duration", cfg.duration.String(), "-mode", cfg.mode)
	if err != nil {
		return result{}, 0, err
	}
	defer load.stop()
	var res result
	if line, err := load.line(ctx, 0); err != nil {
		return res, 0, err
	} else if line != "measuring" {
		return res, 0, fmt.Errorf("load generator said %q, want measuring", line)
	}
	var cpu0 time.Duration
	if h.proc != nil {
		cpu0 = cpuTime(h.proc.cmd.Process.Pid)
	}
	profErr := make(chan error, 1)
	if profile != "" {
		go func() { profErr <- fetchProfile(ctx, h.urls[0], cfg.duration, profile) }()
	} else {
		profErr <- nil
	}
	line, err := load.line(ctx, 0)
	if err != nil {
		return res, 0, err
	}
	var cpu time.Duration
	if h.proc != nil {
		cpu = cpuTime(h.proc.cmd.Process.Pid) - cpu0
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return res, 0, fmt.Errorf("decode load result %q: %w", line, err)
	}
	if err := <-profErr; err != nil {
		return res, 0, err
	}
	if res.Msgs == 0 {
		return res, 0, fmt.Errorf("no round trips completed (%d errors, first: %s)", res.Errors, res.FirstError)
	}
	return res, cpu, nil
}

// fetchProfile saves the relay's CPU profile over the next d.
func fetchProfile(ctx context.Context, wsURL string, d time.Duration, path string) error {
	u := strings.Replace(strings.TrimSuffix(wsURL, "/ws"), "ws://", "http://", 1) +
		fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(1, int(d.Round(time.Second)/time.Second)))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: d + 30*time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("fetch profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("save profile: %w", err)
	}
	return f.Close()
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
