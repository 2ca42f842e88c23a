package node

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// TestOpenClusterRefused: gossip that leaves loopback needs a cluster key,
// or an explicit -insecure.
func TestOpenClusterRefused(t *testing.T) {
	cfg := Config{ID: "n1", Addr: "127.0.0.1:0", Gossip: "0.0.0.0:0", Detect: "fast", DrainWindow: time.Millisecond}
	_, err := New(cfg)
	if !errors.Is(err, cluster.ErrOpenCluster) || !strings.Contains(err.Error(), "-cluster-key") {
		t.Fatalf("New(gossip 0.0.0.0, no key) error = %v, want ErrOpenCluster naming -cluster-key", err)
	}
	for _, edit := range []func(*Config){
		func(c *Config) { c.Insecure = true },
		func(c *Config) { c.ClusterKey = "secret" },
	} {
		c := cfg
		edit(&c)
		s, err := New(c)
		if err != nil {
			t.Fatalf("New(insecure=%v, key=%q) error = %v, want nil", c.Insecure, c.ClusterKey, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Run(ctx); err != nil {
			t.Errorf("Run = %v", err)
		}
	}
}

// TestRefusedJoinNotReady: a node whose seed refuses it (another cluster
// key) is alone in a ring of its own; it must not report ready, and it warns
// once instead of logging every attempt.
func TestRefusedJoinNotReady(t *testing.T) {
	seed := startNode(t, func(c *Config) { c.ClusterKey = "key-a" })
	core, logs := observer.New(zap.WarnLevel)
	cfg := Config{ID: "n2", Addr: "127.0.0.1:0", Gossip: "127.0.0.1:0", Detect: "fast", DrainWindow: time.Millisecond,
		ClusterKey: "key-b", Join: []string{seed.GossipAddr()}, Log: zap.New(core)}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{Server: s, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- s.Run(ctx) }()
	t.Cleanup(func() { n.stop(t) })

	refusals := func() int { return logs.FilterMessage("seeds refuse the join: check -cluster-key").Len() }
	testkit.Eventually(t, 5*time.Second, func() bool { return refusals() > 0 }, "no warning about the refused join")
	// By now the node is in a ring of its own; 2 s of retries later it still
	// is, says so, and has not logged again.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if code, body := n.get(t, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not joined") {
			t.Fatalf("/readyz = %d %s, want 503 not joined", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := refusals(); got != 1 {
		t.Errorf("refused join warned %d times, want 1", got)
	}
	if code, _ := seed.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("seed /readyz = %d, want 200", code)
	}
}
