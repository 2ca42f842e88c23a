// Package clustertest starts fleets of real balancer and node processes (on
// loopback or in network namespaces) and injects process and network faults.
package clustertest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// Options describe a cluster.
type Options struct {
	Nodes        int      // default 3
	Balancers    int      // default 1
	Bridge       string   // default mesh
	Detect       string   // default fast
	HistorySize  int      // 0 = off
	Heartbeat    string   // node -heartbeat; default the node's
	NodeArgs     []string // extra node flags
	BalancerArgs []string // extra balancer flags
	Args         []string // extra flags of every process, balancers and nodes (e.g. the token flags)
	// NodeWrap is a command prefix every node runs under (Start only): its
	// first element is the program, which gets the node's binary and
	// arguments after the rest, e.g. a shell that enters a cgroup and execs.
	NodeWrap []string
	// Plain runs binaries built without the race detector even when the
	// test runs under it: for tests that measure memory, which the
	// detector's shadow memory (5-10x) would swamp. RINGCAST_BIN wins.
	Plain bool
	// TLSCert and TLSKey, when set, serve the balancers over HTTPS/wss with
	// that pair; TLSRoots is what the cluster's HTTP client trusts then.
	TLSCert, TLSKey string
	TLSRoots        *x509.CertPool
	Host            string // bind address; default 127.0.0.1
	ClusterKey      string // -cluster-key of every process; default none (NewNet's clusters: a random one)
	LogDir          string // where process logs go; default a temp dir
	Stdout          io.Writer
}

// Proc is one cluster process.
type Proc struct {
	Name   string
	Role   string // "node" or "balancer"
	Addr   string // HTTP/WebSocket address
	Gossip string
	args   []string
	bin    string
	logf   string

	mu  sync.Mutex
	cmd *exec.Cmd
	// exited is closed when the current process has been reaped.
	exited chan struct{}
}

// Cluster is a running set of processes.
type Cluster struct {
	Opts      Options
	Balancers []*Proc
	Nodes     []*Proc
	binDir    string
	ownLogs   bool // LogDir was made by Start: RemoveLogs deletes it
	client    *http.Client
}

// builds are the binaries of this process: [0] as the test binary was
// built (with the race detector under -race), [1] without it.
var builds [2]struct {
	once sync.Once
	dir  string
	err  error
}

// Build compiles the balancer and node binaries once per process and returns
// the directory holding them. RINGCAST_BIN, when set, names a directory with
// binaries already built.
func Build() (string, error) { return build(0) }

// BuildPlain is Build without the race detector (the same binaries when
// the test binary has none); see Options.Plain.
func BuildPlain() (string, error) {
	if !raceEnabled {
		return build(0)
	}
	return build(1)
}

func build(i int) (string, error) {
	b := &builds[i]
	b.once.Do(func() {
		if d := os.Getenv("RINGCAST_BIN"); d != "" {
			b.dir = d
			return
		}
		root, err := moduleRoot()
		if err != nil {
			b.err = err
			return
		}
		removeStale(filepath.Join(os.TempDir(), "ringcast-bin-*"))
		name := "ringcast-bin-%d"
		if i == 1 {
			name = "ringcast-bin-plain-%d"
		}
		b.dir = filepath.Join(os.TempDir(), fmt.Sprintf(name, os.Getpid()))
		if err := os.MkdirAll(b.dir, 0o755); err != nil {
			b.err = err
			return
		}
		for _, bin := range []string{"balancer", "node"} {
			args := []string{"build", "-o", filepath.Join(b.dir, bin)}
			if raceEnabled && i == 0 {
				args = append(args, "-race")
			}
			cmd := exec.Command("go", append(args, "./"+bin)...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				b.err = fmt.Errorf("go build %s: %v\n%s", bin, err, out)
				return
			}
		}
	})
	return b.dir, b.err
}

// removeStale deletes directories named like pattern-<pid> whose process
// is gone: binaries and logs of earlier runs.
func removeStale(pattern string) {
	dirs, _ := filepath.Glob(pattern)
	for _, d := range dirs {
		pid, err := strconv.Atoi(d[strings.LastIndexByte(d, '-')+1:])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

func moduleRoot() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Dir(file)
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("go.mod not found above " + dir)
}

// FreePort returns a host:port that was free a moment ago, for both TCP and
// UDP (gossip needs both).
func FreePort(host string) (string, error) {
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr, nil
	}
	return "", errors.New("no free port")
}

// NoAdmissionLimits are the balancer flags a load generator that opens
// thousands of connections from a few addresses needs.
var NoAdmissionLimits = []string{"-max-conns-per-ip", "-1", "-conn-rate-per-ip", "-1"}

