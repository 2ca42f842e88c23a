package cluster

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testkit.MemberlistLeaks...) }

func start(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	if cfg.Bind == "" {
		cfg.Bind = "127.0.0.1:0"
	}
	if cfg.Role == RoleNode || cfg.Role == "" {
		cfg.WSAddr = "127.0.0.1:9" + cfg.ID
	}
	cfg.Detect = DetectFast
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s) error = %v", cfg.ID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run(%s) = %v, want nil", cfg.ID, err)
		}
	})
	return c
}

// startNodes starts nodes with ids 1..n, each joining the first.
func startNodes(t *testing.T, n int) []*Cluster {
	cs := []*Cluster{start(t, Config{ID: "1"})}
	for i := 2; i <= n; i++ {
		cs = append(cs, start(t, Config{ID: fmt.Sprint(i), Join: []string{cs[0].GossipAddr()}}))
	}
	return cs
}

func ringNodes(v *View) []string {
	if v.Ring == nil {
		return nil
	}
	m := v.Ring.Members()
	slices.Sort(m)
	return m
}

func state(c *Cluster, id string) State {
	m, _ := c.View().Node(id)
	return m.State
}

// dump describes every cluster's view when a failure message is formatted.
type dump []*Cluster

func (cs dump) String() string {
	var b strings.Builder
	for _, c := range cs {
		v := c.View()
		fmt.Fprintf(&b, "\n%s: epoch %d ring %v members %+v", c.LocalID(), v.Epoch, ringNodes(v), v.Members)
	}
	return b.String()
}

// converged reports whether every cluster's ring holds exactly nodes.
func converged(cs []*Cluster, nodes ...string) bool {
	for _, c := range cs {
		if !slices.Equal(ringNodes(c.View()), nodes) {
			return false
		}
	}
	return true
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := Config{ID: "n1", WSAddr: "127.0.0.1:9001", Bind: "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"missing id", func(c *Config) { c.ID = "" }},
		{"long id", func(c *Config) { c.ID = strings.Repeat("x", 129) }},
		{"bad role", func(c *Config) { c.Role = "proxy" }},
		{"bad detect", func(c *Config) { c.Detect = "slow" }},
		{"node without websocket address", func(c *Config) { c.WSAddr = "" }},
		{"bad websocket address", func(c *Config) { c.WSAddr = "nowhere" }},
		{"bad bind", func(c *Config) { c.Bind = "127.0.0.1" }},
		{"bad bind port", func(c *Config) { c.Bind = "127.0.0.1:70000" }},
		{"bad advertise", func(c *Config) { c.Advertise = "10.0.0.1" }},
		{"negative coalesce", func(c *Config) { c.Coalesce = -time.Second }},
		{"empty seed", func(c *Config) { c.Join = []string{""} }},
		{"seed without port", func(c *Config) { c.Join = []string{"10.0.0.1"} }},
		{"dns seed without port", func(c *Config) { c.Join = []string{"dns:ringcast"} }},
		{"dns seed without name", func(c *Config) { c.Join = []string{"dns::7946"} }},
		{"dns seed with a bad port", func(c *Config) { c.Join = []string{"dns:ringcast:gossip"} }},
		{"oversized metadata", func(c *Config) { c.WSAddr = strings.Repeat("h", 600) + ":1" }},
	} {
		cfg := ok
		tc.edit(&cfg)
		if c, err := New(cfg); err == nil {
			c.shutdown()
			t.Errorf("New(%s) error = nil, want error", tc.name)
		}
	}
}

func TestRunCancelledAndLeaveAfter(t *testing.T) {
	c, err := New(Config{ID: "1", WSAddr: "127.0.0.1:1", Bind: "127.0.0.1:0", Detect: DetectFast})
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Errorf("Run(cancelled) = %v, want nil", err)
	}
	if v := c.View(); v.Epoch != 1 || !slices.Equal(ringNodes(v), []string{"1"}) {
		t.Errorf("View() = epoch %d ring %v, want epoch 1 ring [1]", v.Epoch, ringNodes(v))
	}
	if err := c.Leave(time.Second); err != nil {
		t.Errorf("Leave() after Run = %v, want nil", err)
	}
	if err := c.Run(context.Background()); err == nil {
		t.Error("second Run() = nil, want error")
	}
}

func TestConverge(t *testing.T) {
	nodes := startNodes(t, 3)
	b := start(t, Config{ID: "b", Role: RoleBalancer, Join: []string{nodes[2].GossipAddr()}})
	all := append(slices.Clone(nodes), b)
	testkit.Eventually(t, 10*time.Second, func() bool {
		if !converged(all, "1", "2", "3") {
			return false
		}
		for _, c := range all {
			if len(c.View().Members) != 4 {
				return false
			}
		}
		return true
	}, "members did not converge:%s", dump(all))

	want := b.View()
	for _, c := range all {
		v := c.View()
		if v.Epoch == 0 {
			t.Errorf("%s: epoch 0 after convergence", c.LocalID())
		}
		for i := range 200 {
			key := fmt.Sprintf("client-%d", i)
			if got, w := v.Ring.Owner(key), want.Ring.Owner(key); got != w {
				t.Fatalf("%s: Owner(%q) = %q, want %q", c.LocalID(), key, got, w)
			}
		}
	}
	for _, c := range all {
		for _, o := range all {
			m, ok := c.View().Node(o.LocalID())
			wantAddr := o.cfg.WSAddr
			if !ok || m.Addr != wantAddr || m.Gossip != o.GossipAddr() || m.State != StateAlive || m.Role != o.cfg.Role {
				t.Errorf("%s: Node(%q) = %+v, %v, want addr %q gossip %q alive %s", c.LocalID(), o.LocalID(), m, ok, wantAddr, o.GossipAddr(), o.cfg.Role)
			}
		}
	}
	if _, ok := b.View().Node("nobody"); ok {
		t.Errorf("Node(%q) found, want not found", "nobody")
	}
}

