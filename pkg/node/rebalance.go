package node

import (
	"context"
	"maps"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/session"
	"github.com/ringcast/ringcast/pkg/wire"
)

// watch follows membership: it keeps the mesh's peer set current and, after
// each ring change, asks the clients that now belong elsewhere to move.
func (s *Server) watch(ctx context.Context) {
	var epoch uint64
	prev := s.cluster.View()
	var peers map[string]string
	sweep := time.NewTicker(sweepAge)
	defer sweep.Stop()
	for {
		changes := s.cluster.Changes()
		v := s.cluster.View()
		if p := v.Peers(); s.mesh != nil && !maps.Equal(p, peers) {
			// Warming nodes too: their links are up before they own keys.
			peers = p
			s.mesh.SetPeers(peers)
		}
		if v.Epoch != epoch {
			epoch = v.Epoch
			s.met.epoch.Set(float64(epoch))
			s.failover.changed(prev, v, time.Now())
			prev = v
			if !s.rebalance(ctx, v, changes, 0) {
				continue // a newer view arrived mid-pass
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-sweep.C:
			// Clients that landed here while a balancer's view lagged
			// behind ours get no ring change to move them: sweep.
			if !s.rebalance(ctx, v, changes, sweepAge) {
				continue
			}
		}
	}
}

// moveFloor is the least after_ms of a reconnect request.
const moveFloor = 300 * time.Millisecond

// sweepAge is how long a client must have sat on a node that does not own it
// before a periodic sweep asks it to move.
const sweepAge = 3 * time.Second

// rebalance asks every local client connected for at least minAge whose
// owner is now another, reachable node to reconnect, paced at RebalanceRate
// per second with jittered after_ms. It returns false when a newer view
// interrupted it.
func (s *Server) rebalance(ctx context.Context, v *cluster.View, changes <-chan struct{}, minAge time.Duration) bool {
	if v.Ring == nil || !v.Ring.Has(s.cfg.ID) {
		return true
	}
	var movers []*session.Conn
	reachable := map[string]bool{}
	for _, c := range s.snapshot() {
		owner := v.Ring.Owner(c.ClientID())
		if owner == s.cfg.ID || time.Since(c.Since()) < minAge {
			continue
		}
		ok, seen := reachable[owner]
		if !seen {
			m, _ := v.Node(owner) // a crashed node not yet declared dead must not attract clients
			ok = httpapi.Healthy(ctx, s.probe, m.Addr, 500*time.Millisecond)
			reachable[owner] = ok
		}
		if ok {
			movers = append(movers, c)
		}
	}
	if len(movers) == 0 {
		return true
	}
	s.log.Info("rebalancing", zap.Uint64("ring_epoch", v.Epoch), zap.Int("clients", len(movers)))
	const tick = 50 * time.Millisecond
	perTick := max(1, s.cfg.RebalanceRate*int(tick)/int(time.Second))
	t := time.NewTicker(tick)
	defer t.Stop()
	for i, c := range movers {
		if i > 0 && i%perTick == 0 {
			select {
			case <-ctx.Done():
				return true
			case <-changes:
				return false
			case <-t.C:
			}
		}
		s.askMove(c, wire.ReasonRebalance, wire.CloseMoved, s.cfg.RebalanceSpread)
	}
	return true
}

// askMove sends c a reconnect frame with after_ms jittered over spread and
// closes it with code if it is still here well after that.
func (s *Server) askMove(c *session.Conn, reason string, code int, spread time.Duration) {
	after := time.Duration(rand.Int64N(int64(spread) + 1))
	if reason == wire.ReasonRebalance {
		// The floor gives every balancer time to see the ring change this
		// node saw, so the client is routed to its new owner, not back
		// here. (A drain starts after the node has left gossip.)
		after += moveFloor
	}
	if c.Move(reason, code, after) {
		s.met.moved.Inc()
	}
}

// drain asks every client to reconnect, spread over window, and waits for
// them to leave, at most window plus a grace second.
func (s *Server) drain(window time.Duration) {
	conns := s.snapshot()
	if len(conns) == 0 {
		return
	}
	for _, c := range conns {
		s.askMove(c, wire.ReasonDrain, wire.CloseGoingAway, window)
	}
	deadline := time.Now().Add(window + time.Second)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for time.Now().Before(deadline) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		<-t.C
	}
}

// fence watches for this process having been paused (SIGSTOP, a VM freeze)
// for longer than failure detection takes. Meanwhile gossip may have
// declared this node dead and its clients been re-homed; memberlist refutes
// within milliseconds of waking, so nothing else tells. Every session is
// closed with 1012: each client reconnects through a balancer to its current
// owner and recovers from its last offset.
func (s *Server) fence(ctx context.Context) {
	const tick = 100 * time.Millisecond
	limit := time.Second // the fast profile declares a node dead in about 1 s
	if s.cfg.Detect != "fast" {
		limit = 4 * time.Second
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if gap := now.Sub(last); gap > limit {
				conns := s.snapshot()
				s.log.Warn("process was paused past failure detection, closing its sessions",
					zap.Duration("paused", gap), zap.Int("clients", len(conns)))
				s.met.paused.Inc()
				s.met.fenced.Add(float64(len(conns)))
				for _, c := range conns {
					c.Close(wire.CloseServiceRestart, "node was paused: reconnect")
				}
			}
			last = now
		}
	}
}
