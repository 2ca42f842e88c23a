package cluster

import (
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/ring"
)

// State is a member's state as this process sees it.
type State string

const (
	StateAlive State = "alive"
	// StateSuspect is part of the public vocabulary (/v1/cluster) but is not
	// reported yet: memberlist (v0.7.0) does not expose suspicion to its
	// delegates, so a suspected member reads alive until declared dead.
	StateSuspect State = "suspect"
	StateDead    State = "dead"
	StateLeft    State = "left"
)

// Member is one process known to the cluster.
type Member struct {
	ID     string
	Role   Role
	Addr   string // WebSocket/HTTP address of a node; empty for a balancer
	Gossip string // gossip host:port
	State  State
	// WarmUntil is set while a node that came back is warming up
	// (Config.Warmup): alive, but off the ring until then.
	WarmUntil time.Time

	unreachable string // the nodes it cannot reach, "\x00"-separated (balancers)
}

// Unreachable returns the ids of the nodes m (a balancer) reports it cannot
// reach on its own path, sorted.
func (m Member) Unreachable() []string {
	if m.unreachable == "" {
		return nil
	}
	return strings.Split(m.unreachable, "\x00")
}

// Warming reports whether m is an alive node held off the ring.
func (m Member) Warming() bool { return !m.WarmUntil.IsZero() }

// View is an immutable snapshot of the membership: callers must not modify it.
type View struct {
	// Epoch increments each time the set of ring members changes; 1 is the
	// first view built, 0 the empty view before it.
	Epoch uint64
	// Ring holds the node members in state alive or suspect (suspicion is
	// often false and is refuted within a probe interval) that are not
	// warming; dead and left nodes are off the ring. Nil when there is no
	// such node.
	Ring *ring.Ring
	// Members lists every member ever seen, nodes and balancers, with its
	// current state, sorted by ID. A member that comes back is alive again.
	Members []Member

	nodes []string // sorted ids on Ring
}

// Warming returns the ids of the nodes warming up: alive, not on the ring yet.
func (v *View) Warming() []string {
	var out []string
	for _, m := range v.Members {
		if m.Role == RoleNode && m.Warming() {
			out = append(out, m.ID)
		}
	}
	return out
}

// Peers returns the address of every node that is alive or suspect, on the
// ring or warming, by id: the nodes a node keeps links to.
func (v *View) Peers() map[string]string {
	out := map[string]string{}
	for _, m := range v.Members {
		if m.Role == RoleNode && (m.State == StateAlive || m.State == StateSuspect) {
			out[m.ID] = m.Addr
		}
	}
	return out
}

// Unreachable reports whether an alive balancer reports node id
// unreachable on its own path: clients must not be sent to it, for that
// balancer would route them elsewhere again.
func (v *View) Unreachable(id string) bool {
	for _, m := range v.Members {
		if m.Role == RoleBalancer && m.State == StateAlive && slices.Contains(m.Unreachable(), id) {
			return true
		}
	}
	return false
}

// Node returns the member with this id, whatever its role or state.
func (v *View) Node(id string) (Member, bool) {
	i, ok := slices.BinarySearchFunc(v.Members, id, func(m Member, id string) int { return strings.Compare(m.ID, id) })
	if !ok {
		return Member{}, false
	}
	return v.Members[i], true
}

// snapshot pairs a view with the channel closed when it is replaced.
type snapshot struct {
	view    *View
	changed chan struct{}
}

// rebuild publishes a new view when the recorded membership differs from
// the current view, and returns when the earliest warm-up ends (zero:
// none), when it must run again. Only one goroutine at a time may call it.
func (c *Cluster) rebuild() time.Time {
	now := time.Now()
	var wake time.Time
	c.mu.Lock()
	members := make([]Member, 0, len(c.records))
	for id, r := range c.records {
		m := r.member(id, now)
		if m.Warming() && (wake.IsZero() || m.WarmUntil.Before(wake)) {
			wake = m.WarmUntil
		}
		members = append(members, m)
	}
	c.mu.Unlock()
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })

	var nodes []string
	for _, m := range members {
		if m.Role == RoleNode && (m.State == StateAlive || m.State == StateSuspect) && !m.Warming() {
			nodes = append(nodes, m.ID)
		}
	}
	prev := c.snap.Load()
	next := &View{Epoch: prev.view.Epoch, Ring: prev.view.Ring, Members: members, nodes: prev.view.nodes}
	ringChanged := next.Epoch == 0 || !slices.Equal(nodes, prev.view.nodes)
	if !ringChanged && slices.Equal(members, prev.view.Members) {
		return wake
	}
	if ringChanged {
		var r *ring.Ring
		if len(nodes) > 0 {
			var err error
			if r, err = ring.New(nodes); err != nil {
				c.log.Error("build ring", zap.Strings("nodes", nodes), zap.Error(err))
				return wake // keep the current view; the next change retries
			}
		}
		next.Epoch, next.Ring, next.nodes = next.Epoch+1, r, nodes
	}
	c.logChanges(prev.view, next)
	c.snap.Store(&snapshot{view: next, changed: make(chan struct{})})
	close(prev.changed)
	return wake
}

func (c *Cluster) logChanges(prev, next *View) {
	for _, m := range next.Members {
		if old, ok := prev.Node(m.ID); !ok || old.State != m.State || old.Warming() != m.Warming() {
			ce := c.log.Check(zap.InfoLevel, "member state")
			if ce == nil {
				continue
			}
			fields := []zap.Field{zap.String("member", m.ID), zap.String("role", string(m.Role)),
				zap.String("state", string(m.State)), zap.String("gossip", m.Gossip)}
			if m.Warming() {
				fields = append(fields, zap.Duration("warming_for", time.Until(m.WarmUntil).Round(time.Millisecond)))
			}
			ce.Write(fields...)
		}
	}
	if next.Epoch != prev.Epoch {
		c.log.Info("ring changed", zap.Uint64("epoch", next.Epoch), zap.Strings("nodes", next.nodes))
	}
}
