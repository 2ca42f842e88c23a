package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Master is the name Sentinel monitors the primary under.
const Master = "ringcast"

// Sentinel is a primary and a replica watched by one redis-sentinel
// (quorum 1, down-after-milliseconds 1000, failover-timeout 2000), so a
// killed primary is replaced within a few seconds. Its methods are not safe
// for concurrent use.
type Sentinel struct {
	tb       TB
	Servers  []*Server // the primary and the replica, as started
	Sentinel *Server
}

// StartSentinel starts a primary, its replica and a sentinel, stopped in
// tb.Cleanup, and returns once the sentinel knows the replica in sync.
// Without redis-server or redis-sentinel the test is skipped, unless CI is
// set.
func StartSentinel(tb TB) *Sentinel {
	tb.Helper()
	primary := Start(tb, "--repl-ping-replica-period", "1")
	replica := Start(tb, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port()), "--repl-ping-replica-period", "1")
	st := &Sentinel{tb: tb, Servers: []*Server{primary, replica}}
	st.Sentinel = launch(tb, "redis-sentinel", func(s *Server) ([]string, error) {
		conf := filepath.Join(s.dir, "sentinel.conf")
		body := fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
sentinel monitor %s 127.0.0.1 %d 1
sentinel down-after-milliseconds %s 1000
sentinel failover-timeout %s 2000
sentinel parallel-syncs %s 1
`, s.port, s.dir, Master, primary.Port(), Master, Master, Master)
		// Sentinel rewrites its file: only write it on the first start.
		if _, err := os.Stat(conf); err != nil {
			if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
				return nil, err
			}
		}
		return []string{conf, "--loglevel", "warning"}, nil
	})
	st.WaitReplica()
	return st
}

// URL is the redis+sentinel:// URL of the deployment.
func (st *Sentinel) URL() string {
	return "redis+sentinel://" + st.Sentinel.Addr() + "/" + Master
}

// Primary returns the server Sentinel names as the primary now.
func (st *Sentinel) Primary() *Server {
	st.tb.Helper()
	c := goredis.NewSentinelClient(&goredis.Options{Addr: st.Sentinel.Addr(), MaxRetries: -1})
	defer c.Close()
	addr, err := c.GetMasterAddrByName(context.Background(), Master).Result()
	if err != nil {
		st.tb.Fatalf("redistest: SENTINEL GET-MASTER-ADDR-BY-NAME: %v", err)
	}
	for _, s := range st.Servers {
		if len(addr) == 2 && addr[1] == strconv.Itoa(s.Port()) {
			return s
		}
	}
	st.tb.Fatalf("redistest: sentinel names an unknown primary %v", addr)
	return nil
}

// WaitFailover waits (up to 30 s) until Sentinel names a primary other than
// old and that server reports role master.
func (st *Sentinel) WaitFailover(old *Server) *Server {
	st.tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if p := st.Primary(); p != old && role(p) == "master" {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	st.tb.Fatalf("redistest: no failover away from %s within 30s", old.Addr())
	return nil
}

func role(s *Server) string {
	c := goredis.NewClient(&goredis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	info, err := c.Info(context.Background(), "replication").Result()
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(info, "\n") {
		if r, ok := strings.CutPrefix(strings.TrimSpace(l), "role:"); ok {
			return r
		}
	}
	return ""
}

// WaitReplica waits (up to 30 s) until the sentinel lists one replica of
// the primary, with its link up: after a failover, the old primary once it
// was restarted.
func (st *Sentinel) WaitReplica() {
	st.tb.Helper()
	c := goredis.NewSentinelClient(&goredis.Options{Addr: st.Sentinel.Addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		replicas, err := c.Replicas(context.Background(), Master).Result()
		if err == nil && len(replicas) == 1 && replicas[0]["master-link-status"] == "ok" && !strings.Contains(replicas[0]["flags"], "down") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	st.tb.Fatal("redistest: sentinel did not see the replica in sync within 30s")
}
