package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestDetection(t *testing.T) {
	for _, tc := range []struct {
		detect           string
		n                int
		earliest, latest time.Duration
	}{
		// fast: 200 ms probes, suspicion 2 × 200 ms, no confirmations awaited.
		{DetectFast, 4, 600 * time.Millisecond, 4*200*time.Millisecond + 400*time.Millisecond},
		// lan: 1 s probes, suspicion 4 s once 2 peers confirm, 6 × 4 s without.
		{DetectLAN, 4, 5 * time.Second, 4*time.Second + 24*time.Second},
		// Two processes: nobody can confirm, the shortest suspicion applies.
		{DetectLAN, 2, 5 * time.Second, 2*time.Second + 4*time.Second},
		// 100 processes: suspicion scales with log10 n.
		{DetectFast, 100, 200*time.Millisecond + 800*time.Millisecond, 100*200*time.Millisecond + 800*time.Millisecond},
	} {
		cfg := DefaultConfig()
		cfg.ID, cfg.Detect, cfg.Bind = "x", tc.detect, "127.0.0.1:0"
		mc, err := cfg.withDefaults().memberlistConfig()
		if err != nil {
			t.Fatal(err)
		}
		d := timingOf(mc).detection(tc.n)
		if d.Earliest != tc.earliest || d.Latest != tc.latest {
			t.Errorf("%s, %d members: earliest %v latest %v, want %v and %v", tc.detect, tc.n, d.Earliest, d.Latest, tc.earliest, tc.latest)
		}
	}
}

// TestDetectionOfRunningCluster checks that Cluster.Detection counts the
// members this process sees.
func TestDetectionOfRunningCluster(t *testing.T) {
	cs := startNodes(t, 3)
	testkit.Eventually(t, 10*time.Second, func() bool { return cs[0].Detection().Members == 3 }, "members: %+v", cs[0].Detection())
	if d := cs[0].Detection(); d.Earliest != 600*time.Millisecond {
		t.Errorf("Detection() = %+v, want earliest 600ms", d)
	}
}

// TestUnreachableSpreads checks that the unreachable set a balancer
// publishes reaches a node's view, and that clearing it does too.
func TestUnreachableSpreads(t *testing.T) {
	cs := startNodes(t, 2)
	b := start(t, Config{ID: "b", Role: RoleBalancer, Join: []string{cs[0].GossipAddr()}})
	testkit.Eventually(t, 10*time.Second, func() bool {
		m, ok := cs[1].View().Node("b")
		return ok && m.State == StateAlive
	}, "node 2 never saw the balancer")
	b.SetUnreachable([]string{"2", "1"})
	testkit.Eventually(t, 10*time.Second, func() bool { return cs[1].View().Unreachable("2") && cs[1].View().Unreachable("1") },
		"node 2 never learnt that the balancer cannot reach 1 and 2")
	if m, _ := cs[1].View().Node("b"); !slices.Equal(m.Unreachable(), []string{"1", "2"}) {
		t.Errorf("balancer reports %q, want [1 2]", m.Unreachable())
	}
	b.SetUnreachable(nil)
	testkit.Eventually(t, 10*time.Second, func() bool { return !cs[1].View().Unreachable("2") }, "the cleared set never spread")
}

// TestUnreachableIsCut checks that a set too long for the metadata is cut
// instead of failing.
func TestUnreachableIsCut(t *testing.T) {
	c := start(t, Config{ID: "b", Role: RoleBalancer})
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 40)))
	}
	c.SetUnreachable(ids)
	m := c.meta.Load()
	if len(m[1]) > 512 {
		t.Fatalf("metadata is %d bytes", len(m[1]))
	}
	var md meta
	if err := json.Unmarshal(m[0], &md); err != nil {
		t.Fatal(err)
	}
	if n := len(md.Unreachable); n == 0 || n >= 20 || !slices.Equal(md.Unreachable, ids[:n]) {
		t.Errorf("metadata lists %d of 20 ids: %q", n, md.Unreachable)
	}
}

// TestAccused checks that the refutes memberlist logs, and only those, are
// counted as accusations, through the logger memberlist is given.
func TestAccused(t *testing.T) {
	c := &Cluster{}
	cfg := Config{ID: "n1", Bind: "127.0.0.1:0", Detect: DetectFast}.withDefaults()
	mc, err := cfg.memberlistConfig(c.noteRefute)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"[WARN] memberlist: Refuting a suspect message (from: b1)",
		"[WARN] memberlist: Refuting a dead message (from: n2)",
		"[WARN] memberlist: Refuting an alive message for 'n1' (127.0.0.1:7946) meta:([] VS []), vsn:([] VS [])",
		"[DEBUG] memberlist: Failed UDP ping: n2 (timeout reached)",
		"[INFO] memberlist: Suspect n2 has failed, no acks received",
	} {
		mc.Logger.Print(line)
	}
	if got := c.Accused(); got != 2 {
		t.Errorf("Accused = %d after a suspect and a dead refute among other lines, want 2", got)
	}
}