func TestBalancerJoinKeepsEpoch(t *testing.T) {
	n := start(t, Config{ID: "1"})
	testkit.Eventually(t, 2*time.Second, func() bool { return n.View().Epoch == 1 }, "first view not built")
	changed := n.Changes()
	v := n.View()
	start(t, Config{ID: "b", Role: RoleBalancer, Join: []string{n.GossipAddr()}})
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("Changes() not closed after a balancer joined")
	}
	got := n.View()
	if got.Epoch != v.Epoch || got.Ring != v.Ring || len(got.Members) != 2 {
		t.Errorf("after balancer join: epoch %d ring %p members %v, want epoch %d ring %p and 2 members", got.Epoch, got.Ring, got.Members, v.Epoch, v.Ring)
	}
}

func TestGracefulLeave(t *testing.T) {
	cs := startNodes(t, 3)
	testkit.Eventually(t, 10*time.Second, func() bool { return converged(cs, "1", "2", "3") }, "did not converge:%s", dump(cs))
	epoch := cs[0].View().Epoch
	changed := cs[0].Changes()

	if err := cs[2].Leave(time.Second); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	if err := cs[2].Leave(time.Second); err != nil {
		t.Errorf("second Leave() = %v, want nil", err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		return converged(cs, "1", "2") && state(cs[0], "3") == StateLeft && state(cs[1], "3") == StateLeft && state(cs[2], "3") == StateLeft
	}, "leave not seen:%s", dump(cs))
	select {
	case <-changed:
	default:
		t.Error("Changes() not closed after the ring changed")
	}
	if got := cs[0].View().Epoch; got <= epoch {
		t.Errorf("epoch after leave = %d, want > %d", got, epoch)
	}
}

func TestCrashDetection(t *testing.T) {
	cs := startNodes(t, 3)
	testkit.Eventually(t, 10*time.Second, func() bool { return converged(cs, "1", "2", "3") }, "did not converge:%s", dump(cs))
	epoch := cs[0].View().Epoch

	began := time.Now()
	cs[2].shutdown() // no leave: peers see a crash
	testkit.Eventually(t, 2*time.Second, func() bool {
		return state(cs[0], "3") == StateDead && state(cs[1], "3") == StateDead
	}, "crash not detected:%s", dump(cs))
	took := time.Since(began)
	t.Logf("crashed member declared dead by both peers after %v", took)
	if !converged(cs[:2], "1", "2") {
		t.Errorf("rings after crash = %v / %v, want [1 2]", ringNodes(cs[0].View()), ringNodes(cs[1].View()))
	}
	if got := cs[0].View().Epoch; got <= epoch {
		t.Errorf("epoch after crash = %d, want > %d", got, epoch)
	}
}

// A member started before its seed keeps trying and joins once the seed is
// up; when the seed crashes and comes back alone, the rejoin loop merges them.
func TestJoinLateSeedAndRejoin(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seedAddr := l.Addr().String()
	l.Close()

	core, logs := observer.New(zapcore.DebugLevel)
	b := start(t, Config{ID: "b", Role: RoleBalancer, Join: []string{seedAddr}, Log: zap.New(core)})
	testkit.Eventually(t, 10*time.Second, func() bool { return logs.FilterMessage("join seeds").Len() > 0 }, "no failed join attempt logged")

	seed := start(t, Config{ID: "1", Bind: seedAddr})
	testkit.Eventually(t, 10*time.Second, func() bool { return converged([]*Cluster{b, seed}, "1") && len(seed.View().Members) == 2 }, "late seed not joined:%s", dump{b, seed})

	seed.shutdown()
	testkit.Eventually(t, 3*time.Second, func() bool { return state(b, "1") == StateDead }, "seed crash not detected:%s", dump{b})
	seed2 := start(t, Config{ID: "1", Bind: seedAddr})
	testkit.Eventually(t, 10*time.Second, func() bool {
		return state(b, "1") == StateAlive && state(seed2, "b") == StateAlive
	}, "restarted seed not re-merged:%s", dump{b, seed2})
}

func TestEncryption(t *testing.T) {
	a := start(t, Config{ID: "1", Key: []byte("secret")})
	b := start(t, Config{ID: "2", Key: []byte("secret"), Join: []string{a.GossipAddr()}})
	testkit.Eventually(t, 10*time.Second, func() bool { return converged([]*Cluster{a, b}, "1", "2") }, "keyed members did not converge:%s", dump{a, b})

	for _, key := range [][]byte{nil, []byte("other")} {
		c := start(t, Config{ID: "3", Key: key})
		if _, err := c.ml.Join([]string{a.GossipAddr()}); err == nil {
			t.Errorf("Join with key %q into a keyed cluster succeeded, want error", key)
		}
	}
}
