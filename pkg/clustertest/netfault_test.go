//go:build linux

package clustertest

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestNetCutAndHeal(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts processes")
	}
	if err := NetSupported(); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	o := Options{Nodes: 2}
	n, err := NewNet(o)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c, err := n.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ready := func() error { return GetJSON(ctx, "http://"+c.Nodes[0].Addr+"/readyz", nil) }
	// Ready once its mesh link to n2 is up (it may lag the membership).
	if err := testkit.Wait(ctx, 10*time.Second, ready); err != nil {
		t.Fatalf("n1 not ready before the cut: %v", err)
	}
	// Cut off from its only peer, n1 loses its mesh link and says so.
	if err := n.Cut("n1", "n2"); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Wait(ctx, 15*time.Second, func() error {
		if ready() == nil {
			return errors.New("n1 still ready")
		}
		return nil
	}); err != nil {
		t.Fatalf("after Cut(n1, n2): %v", err)
	}
	if err := n.Heal("n1"); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Wait(ctx, 15*time.Second, ready); err != nil {
		t.Fatalf("after Heal(n1): %v", err)
	}
}

// TestTwoNets builds two Nets at once, as two test runs on one machine do:
// each gets a /24 of its own, and a cluster on each is reachable from here.
// On one /24 both bridges would claim the same route and one cluster would
// be cut off.
func TestTwoNets(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts processes")
	}
	if err := NetSupported(); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	o := Options{Nodes: 1}
	var hosts []string
	for i := range 2 {
		n, err := NewNet(o)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		hosts = append(hosts, n.Host())
		c, err := n.Start(ctx, o)
		if err != nil {
			t.Fatalf("net %d (host %s): %v", i, n.Host(), err)
		}
		defer c.Close()
		for _, p := range append(c.Balancers, c.Nodes...) {
			if err := testkit.Wait(ctx, 10*time.Second, func() error { return GetJSON(ctx, "http://"+p.Addr+"/healthz", nil) }); err != nil {
				t.Errorf("net %d: %s at %s: %v", i, p.Name, p.Addr, err)
			}
		}
	}
	a, b := netip.MustParseAddr(hosts[0]), netip.MustParseAddr(hosts[1])
	if netip.PrefixFrom(a, 24).Masked() == netip.PrefixFrom(b, 24).Masked() {
		t.Errorf("both nets on the /24 of %s and %s", a, b)
	}
}
