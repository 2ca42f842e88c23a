package cluster

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// warmup is the warm-up after n restarts within the flap window: base
// doubled per restart after the first, capped.
func warmup(base, ceiling time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// meta is the gossip metadata each process advertises (JSON, at most
// memberlist.MetaMaxSize bytes).
type meta struct {
	Role    Role   `json:"role"`
	WSAddr  string `json:"ws,omitempty"`
	Leaving bool   `json:"leaving,omitempty"` // set just before a graceful leave
	Boot    string `json:"boot,omitempty"`    // random per process: a new one means the process restarted
	// Unreachable lists the nodes a balancer cannot reach on its own path
	// (Cluster.SetUnreachable).
	Unreachable []string `json:"unreach,omitempty"`
}

// record is what the event callbacks last heard about a member.
type record struct {
	meta     []byte
	gossip   string
	dead     bool
	boot     string      // the process's boot id, from its metadata
	restarts []time.Time // when a new process under this name was seen, within FlapWindow
	warmTo   time.Time   // it is on the ring from then on (zero: at once)
}

// delegate receives memberlist's callbacks. They run on memberlist's
// goroutines, some under its node lock: each records what it was told under
// c.mu and pokes the coalescing loop without blocking.
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate      = delegate{}
	_ memberlist.EventDelegate = delegate{}
)

func (d delegate) NodeMeta(limit int) []byte {
	m := d.c.meta.Load()
	if d.c.left.Load() {
		return m[1]
	}
	return m[0]
}

func (d delegate) NotifyJoin(n *memberlist.Node)   { d.c.record(n, false) }
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.c.record(n, false) }
func (d delegate) NotifyLeave(n *memberlist.Node)  { d.c.record(n, true) }

func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

func (c *Cluster) record(n *memberlist.Node, dead bool) {
	now := time.Now()
	c.mu.Lock()
	prev, seen := c.records[n.Name]
	var md meta
	_ = json.Unmarshal(n.Meta, &md)
	r := record{meta: append([]byte(nil), n.Meta...), gossip: n.Address(), dead: dead,
		boot: cmp.Or(md.Boot, prev.boot), restarts: prev.restarts, warmTo: prev.warmTo}
	if !dead && seen && md.Role == RoleNode && prev.boot != "" && md.Boot != "" && md.Boot != prev.boot {
		// A new process under a known name: it lost its sessions and may be
		// flapping. One that was only suspected or cut off comes back with
		// the same boot id and is not held back.
		r.restarts = append(slices.DeleteFunc(slices.Clone(r.restarts), func(t time.Time) bool {
			return now.Sub(t) > c.cfg.FlapWindow
		}), now)
		if c.cfg.Warmup > 0 {
			r.warmTo = now.Add(warmup(c.cfg.Warmup, c.cfg.MaxWarmup, len(r.restarts)))
		}
	}
	c.records[n.Name] = r
	c.mu.Unlock()
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// member decodes r. memberlist does not tell a delegate whether a member
// failed or left, so a dead member whose last metadata announced its leave
// is reported as left.
func (r record) member(id string, now time.Time) Member {
	var md meta
	_ = json.Unmarshal(r.meta, &md) // unreadable metadata: no role, never on the ring
	m := Member{ID: id, Role: md.Role, Addr: md.WSAddr, Gossip: r.gossip, State: StateAlive, unreachable: strings.Join(md.Unreachable, "\x00")}
	if !r.dead && now.Before(r.warmTo) {
		m.WarmUntil = r.warmTo
	}
	switch {
	case r.dead && md.Leaving:
		m.State = StateLeft
	case r.dead:
		m.State = StateDead
	}
	return m
}
