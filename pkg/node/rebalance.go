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
	sweep := time.NewTicker(s.cfg.SweepAge)
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
			if !s.rebalance(ctx, v, changes, s.cfg.SweepAge) {
				continue
			}
		}
	}
}

// rebalance asks every local client connected for at least minAge whose
// owner is now another node, reachable from here and from every balancer,
// to reconnect, paced at RebalanceRate
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
			// A balancer that cannot reach the owner would route the
			// client around it again, back here or elsewhere: wait until
			// it can (its gossip metadata says so).
			// A crashed node not yet declared dead must not attract
			// clients either.
			m, _ := v.Node(owner)
			ok = !v.Unreachable(owner) && httpapi.Healthy(ctx, s.probe, m.Addr, s.cfg.OwnerProbeTimeout)
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
	return pace(ctx, movers, s.cfg.RebalanceRate, changes, func(c *session.Conn) {
		s.askMove(c, wire.ReasonRebalance, wire.CloseMoved, s.cfg.RebalanceSpread)
	})
}

// paceTick is how often pace hands out a batch.
const paceTick = 50 * time.Millisecond

// pace calls move for each item, rate per second in batches every
// paceTick, the first batch at once. It returns false when changes fired
// first (the caller has a newer view to act on), true when it finished or
// ctx ended.
func pace[T any](ctx context.Context, items []T, rate int, changes <-chan struct{}, move func(T)) bool {
	perTick := max(1, rate*int(paceTick)/int(time.Second))
	t := time.NewTicker(paceTick)
	defer t.Stop()
	for i, it := range items {
		if i > 0 && i%perTick == 0 {
			select {
			case <-ctx.Done():
				return true
			case <-changes:
				return false
			case <-t.C:
			}
		}
		move(it)
	}
	return true
}

// mover is a session that can be asked to move (a *session.Conn).
type mover interface {
	Move(reason string, code int, after time.Duration) bool
}

// askMove sends c a reconnect frame with after_ms jittered over spread and
// closes it with code if it is still here well after that.
func (s *Server) askMove(c mover, reason string, code int, spread time.Duration) {
	after := time.Duration(rand.Int64N(int64(spread) + 1))
	if reason == wire.ReasonRebalance {
		// The floor (Config.MoveFloor) gives every balancer time to see
		// the ring change. (A drain starts after the node has left gossip.)
		after += s.cfg.MoveFloor
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
		if s.live() == 0 {
			return
		}
		<-t.C
	}
}

// fence watches for this process having been paused (SIGSTOP, a VM
// freeze) or starved of CPU long enough for its peers to declare it dead:
// they then took it off their ring, so messages routed meanwhile missed its
// sessions, and their clients may have been re-homed. memberlist refutes
// within milliseconds of waking, so nothing else tells. Every session is
// then closed with 1012: each client reconnects through a balancer to its
// current owner and recovers from its last offset.
//
// A pause past fencing.surely fences at once. A shorter one past
// fencing.maybe fences only if gossip suspected this node or declared it
// dead meanwhile (an accusation refuted within fencing.confirm of the
// pause): a scheduling stall gossip did not notice costs nothing.
func (s *Server) fence(ctx context.Context, ticks <-chan time.Time, p fencing) {
	last := time.Now()
	seen := p.accused()
	var watch time.Time // while non-zero: a pause ended, news may still come
	var base uint64     // accusations counted before that pause
	var pause time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticks:
			gap := now.Sub(last)
			last = now
			n := p.accused()
			switch {
			case gap > p.surely():
				s.fenceAll(gap, "paused past every peer's failure detection")
				watch = time.Time{}
			case gap > p.maybe():
				if watch.IsZero() {
					base = seen
				}
				watch, pause = now.Add(p.confirm()), gap
				fallthrough
			case !watch.IsZero():
				switch {
				case n > base:
					s.fenceAll(pause, "paused, and gossip suspected or declared this node dead meanwhile")
					watch = time.Time{}
				case now.After(watch):
					s.log.Info("process was stalled past the earliest failure detection; gossip did not notice",
						zap.Duration("stalled", pause))
					watch = time.Time{}
				}
			}
			seen = n
		}
	}
}

// fencing is the fence's policy; see fence.
type fencing struct {
	surely  func() time.Duration // a pause longer than this fences at once
	maybe   func() time.Duration // a pause longer than this fences if gossip says so
	confirm func() time.Duration // how long after a pause that news may take
	accused func() uint64        // cluster.Accused
}

func (s *Server) fenceAll(pause time.Duration, why string) {
	conns := s.snapshot()
	s.log.Warn("process was paused past failure detection, closing its sessions",
		zap.Duration("paused", pause), zap.String("why", why), zap.Int("clients", len(conns)))
	s.met.paused.Inc()
	s.met.fenced.Add(float64(len(conns)))
	for _, c := range conns {
		c.Close(wire.CloseServiceRestart, "node was paused: reconnect")
	}
}
