package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// bare returns a Cluster without gossip, fed through record by the test.
func bare(cfg Config) *Cluster {
	cfg.ID, cfg.WSAddr = "self", "127.0.0.1:1"
	c := &Cluster{cfg: cfg.withDefaults(), log: zap.NewNop(), records: map[string]record{}, dirty: make(chan struct{}, 1)}
	c.snap.Store(&snapshot{view: &View{}, changed: make(chan struct{})})
	return c
}

// gossipNode is node id as process boot announces it.
func gossipNode(id, boot string) *memberlist.Node {
	b, _ := json.Marshal(meta{Role: RoleNode, WSAddr: "127.0.0.1:9" + id, Boot: boot})
	return &memberlist.Node{Name: id, Addr: net.ParseIP("127.0.0.1"), Port: 7000, Meta: b}
}

func ringOf(c *Cluster) []string {
	if r := c.View().Ring; r != nil {
		return r.Members()
	}
	return nil
}

// TestWarmup: a node seen for the first time is on the ring at once, and
// so is one that comes back as the same process; a restarted one warms up
// for Warmup first, doubled per restart within FlapWindow up to MaxWarmup;
// warming nodes are listed and keep their links.
func TestWarmup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := bare(Config{Warmup: 2 * time.Second, MaxWarmup: 10 * time.Second, FlapWindow: time.Minute})
		a, b := gossipNode("a", "boot0"), gossipNode("b", "boot0")
		c.record(a, false)
		c.record(b, false)
		c.rebuild()
		if got := ringOf(c); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("ring of fresh members = %v, want [a b]", got)
		}
		c.record(a, true)
		c.rebuild()
		c.record(a, false) // the same process: falsely suspected
		if wake := c.rebuild(); !wake.IsZero() || !slices.Equal(ringOf(c), []string{"a", "b"}) {
			t.Fatalf("same process back: ring %v, warm-up until %v, want [a b] at once", ringOf(c), wake)
		}
		for i, want := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second} {
			c.record(a, true)
			c.rebuild()
			a = gossipNode("a", fmt.Sprint("boot", i+1))
			c.record(a, false)
			wake := c.rebuild()
			if got := time.Until(wake); got != want {
				t.Errorf("return %d: warm-up %v, want %v", i+1, got, want)
			}
			v := c.View()
			if got := ringOf(c); !slices.Equal(got, []string{"b"}) || !slices.Equal(v.Warming(), []string{"a"}) {
				t.Errorf("return %d: ring %v warming %v, want [b] and [a]", i+1, got, v.Warming())
			}
			if _, ok := v.Peers()["a"]; !ok {
				t.Errorf("return %d: warming a missing from Peers %v", i+1, v.Peers())
			}
			time.Sleep(want)
			c.rebuild()
			if got := ringOf(c); !slices.Equal(got, []string{"a", "b"}) || len(c.View().Warming()) != 0 {
				t.Errorf("return %d after %v: ring %v warming %v, want [a b] and none", i+1, want, got, c.View().Warming())
			}
		}
		// Departures older than FlapWindow no longer count.
		time.Sleep(time.Minute)
		c.record(a, true)
		c.record(gossipNode("a", "later"), false)
		if got := time.Until(c.rebuild()); got != 2*time.Second {
			t.Errorf("return after a quiet minute: warm-up %v, want 2s", got)
		}
	})
}

// TestWarmupEndsWithoutChurn: the coalescing loop puts a warmed-up node on
// the ring when its warm-up ends, with no membership event to prompt it.
func TestWarmupEndsWithoutChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := bare(Config{Warmup: 3 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go c.coalesceLoop(ctx)
		c.record(gossipNode("a", "1"), false)
		c.record(gossipNode("b", "1"), false)
		time.Sleep(time.Second)
		c.record(gossipNode("a", "1"), true)
		c.record(gossipNode("a", "2"), false)
		time.Sleep(time.Second)
		if got := ringOf(c); !slices.Equal(got, []string{"b"}) {
			t.Fatalf("ring while a warms up = %v, want [b]", got)
		}
		epoch := c.View().Epoch
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := ringOf(c); !slices.Equal(got, []string{"a", "b"}) || c.View().Epoch != epoch+1 {
			t.Errorf("ring after the warm-up = %v epoch %d, want [a b] at epoch %d", got, c.View().Epoch, epoch+1)
		}
		cancel()
		synctest.Wait()
	})
}

// TestWarmupOff: a negative Warmup puts a returning node back at once.
func TestWarmupOff(t *testing.T) {
	c := bare(Config{Warmup: -1})
	c.record(gossipNode("a", "1"), false)
	c.record(gossipNode("a", "1"), true)
	c.record(gossipNode("a", "2"), false)
	c.rebuild()
	if got := ringOf(c); !slices.Equal(got, []string{"a"}) {
		t.Errorf("ring = %v, want [a]", got)
	}
}
