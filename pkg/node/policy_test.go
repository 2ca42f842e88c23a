package node

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/bridgetest"
	"github.com/ringcast/ringcast/pkg/hub"
	"github.com/ringcast/ringcast/pkg/session"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// policyServer is a Server with just what the failover policy uses.
func policyServer(t *testing.T) *Server {
	t.Helper()
	cfg := LocalConfig("n1")
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: cfg, log: zap.NewNop(), conns: map[*session.Conn]struct{}{}, reg: prometheus.NewRegistry()}
	s.met = newMetrics(s, s.reg)
	var err error
	if s.hub, err = hub.New(hub.DefaultConfig(), bridgetest.NewLoopback(bridge.Receiver{}), nil, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPace checks the rebalance pacing: RebalanceRate per second in
// batches every 50 ms, the first at once, and a newer view stops the pass.
func TestPace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, rate = 1200, 500
		items := make([]int, n)
		var at []time.Duration
		start := time.Now()
		if !pace(t.Context(), items, rate, nil, func(int) { at = append(at, time.Since(start)) }) {
			t.Fatal("pace reported an interruption without a change")
		}
		if len(at) != n {
			t.Fatalf("moved %d, want %d", len(at), n)
		}
		// 25 per 50 ms tick: item i goes at (i/25) ticks.
		for i, d := range at {
			if want := time.Duration(i/25) * paceTick; d != want {
				t.Fatalf("item %d moved at %v, want %v", i, d, want)
			}
		}
		for i := range at {
			j := i
			for j < n && at[j]-at[i] < time.Second {
				j++
			}
			if j-i > rate {
				t.Fatalf("%d moves within 1 s from %v, want at most %d", j-i, at[i], rate)
			}
		}

		changes := make(chan struct{})
		moved := 0
		go func() {
			time.Sleep(120 * time.Millisecond)
			close(changes)
		}()
		if pace(t.Context(), items, rate, changes, func(int) { moved++ }) {
			t.Error("pace finished despite a newer view")
		}
		if moved != 75 { // ticks at 0, 50 and 100 ms
			t.Errorf("moved %d before the change at 120 ms, want 75", moved)
		}

		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if !pace(ctx, items, rate, nil, func(int) {}) {
			t.Error("pace after ctx ended asks for a rerun")
		}
	})
}

type fakeMover struct{ after []time.Duration }

func (m *fakeMover) Move(reason string, code int, after time.Duration) bool {
	m.after = append(m.after, after)
	return true
}

// TestAskMoveFloor checks a rebalance request's after_ms: MoveFloor plus
// jitter over the spread; a drain has no floor.
func TestAskMoveFloor(t *testing.T) {
	s := policyServer(t)
	s.cfg.MoveFloor, s.cfg.RebalanceSpread = 300*time.Millisecond, time.Second
	var m fakeMover
	for range 200 {
		s.askMove(&m, wire.ReasonRebalance, wire.CloseMoved, s.cfg.RebalanceSpread)
	}
	lo, hi := time.Hour, time.Duration(0)
	for _, a := range m.after {
		lo, hi = min(lo, a), max(hi, a)
	}
	if lo < 300*time.Millisecond || hi > 1300*time.Millisecond || hi-lo < 500*time.Millisecond {
		t.Errorf("rebalance after_ms in [%v, %v], want spread over [300ms, 1.3s]", lo, hi)
	}
	m.after = nil
	for range 200 {
		s.askMove(&m, wire.ReasonDrain, wire.CloseGoingAway, 100*time.Millisecond)
	}
	for _, a := range m.after {
		if a > 100*time.Millisecond {
			t.Fatalf("drain after_ms %v, want at most the 100ms window", a)
		}
	}
	if got := metric(t, s.met.moved, "ringcast_node_clients_moved_total"); got != 400 {
		t.Errorf("moved counter %v, want 400", got)
	}
}