// Start builds the binaries and starts the cluster on Options.Host, each
// process on free ports, waiting until every node is ready and every
// balancer sees them all. Stop it with Close.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	o = o.withDefaults()
	// A port is free again once FreePort closes it: the kernel may hand the
	// same one out twice, so no two processes of the cluster get the same.
	used := map[string]bool{}
	free := func() (string, error) {
		for range 50 {
			a, err := FreePort(o.Host)
			if err != nil || !used[a] {
				used[a] = true
				return a, err
			}
		}
		return "", errors.New("no free port")
	}
	return start(ctx, o, func(p *Proc) ([]string, error) {
		var err error
		if p.Addr, err = free(); err == nil {
			p.Gossip, err = free()
		}
		if p.Role == "node" {
			return o.NodeWrap, err
		}
		return nil, err
	})
}

func (o Options) withDefaults() Options {
	o.Nodes, o.Balancers = cmp.Or(o.Nodes, 3), cmp.Or(o.Balancers, 1)
	o.Bridge, o.Detect, o.Host = cmp.Or(o.Bridge, "mesh"), cmp.Or(o.Detect, "fast"), cmp.Or(o.Host, "127.0.0.1")
	return o
}

// start runs the cluster o describes. place sets each process's Addr and
// Gossip and returns a command prefix to run it under (nil for none).
func start(ctx context.Context, o Options, place func(*Proc) ([]string, error)) (*Cluster, error) {
	build := Build
	if o.Plain {
		build = BuildPlain
	}
	bin, err := build()
	if err != nil {
		return nil, err
	}
	own := o.LogDir == ""
	if own {
		if o.LogDir, err = os.MkdirTemp("", "ringcast-logs-"); err != nil {
			return nil, err
		}
	}
	c := &Cluster{Opts: o, binDir: bin, ownLogs: own, client: httpClient}
	if o.TLSRoots != nil {
		c.client = &http.Client{Timeout: httpClient.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: o.TLSRoots}}}
	}
	var seeds []string
	proc := func(name, role string, args ...string) (*Proc, error) {
		p := &Proc{Name: name, Role: role, bin: filepath.Join(bin, role), logf: filepath.Join(o.LogDir, name+".log")}
		prefix, err := place(p)
		if err != nil {
			return nil, err
		}
		p.args = append([]string{"-id", p.Name, "-addr", p.Addr, "-gossip", p.Gossip, "-detect", o.Detect, "-log", "json"}, args...)
		if o.ClusterKey != "" {
			p.args = append(p.args, "-cluster-key", o.ClusterKey)
		}
		p.args = append(p.args, o.Args...)
		if len(prefix) > 0 {
			p.args = append(append(prefix[1:len(prefix):len(prefix)], p.bin), p.args...)
			p.bin = prefix[0]
		}
		return p, nil
	}
	for i := range o.Balancers {
		var join []string
		if i > 0 {
			join = []string{"-join", seeds[0]}
		}
		args := append(join, o.BalancerArgs...)
		if o.TLSCert != "" {
			args = append(args, "-tls-cert", o.TLSCert, "-tls-key", o.TLSKey)
		}
		p, err := proc(fmt.Sprintf("b%d", i+1), "balancer", args...)
		if err != nil {
			return nil, err
		}
		seeds = append(seeds, p.Gossip)
		c.Balancers = append(c.Balancers, p)
	}
	for i := range o.Nodes {
		args := []string{"-join", strings.Join(seeds, ","), "-bridge", o.Bridge, "-drain", "2s"}
		if o.HistorySize > 0 {
			args = append(args, "-history-size", strconv.Itoa(o.HistorySize))
		}
		if o.Heartbeat != "" {
			args = append(args, "-heartbeat", o.Heartbeat)
		}
		p, err := proc(fmt.Sprintf("n%d", i+1), "node", append(args, o.NodeArgs...)...)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, p)
	}
	for _, p := range c.All() {
		if err := p.Start(); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitConverged(ctx, len(c.Nodes)); err != nil {
		c.Close()
		return nil, fmt.Errorf("cluster did not converge: %w (logs in %s)", err, o.LogDir)
	}
	return c, nil
}

// All returns every process, balancers first.
func (c *Cluster) All() []*Proc { return append(append([]*Proc{}, c.Balancers...), c.Nodes...) }

// URL is the WebSocket endpoint of the first balancer.
func (c *Cluster) URL() string { return c.pick("wss://", "ws://") + c.Balancers[0].Addr + "/ws" }

// HTTP is the base URL of the first balancer.
func (c *Cluster) HTTP() string { return c.balancerURL(0) }

func (c *Cluster) balancerURL(b int) string {
	return c.pick("https://", "http://") + c.Balancers[b].Addr
}

func (c *Cluster) pick(tls, plain string) string {
	if c.Opts.TLSCert != "" {
		return tls
	}
	return plain
}

// Client is the HTTP client that trusts the cluster's balancers.
func (c *Cluster) Client() *http.Client { return c.client }

// Node returns the node process named id.
func (c *Cluster) Node(id string) *Proc {
	for _, p := range c.Nodes {
		if p.Name == id {
			return p
		}
	}
	return nil
}

