package node

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/ring"
)

// failoverWindow bounds how long after its first sign a peer's death is
// followed: later arrivals are ordinary reconnects.
const failoverWindow = 30 * time.Second

// failoverMaxClients bounds the clients followed per dead peer.
const failoverMaxClients = 100_000

// failover measures how long the clients of a peer that died take to
// resubscribe on this node: from this node's first sign of the death — a
// client the ring gives to the peer subscribing here (a balancer could not
// dial it), or gossip declaring the peer dead, whichever came first — to
// each such client's first successful subscribe here. Samples taken before
// gossip confirms the death wait for it, and are dropped if it does not
// come within failoverWindow (a balancer whose view lagged, not a death).
// Peers that leave gracefully are not followed. Safe for concurrent use.
type failover struct {
	self string
	hist prometheus.Histogram

	mu    sync.Mutex
	peers map[string]*lostPeer
}

type lostPeer struct {
	since   time.Time       // first sign
	ring    *ring.Ring      // a ring that holds the peer: tells its clients
	dead    bool            // gossip declared it dead
	clients map[string]bool // clients measured
	pending []float64       // seconds, until dead
}

func newFailover(self string) *failover {
	return &failover{
		self: self,
		hist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ringcast_node_failover_resubscribe_seconds",
			Help: "For clients of a peer that died: time from this node's first sign of the death (a client of the peer arriving, or gossip) to the client's first subscribe here.",
			// 5 ms … 41 s
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		peers: make(map[string]*lostPeer),
	}
}

// subscribed records a successful subscribe of clientID under view v.
func (f *failover) subscribed(clientID string, v *cluster.View, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire(now)
	if v.Ring != nil {
		if owner := v.Ring.Owner(clientID); owner != f.self {
			// Here although the ring says owner: the owner may have died.
			p := f.peers[owner]
			if p == nil {
				p = &lostPeer{since: now, ring: v.Ring, clients: map[string]bool{}}
				f.peers[owner] = p
			}
			f.sample(p, clientID, now)
			return
		}
	}
	for id, p := range f.peers {
		if p.ring.Owner(clientID) == id {
			f.sample(p, clientID, now)
			return
		}
	}
}

func (f *failover) sample(p *lostPeer, clientID string, now time.Time) {
	if p.clients[clientID] || len(p.clients) >= failoverMaxClients {
		return
	}
	p.clients[clientID] = true
	d := now.Sub(p.since).Seconds()
	if p.dead {
		f.hist.Observe(d)
	} else {
		p.pending = append(p.pending, d)
	}
}

// changed follows a new view; prev is the one before it.
func (f *failover) changed(prev, v *cluster.View, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire(now)
	for _, m := range v.Members {
		if m.Role != cluster.RoleNode || m.ID == f.self {
			continue
		}
		p := f.peers[m.ID]
		switch {
		case m.State == cluster.StateDead && p == nil && prev.Ring != nil && prev.Ring.Has(m.ID):
			f.peers[m.ID] = &lostPeer{since: now, ring: prev.Ring, dead: true, clients: map[string]bool{}}
		case m.State == cluster.StateDead && p != nil && !p.dead:
			p.dead = true
			for _, d := range p.pending {
				f.hist.Observe(d)
			}
			p.pending = nil
		case m.State != cluster.StateDead && p != nil && p.dead:
			delete(f.peers, m.ID) // back: its clients return to it
		}
	}
}

func (f *failover) expire(now time.Time) {
	for id, p := range f.peers {
		if now.Sub(p.since) > failoverWindow {
			delete(f.peers, id)
		}
	}
}
