package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of primaries with replicas, made by
// `redis-cli --cluster create`. Nodes time out after 1 s
// (cluster-node-timeout 1000), so a killed primary's replica takes over
// within a few seconds. Its methods are not safe for concurrent use.
type Cluster struct {
	tb    TB
	Nodes []*Server // primaries first, then replicas, as created
}

// StartCluster starts primaries×(1+replicas) redis-servers in cluster mode
// and joins them into a cluster with that many replicas per primary,
// stopped in tb.Cleanup.
// It returns once every node reports the cluster ok and every replica is
// in sync. Without redis-server or redis-cli the test is skipped, unless CI
// is set.
func StartCluster(tb TB, primaries, replicas int) *Cluster {
	tb.Helper()
	cli := lookPath(tb, "redis-cli")
	c := &Cluster{tb: tb}
	for range primaries * (1 + replicas) {
		c.Nodes = append(c.Nodes, Start(tb,
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000",
			"--cluster-replica-validity-factor", "0", // a replica always may take over
			"--repl-ping-replica-period", "1"))
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy()
	return c
}

// URL is the redis+cluster:// URL naming every node as a seed.
func (c *Cluster) URL() string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr()
	}
	return "redis+cluster://" + strings.Join(addrs, ",")
}

// client returns a go-redis client of one running node.
func (c *Cluster) client(n *Server) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: n.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
}

// WaitHealthy waits (up to 30 s) until every running node reports
// cluster_state:ok, sees the same number of primaries serving all slots,
// and every replica's link to its primary is up.
func (c *Cluster) WaitHealthy() {
	c.tb.Helper()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if last = c.unhealthy(); last == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.tb.Fatalf("redistest: cluster not healthy within 30s: %s", last)
}

// unhealthy returns why the cluster is not healthy, or "".
func (c *Cluster) unhealthy() string {
	ctx := context.Background()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		cl := c.client(n)
		info, err := cl.ClusterInfo(ctx).Result()
		if err != nil {
			cl.Close()
			return fmt.Sprintf("%s: %v", n.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			cl.Close()
			return n.Addr() + ": cluster_state not ok"
		}
		repl, err := cl.Info(ctx, "replication").Result()
		cl.Close()
		if err != nil {
			return fmt.Sprintf("%s: %v", n.Addr(), err)
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return n.Addr() + ": replica link down"
		}
	}
	return ""
}

// Slot returns the hash slot of key.
func (c *Cluster) Slot(key string) int {
	c.tb.Helper()
	cl := c.client(c.any())
	defer cl.Close()
	slot, err := cl.ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		c.tb.Fatalf("redistest: CLUSTER KEYSLOT %s: %v", key, err)
	}
	return int(slot)
}

// Primary returns the running node that serves slot as a primary.
func (c *Cluster) Primary(slot int) *Server {
	c.tb.Helper()
	p, err := c.primary(slot)
	if err != nil {
		c.tb.Fatalf("redistest: %v", err)
	}
	return p
}

// WaitPromoted waits (up to 30 s) until a running node other than old
// serves slot as a primary and the cluster is healthy, and returns it.
func (c *Cluster) WaitPromoted(slot int, old *Server) *Server {
	c.tb.Helper()
	var why string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p, err := c.primary(slot)
		switch {
		case err != nil:
			why = err.Error()
		case p == old:
			why = fmt.Sprintf("%s still serves slot %d", old.Addr(), slot)
		default:
			why = c.unhealthy()
		}
		if why == "" {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.tb.Fatalf("redistest: no new primary of slot %d within 30s: %s", slot, why)
	return nil
}

func (c *Cluster) primary(slot int) (*Server, error) {
	cl := c.client(c.any())
	defer cl.Close()
	shards, err := cl.ClusterShards(context.Background()).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SHARDS: %w", err)
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if slot < int(r.Start) || slot > int(r.End) {
				continue
			}
			for _, nd := range sh.Nodes {
				for _, n := range c.Nodes {
					if nd.Role == "master" && nd.Health == "online" && int(nd.Port) == n.Port() {
						return n, nil
					}
				}
			}
		}
	}
	return nil, fmt.Errorf("no primary serves slot %d", slot)
}

