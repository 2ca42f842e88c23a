//go:build linux

package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
)

// TestBalancerCutFromNode cuts every packet between one balancer and one
// node, while gossip between the nodes (and with the other balancer) is
// fine: the balancer's own probes must notice, close the relays it holds
// to that node and route its clients elsewhere within 2 s, and no node's
// sweep may send them back while the cut lasts. After the heal they
// return to their owner: two reconnects per client in all.
func TestBalancerCutFromNode(t *testing.T) {
	ctx := context.Background()
	n, c := startNetCluster(t, clustertest.Options{Nodes: 3, Balancers: 2})
	if err := c.WaitConverged(ctx, 3); err != nil {
		t.Fatal(err)
	}
	f, err := clustertest.NewFleet(ctx, c.URL(), "cut", failoverClients(), []string{"room"}, nil) // all through b1
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)

	victim, moved, before := splitFleet(f)
	t.Logf("cutting b1 from %s, which holds %d of %d clients (load %s)", victim, len(moved), len(f.Clients), clustertest.LoadAvg())
	cut := time.Now()
	if err := n.Cut("b1", victim); err != nil {
		t.Fatal(err)
	}
	err = f.WaitAll(ctx, 15*time.Second, "resubscribed off the cut node", func(m *clustertest.Member) bool {
		return m.Node() != victim && m.Client.State() == client.StateConnected && m.SubscribedAt("room").After(m.WelcomedAt())
	})
	if err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	for _, m := range moved {
		took = append(took, m.SubscribedAt("room").Sub(cut))
	}
	p50, p99 := percentile(took, 50), percentile(took, 99)
	t.Logf("re-homed %d clients of the cut node: p50 %v p99 %v max %v (load %s)", len(took), p50, p99, percentile(took, 100), clustertest.LoadAvg())
	if p99 > 2*time.Second {
		t.Errorf("re-home p99 %v, want at most 2 s", p99)
	}
	ci, err := c.Info(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range ci.Nodes {
		if nd.ID == victim && (nd.State != "alive" || !nd.Unreachable) {
			t.Errorf("b1 reports %s %s, unreachable %v; want alive in gossip, unreachable", victim, nd.State, nd.Unreachable)
		}
	}

	// Two sweeps (3 s each) later nobody was sent back towards the cut node.
	time.Sleep(7 * time.Second)
	for _, m := range f.Clients {
		want := 0
		if slices.Contains(moved, m) {
			want = 1
		}
		if got := m.Client.Reconnects() - before[m.ID]; got != want {
			t.Errorf("%s reconnected %d times during the cut, want %d (now on %s)", m.ID, got, want, m.Node())
		}
	}

	if err := n.Heal("b1"); err != nil {
		t.Fatal(err)
	}
	err = f.WaitAll(ctx, 20*time.Second, "back on their owner after the heal", func(m *clustertest.Member) bool {
		o, err := c.Owner(ctx, m.ID)
		return err == nil && m.Node() == o && m.Client.State() == client.StateConnected
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range moved {
		if got := m.Client.Reconnects() - before[m.ID]; got != 2 {
			t.Errorf("%s reconnected %d times over the cut and heal, want 2 (off and back)", m.ID, got)
		}
	}
}