// Close stops every process (SIGKILL) and waits for them.
func (c *Cluster) Close() {
	for _, p := range c.All() {
		p.Kill()
	}
}

// RemoveLogs deletes the log directory Start made (none if Options.LogDir
// was given). Call it after Close once the logs are no longer needed.
func (c *Cluster) RemoveLogs() {
	if c.ownLogs {
		os.RemoveAll(c.Opts.LogDir)
	}
}

// ClusterInfo is the balancer's /v1/cluster answer.
type ClusterInfo struct {
	Epoch uint64 `json:"epoch"`
	Nodes []struct {
		ID          string `json:"id"`
		Addr        string `json:"addr"`
		State       string `json:"state"`
		Warming     bool   `json:"warming"`
		Unreachable bool   `json:"unreachable"` // the balancer's own checks fail
		Connections int    `json:"connections"`
	} `json:"nodes"`
}

// Alive returns the ids of nodes in state alive and on the ring (not warming).
func (ci ClusterInfo) Alive() []string {
	var out []string
	for _, n := range ci.Nodes {
		if n.State == "alive" && !n.Warming {
			out = append(out, n.ID)
		}
	}
	return out
}

// Info fetches /v1/cluster from balancer b.
func (c *Cluster) Info(ctx context.Context, b int) (ClusterInfo, error) {
	var ci ClusterInfo
	err := getJSON(ctx, c.client, c.balancerURL(b)+"/v1/cluster", &ci)
	return ci, err
}

// Owner asks balancer 0 which node owns clientID.
func (c *Cluster) Owner(ctx context.Context, clientID string) (string, error) {
	var o struct {
		Node string `json:"node"`
	}
	err := getJSON(ctx, c.client, c.HTTP()+"/v1/owner?client_id="+clientID, &o)
	return o.Node, err
}

// WaitConverged waits until every balancer sees n alive nodes and every
// running node reports ready.
func (c *Cluster) WaitConverged(ctx context.Context, n int) error {
	return testkit.Wait(ctx, 30*time.Second, func() error {
		if err := c.seeAlive(ctx, n); err != nil {
			return err
		}
		for _, p := range c.Nodes {
			if !p.Running() {
				continue
			}
			if err := GetJSON(ctx, "http://"+p.Addr+"/readyz", nil); err != nil {
				return fmt.Errorf("%s: %w", p.Name, err)
			}
		}
		return nil
	})
}

// WaitAlive waits until every balancer sees exactly n alive nodes.
func (c *Cluster) WaitAlive(ctx context.Context, n int, timeout time.Duration) error {
	return testkit.Wait(ctx, timeout, func() error { return c.seeAlive(ctx, n) })
}

func (c *Cluster) seeAlive(ctx context.Context, n int) error {
	for i := range c.Balancers {
		ci, err := c.Info(ctx, i)
		if err != nil {
			return err
		}
		if a := ci.Alive(); len(a) != n {
			return fmt.Errorf("balancer %d sees %d alive nodes %v, want %d", i, len(a), a, n)
		}
	}
	return nil
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// GetJSON fetches url and decodes a 200 answer into v (v may be nil).
func GetJSON(ctx context.Context, url string, v any) error { return getJSON(ctx, httpClient, url, v) }

func getJSON(ctx context.Context, client *http.Client, url string, v any) error {
	return httpapi.Get(ctx, client, url, httpClient.Timeout, v)
}

// PostJSON posts v to url and decodes the answer into out (may be nil). It
// returns the status code.
func PostJSON(ctx context.Context, url string, v, out any) (int, error) {
	return PostJSONKey(ctx, url, "", v, out)
}

// PostJSONKey is PostJSON with an API key (Authorization: Bearer), when
// key is not empty.
func PostJSONKey(ctx context.Context, url, key string, v, out any) (int, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s answer %q: %w", url, body, err)
		}
	}
	return resp.StatusCode, nil
}

// Start starts the process (again).
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.Name)
	}
	f, err := os.OpenFile(p.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		cmd.Wait()
		f.Close()
		p.mu.Lock()
		if p.cmd == cmd {
			p.cmd = nil
		}
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Running reports whether the process is up (possibly stopped by SIGSTOP).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Pid returns the process id, or 0.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return cmd.Process.Signal(sig)
}

// Freeze SIGSTOPs the process and returns once every thread of it has
// stopped (testkit.Freeze); SIGCONT resumes it.
func (p *Proc) Freeze() error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s is not running", p.Name)
	}
	if err := testkit.Freeze(cmd.Process); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// Kill SIGKILLs the process and waits until it is reaped.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	<-exited
}

// Term sends SIGTERM and waits up to timeout for a clean exit, then kills.
func (p *Proc) Term(timeout time.Duration) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if !cmd.ProcessState.Success() {
			return fmt.Errorf("%s exited: %v", p.Name, cmd.ProcessState)
		}
		return nil
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM", p.Name, timeout)
	}
}

// Log returns the process's log so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.logf)
	return string(b)
}