// TestFence checks the fence's policy: a pause past the latest detection
// fences at once; one past the earliest fences only when gossip declared
// the node dead (an accusation) within the confirmation window; a stall
// that gossip forgave, or a short one, fences nothing.
func TestFence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := policyServer(t)
		ticks := make(chan time.Time)
		var accused atomic.Uint64
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.fence(ctx, ticks, fencing{
				surely:  func() time.Duration { return 3 * time.Second },
				maybe:   func() time.Duration { return 600 * time.Millisecond },
				confirm: func() time.Duration { return 2 * time.Second },
				accused: accused.Load,
			})
		}()
		tick := func(after time.Duration) {
			time.Sleep(after)
			ticks <- time.Now()
			synctest.Wait()
		}
		pauses := func() float64 { return metric(t, s.met.paused, "ringcast_node_pauses_total") }
		for range 10 {
			tick(fenceTick)
		}
		tick(550 * time.Millisecond) // a stall gossip cannot have acted on
		accused.Add(1)               // even with news of a death (a restart's old incarnation)
		tick(fenceTick)
		if n := pauses(); n != 0 {
			t.Fatalf("fenced after a 550ms gap (earliest detection 600ms): %v", n)
		}

		tick(700 * time.Millisecond) // peers may have declared it dead: they did not
		for range 25 {               // 2.5 s: past the confirmation window
			tick(fenceTick)
		}
		if n := pauses(); n != 0 {
			t.Fatalf("fenced after a 700ms stall that gossip forgave: %v", n)
		}
		accused.Add(1) // news after the window counts for nothing
		tick(fenceTick)
		if n := pauses(); n != 0 {
			t.Fatalf("fenced on an accusation %v after the stall: %v", 2600*time.Millisecond, n)
		}

		tick(700 * time.Millisecond) // this time they did: the refute comes 300ms later
		tick(fenceTick)
		tick(fenceTick)
		if n := pauses(); n != 0 {
			t.Fatalf("fenced before the accusation: %v", n)
		}
		accused.Add(1)
		tick(fenceTick)
		if n := pauses(); n != 1 {
			t.Fatalf("pauses = %v after a 700ms pause and an accusation, want 1", n)
		}
		accused.Add(1)
		for range 5 {
			tick(fenceTick)
		}
		if n := pauses(); n != 1 {
			t.Fatalf("pauses = %v after normal ticks, want still 1: one pause fences once", n)
		}

		tick(3100 * time.Millisecond) // past every peer's detection: no news needed
		if n := pauses(); n != 2 {
			t.Fatalf("pauses = %v after a 3.1s pause, want 2", n)
		}
		cancel()
		<-done
	})
}

// TestFencing checks the policy comes from the cluster's detection timing
// and that Config.FenceAfter overrides the pause that fences at once.
func TestFencing(t *testing.T) {
	cfg := LocalConfig("n1")
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	defer s.cluster.Run(canceled()) // releases the gossip sockets
	d := s.cluster.Detection()
	p := s.fencing()
	if got := p.maybe(); got != d.Earliest || got != 600*time.Millisecond {
		t.Errorf("maybe = %v, want the fast profile's earliest death %v (600ms)", got, d.Earliest)
	}
	if got := p.surely(); got != d.Latest || got < d.Earliest {
		t.Errorf("surely = %v, want the latest death %v, not before the earliest %v", got, d.Latest, d.Earliest)
	}
	if got := p.confirm(); got < 2*time.Second || got < d.Latest {
		t.Errorf("confirm = %v, want at least 2s and the latest death %v", got, d.Latest)
	}
	s.cfg.FenceAfter = 2 * time.Second
	if got := s.fencing().surely(); got != 2*time.Second {
		t.Errorf("surely with FenceAfter 2s = %v", got)
	}
	s.cfg.FenceAfter = 100 * time.Millisecond
	if got := s.fencing().maybe(); got != 100*time.Millisecond {
		t.Errorf("maybe with FenceAfter 100ms = %v, want 100ms (never past surely)", got)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// metric reads counter c, named name (the server's other metrics need a
// cluster).
func metric(t *testing.T, c prometheus.Counter, name string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	v, _ := testkit.Metric(t, reg, name)
	return v
}

func TestFailoverConfig(t *testing.T) {
	cfg := LocalConfig("n1")
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.MoveFloor != 300*time.Millisecond || cfg.SweepAge != 3*time.Second || cfg.OwnerProbeTimeout != 500*time.Millisecond ||
		cfg.CloseGrace != 2*time.Second || cfg.FenceAfter != 0 {
		t.Errorf("defaults: %v %v %v %v %v", cfg.MoveFloor, cfg.SweepAge, cfg.OwnerProbeTimeout, cfg.CloseGrace, cfg.FenceAfter)
	}
	for _, set := range []func(*Config){
		func(c *Config) { c.MoveFloor = -1 },
		func(c *Config) { c.SweepAge = -1 },
		func(c *Config) { c.OwnerProbeTimeout = -1 },
		func(c *Config) { c.FenceAfter = -1 },
		func(c *Config) { c.CloseGrace = -1 },
	} {
		c := LocalConfig("n1")
		set(&c)
		if err := c.validate(); err == nil {
			t.Errorf("a negative failover timing was accepted: %+v", c)
		}
	}
}
