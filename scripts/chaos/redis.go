package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/bridge/redis/topology"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// Redis deployments of -bridge.
const (
	bridgeMesh     = "mesh"
	bridgeRedis    = "redis"    // one redis-server; the fault kills it and restarts it empty
	bridgeCluster  = "cluster"  // 3 primaries + 3 replicas; the fault kills a primary, a replica takes over
	bridgeSentinel = "sentinel" // a primary, a replica and redis-sentinel; the fault kills the primary
)

var bridgeKinds = []string{bridgeMesh, bridgeRedis, bridgeCluster, bridgeSentinel}

// deployment is the Redis the nodes bridge through, and its fault.
type deployment interface {
	url() string
	// fail injects the fault and says what it hit.
	fail() (string, error)
	// heal undoes it: returns once the deployment serves every channel
	// again (a replica promoted, the killed process back).
	heal() error
	stop()
}

// startDeployment starts the Redis of -bridge kind; logs is the log directory.
func startDeployment(kind, logs, host string, channels []string) (deployment, error) {
	switch kind {
	case bridgeRedis:
		return startRedis(logs, host)
	case bridgeCluster:
		d := &clusterDeploy{env: &redisEnv{dir: logs}}
		// The fault kills the primary of each channel in turn.
		n := topology.DefaultPartitions
		tags := topology.PartitionTags(n)
		for _, ch := range channels {
			d.slots = append(d.slots, int(topology.Slot(strings.Trim(tags[topology.Partition(ch, n)], "{}"))))
		}
		err := d.env.do(func() { d.rc = redistest.StartCluster(d.env, 3, 1) })
		if err != nil {
			d.stop()
			return nil, fmt.Errorf("start redis cluster (apt-get install redis-server redis-tools): %w", err)
		}
		return d, nil
	case bridgeSentinel:
		d := &sentinelDeploy{env: &redisEnv{dir: logs}}
		if err := d.env.do(func() { d.st = redistest.StartSentinel(d.env) }); err != nil {
			d.stop()
			return nil, fmt.Errorf("start redis-sentinel (apt-get install redis-server redis-sentinel): %w", err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("no redis for -bridge %s", kind)
}

// redisEnv runs redistest deployments outside a test: a fatal error of
// redistest panics with a redisFatal, which do turns back into an error.
// Its methods are called from one goroutine at a time.
type redisEnv struct {
	dir      string
	dirs     int
	cleanups []func()
}

type redisFatal struct{ msg string }

func (e *redisEnv) Helper()                        {}
func (e *redisEnv) Fatal(args ...any)              { panic(redisFatal{fmt.Sprint(args...)}) }
func (e *redisEnv) Fatalf(format string, a ...any) { panic(redisFatal{fmt.Sprintf(format, a...)}) }
func (e *redisEnv) Skipf(format string, a ...any)  { e.Fatalf(format, a...) }
func (e *redisEnv) Cleanup(f func())               { e.cleanups = append(e.cleanups, f) }
func (e *redisEnv) TempDir() string                { return e.mkdir() }
func (e *redisEnv) mkdir() string {
	e.dirs++
	d := filepath.Join(e.dir, fmt.Sprintf("redis-%d", e.dirs))
	if err := os.MkdirAll(d, 0o755); err != nil {
		e.Fatalf("redis dir: %v", err)
	}
	return d
}

// do runs f, returning a redistest failure as an error.
func (e *redisEnv) do(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			rf, ok := r.(redisFatal)
			if !ok {
				panic(r)
			}
			err = errors.New(rf.msg)
		}
	}()
	f()
	return nil
}

// close runs the cleanups, the last registered first: every process stops.
func (e *redisEnv) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	e.cleanups = nil
}

// clusterDeploy is a Redis Cluster of 3 primaries with a replica each.
type clusterDeploy struct {
	env    *redisEnv
	rc     *redistest.Cluster
	slots  []int // the slot of each channel
	next   int
	slot   int
	killed *redistest.Server
}

func (d *clusterDeploy) url() string { return d.rc.URL() }

