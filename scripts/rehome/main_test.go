package main

import (
	"testing"
	"time"
)

func base() config {
	return config{clients: 20000, survivors: 4, balancers: 2, nodeCores: 4, balancerCores: 4,
		nodeSetup: 500 * time.Microsecond, balancerSetup: 300 * time.Microsecond, refuseCost: 100 * time.Microsecond,
		nodePending: 512, balancerPending: 1024, retryAfter: time.Second, minBackoff: 100 * time.Millisecond,
		maxBack: 20 * time.Second, detectJitter: 20 * time.Millisecond, rtt: time.Millisecond, channels: 1, connKB: 3, seed: 1}
}

// TestEveryClientBackOnce: every client comes back exactly once, on the
// owner it was given, and with no bound nobody is refused and the storm
// takes at least what the busiest tier's CPU needs.
func TestEveryClientBackOnce(t *testing.T) {
	c := base()
	c.nodePending, c.balancerPending = 1<<30, 1<<30
	r := simulate(c)
	if len(r.back) != c.clients || r.dials != c.clients || r.nodeRefused+r.balRefused != 0 {
		t.Fatalf("back %d, dials %d, refused %d+%d; want %d, %d, 0", len(r.back), r.dials, r.nodeRefused, r.balRefused, c.clients, c.clients)
	}
	sum := 0
	for _, g := range r.gained {
		sum += g
	}
	if sum != c.clients {
		t.Fatalf("survivors gained %d in all, want %d", sum, c.clients)
	}
	cpu := time.Duration(c.clients) * c.balancerSetup / time.Duration(c.balancers*c.balancerCores)
	if last := maxOf(r.back); last < cpu {
		t.Fatalf("storm over at %v, before the balancers' CPU allows (%v)", last, cpu)
	}
}

// TestBoundHolds: the bounds are never passed, a burst past them is
// refused or waits, and refused clients still all come back.
func TestBoundHolds(t *testing.T) {
	c := base()
	c.balancerPending, c.pendingWait = 64, 0
	r := simulate(c)
	if r.peakBal > 64 || r.peakNode > c.nodePending {
		t.Fatalf("peak in flight balancer %d node %d, bounds 64 and %d", r.peakBal, r.peakNode, c.nodePending)
	}
	if r.balRefused == 0 || len(r.back) != c.clients {
		t.Fatalf("refused %d, back %d of %d: want refusals and everyone back", r.balRefused, len(r.back), c.clients)
	}
	c.pendingWait = time.Second
	w := simulate(c)
	if w.balRefused >= r.balRefused || maxOf(w.back) >= maxOf(r.back) {
		t.Fatalf("waiting for a slot: %d refused, over at %v; refused at once: %d, %v: waiting should refuse fewer and end sooner",
			w.balRefused, maxOf(w.back), r.balRefused, maxOf(r.back))
	}
}

func maxOf(ds []time.Duration) time.Duration {
	m := time.Duration(0)
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