// OtherPrimary returns a running primary other than p.
func (c *Cluster) OtherPrimary(p *Server) *Server {
	c.tb.Helper()
	if n := c.other(p, "role:master"); n != nil {
		return n
	}
	c.tb.Fatal("redistest: no other primary")
	return nil
}

// other returns a running node other than p whose INFO replication
// contains want, or nil.
func (c *Cluster) other(p *Server, want string) *Server {
	for _, n := range c.Nodes {
		if n == p || !n.Running() {
			continue
		}
		cl := c.client(n)
		repl, err := cl.Info(context.Background(), "replication").Result()
		cl.Close()
		if err == nil && strings.Contains(repl, want) {
			return n
		}
	}
	return nil
}

// MoveSlot migrates slot, keys included, from its primary to primary to,
// the way `redis-cli --cluster reshard` moves each slot: IMPORTING and
// MIGRATING states, MIGRATE of its keys in batches, then SETSLOT NODE on
// every primary.
func (c *Cluster) MoveSlot(slot int, to *Server) {
	c.tb.Helper()
	ctx := context.Background()
	from := c.Primary(slot)
	src, dst := c.client(from), c.client(to)
	defer src.Close()
	defer dst.Close()
	must := func(what string, err error) {
		if err != nil {
			c.tb.Fatalf("redistest: move slot %d: %s: %v", slot, what, err)
		}
	}
	srcID, err := src.Do(ctx, "cluster", "myid").Text()
	must("CLUSTER MYID", err)
	dstID, err := dst.Do(ctx, "cluster", "myid").Text()
	must("CLUSTER MYID", err)
	must("SETSLOT IMPORTING", dst.Do(ctx, "cluster", "setslot", slot, "importing", srcID).Err())
	must("SETSLOT MIGRATING", src.Do(ctx, "cluster", "setslot", slot, "migrating", dstID).Err())
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must("GETKEYSINSLOT", err)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", "127.0.0.1", strconv.Itoa(to.Port()), "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		must("MIGRATE", src.Do(ctx, args...).Err())
	}
	// The target first, then the source, then the rest, as redis-cli does.
	order := []*Server{to, from}
	for _, n := range c.Nodes {
		if n != to && n != from {
			order = append(order, n)
		}
	}
	for _, n := range order {
		if !n.Running() {
			continue
		}
		cl := c.client(n)
		repl, err := cl.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(repl, "role:master") {
			err = cl.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err()
		}
		cl.Close()
		must("SETSLOT NODE on "+n.Addr(), err)
	}
}

func (c *Cluster) any() *Server {
	for _, n := range c.Nodes {
		if n.Running() {
			return n
		}
	}
	c.tb.Fatal("redistest: no cluster node runs")
	return nil
}

// Replica returns a running replica of primary p.
func (c *Cluster) Replica(p *Server) *Server {
	c.tb.Helper()
	if n := c.other(p, "master_port:"+strconv.Itoa(p.Port())+"\r\n"); n != nil {
		return n
	}
	c.tb.Fatalf("redistest: no replica of %s", p.Addr())
	return nil
}

// Get reads key on node n, a replica too.
func (c *Cluster) Get(n *Server, key string) (string, error) {
	cl := goredis.NewClient(&goredis.Options{Addr: n.Addr(), MaxRetries: -1, OnConnect: func(ctx context.Context, cn *goredis.Conn) error {
		return cn.ReadOnly(ctx).Err()
	}})
	defer cl.Close()
	return cl.Get(context.Background(), key).Result()
}

// ID returns the cluster node id of n.
func (c *Cluster) ID(n *Server) string {
	c.tb.Helper()
	cl := c.client(n)
	defer cl.Close()
	id, err := cl.Do(context.Background(), "cluster", "myid").Text()
	if err != nil {
		c.tb.Fatalf("redistest: CLUSTER MYID: %v", err)
	}
	return id
}