func (d *clusterDeploy) fail() (string, error) {
	d.slot = d.slots[d.next%len(d.slots)]
	d.next++
	err := d.env.do(func() {
		d.killed = d.rc.Primary(d.slot)
		d.killed.Kill()
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("primary %s of slot %d", d.killed.Addr(), d.slot), nil
}

func (d *clusterDeploy) heal() error {
	return d.env.do(func() {
		d.rc.WaitPromoted(d.slot, d.killed)
		d.killed.Restart() // it rejoins as a replica of the new primary
		d.rc.WaitHealthy()
	})
}

func (d *clusterDeploy) stop() { d.env.close() }

// sentinelDeploy is a primary and a replica under one redis-sentinel.
type sentinelDeploy struct {
	env    *redisEnv
	st     *redistest.Sentinel
	killed *redistest.Server
}

func (d *sentinelDeploy) url() string { return d.st.URL() }

func (d *sentinelDeploy) fail() (string, error) {
	err := d.env.do(func() {
		d.killed = d.st.Primary()
		d.killed.Kill()
	})
	if err != nil {
		return "", err
	}
	return "primary " + d.killed.Addr(), nil
}

func (d *sentinelDeploy) heal() error {
	return d.env.do(func() {
		d.st.WaitFailover(d.killed)
		d.killed.Restart() // Sentinel makes it a replica of the new primary
		d.st.WaitReplica()
	})
}

func (d *sentinelDeploy) stop() { d.env.close() }

// redisServer is a throwaway redis-server without persistence: a restart
// loses every key. It binds to the host the nodes reach (with -net, the
// namespaces' bridge address).
type redisServer struct {
	addr, dir string
	cmd       *exec.Cmd
}

func startRedis(dir, host string) (*redisServer, error) {
	addr, err := clustertest.FreePort(host)
	if err != nil {
		return nil, err
	}
	rs := &redisServer{addr: addr, dir: dir}
	return rs, rs.start()
}

func (rs *redisServer) url() string { return "redis://" + rs.addr }

func (rs *redisServer) fail() (string, error) {
	rs.stop()
	return "redis-server " + rs.addr + " (restarted empty)", nil
}

func (rs *redisServer) heal() error { return rs.start() }

func (rs *redisServer) start() error {
	host, port, _ := net.SplitHostPort(rs.addr)
	f, err := os.OpenFile(filepath.Join(rs.dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command("redis-server", "--port", port, "--bind", host, "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", rs.dir)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server (apt-get install redis-server): %w", err)
	}
	rs.cmd = cmd
	err = testkit.Wait(context.Background(), 10*time.Second, func() error { return redisPing(rs.addr) })
	if err != nil {
		rs.stop()
		return fmt.Errorf("redis-server on %s: %w", rs.addr, err)
	}
	return nil
}

// stop kills the server and waits for it; stopping a stopped server does nothing.
func (rs *redisServer) stop() {
	if rs.cmd != nil {
		rs.cmd.Process.Kill()
		rs.cmd.Wait()
		rs.cmd = nil
	}
}

func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && line != "+PONG\r\n" {
		err = fmt.Errorf("PING answered %q", line)
	}
	return err
}

// Bounds of the readiness watch around a Redis fault.
const (
	notReadyWait = 5 * time.Second  // the nodes must report the loss by then
	readyWait    = 30 * time.Second // and be ready again this long after the fault
	readyPoll    = 20 * time.Millisecond
)

// readiness is what the nodes' /readyz said around a Redis fault, in ms
// from the fault; -1 = not within the bound.
type readiness struct {
	NotReadyMS float64 `json:"not_ready_ms"` // until every node answering /readyz answered 503
	ReadyMS    float64 `json:"ready_ms"`     // until every node answered 200 again
	// Publishes are the outcomes of the publishes that overlapped the
	// outage, from the fault until ready again.
	Publishes map[string]int `json:"publishes,omitempty"`
}

var readyzClient = &http.Client{Timeout: 500 * time.Millisecond}

// waitReadyz polls every node's /readyz until each one that answers says
// ready (200) or, with want false, not ready; at least one must answer. It
// returns the time from since, or -1 after within.
func waitReadyz(ctx context.Context, nodes []*clustertest.Proc, want bool, since time.Time, within time.Duration) float64 {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var mu sync.Mutex
		var wg sync.WaitGroup
		answered, agree := 0, 0
		for _, n := range nodes {
			wg.Go(func() {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Addr+"/readyz", nil)
				if err != nil {
					return
				}
				resp, err := readyzClient.Do(req)
				if err != nil {
					return
				}
				resp.Body.Close()
				mu.Lock()
				defer mu.Unlock()
				answered++
				if (resp.StatusCode == http.StatusOK) == want {
					agree++
				}
			})
		}
		wg.Wait()
		if answered > 0 && agree == answered {
			return float64(time.Since(since).Microseconds()) / 1000
		}
		time.Sleep(readyPoll)
	}
	return -1
}
