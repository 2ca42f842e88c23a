package node

import (
	"fmt"
	"math"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/ring"
)

func failoverView(t *testing.T, alive []string, dead ...string) *cluster.View {
	t.Helper()
	r, err := ring.New(alive)
	if err != nil {
		t.Fatal(err)
	}
	v := &cluster.View{Ring: r}
	for _, id := range alive {
		v.Members = append(v.Members, cluster.Member{ID: id, Role: cluster.RoleNode, State: cluster.StateAlive})
	}
	for _, id := range dead {
		v.Members = append(v.Members, cluster.Member{ID: id, Role: cluster.RoleNode, State: cluster.StateDead})
	}
	return v
}

// clientOf returns a client id that before belongs to from, and after to to.
func clientOf(t *testing.T, before, after *cluster.View, from, to string, skip int) string {
	t.Helper()
	for i := range 100000 {
		id := fmt.Sprintf("c%d", i)
		if before.Ring.Owner(id) == from && (after == nil || after.Ring.Owner(id) == to) {
			if skip == 0 {
				return id
			}
			skip--
		}
	}
	t.Fatalf("no client of %s moving to %s", from, to)
	return ""
}

func samples(t *testing.T, f *failover) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := f.hist.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum()
}

func TestFailoverHistogram(t *testing.T) {
	all := failoverView(t, []string{"a", "b", "c"})
	bDead := failoverView(t, []string{"a", "c"}, "b")
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	check := func(f *failover, wantN uint64, wantSum float64) {
		t.Helper()
		n, sum := samples(t, f)
		if n != wantN || math.Abs(sum-wantSum) > 1e-9 {
			t.Errorf("samples = %d (sum %.3f s), want %d (sum %.3f s)", n, sum, wantN, wantSum)
		}
	}

	// A crash: b's clients arrive before gossip declares b dead (the
	// balancer's dial failed), then more after.
	f := newFailover("a")
	early := clientOf(t, all, bDead, "b", "a", 0)
	f.subscribed(early, all, at(0))
	f.subscribed(clientOf(t, all, bDead, "b", "a", 1), all, at(100))
	check(f, 0, 0) // not confirmed yet
	f.changed(all, bDead, at(900))
	check(f, 2, 0.1)
	f.subscribed(clientOf(t, all, bDead, "b", "a", 2), bDead, at(1500))
	f.subscribed(early, bDead, at(1600)) // subscribes a second channel: counted once
	check(f, 3, 1.6)
	f.subscribed(clientOf(t, all, bDead, "a", "a", 0), bDead, at(1700)) // a's own client
	check(f, 3, 1.6)

	// A pause: gossip first, then the clients (the balancer closes their
	// links once b is declared dead).
	f = newFailover("a")
	f.changed(all, bDead, at(0))
	f.subscribed(clientOf(t, all, bDead, "b", "a", 0), bDead, at(250))
	check(f, 1, 0.25)
	// b comes back: its clients go home, nothing more is measured.
	f.changed(bDead, all, at(5000))
	f.subscribed(clientOf(t, all, bDead, "b", "a", 1), bDead, at(5100))
	check(f, 1, 0.25)

	// A balancer's view lagged: b's client came here, b never died.
	f = newFailover("a")
	f.subscribed(clientOf(t, all, nil, "b", "", 0), all, at(0))
	f.subscribed(clientOf(t, all, nil, "a", "", 0), all, at(int((failoverWindow+time.Second)/time.Millisecond)))
	f.changed(all, bDead, at(int(failoverWindow/time.Millisecond)+2000))
	check(f, 0, 0)

	// A graceful leave is not a death.
	f = newFailover("a")
	left := failoverView(t, []string{"a", "c"})
	left.Members = append(left.Members, cluster.Member{ID: "b", Role: cluster.RoleNode, State: cluster.StateLeft})
	f.changed(all, left, at(0))
	f.subscribed(clientOf(t, all, left, "b", "a", 0), left, at(300))
	check(f, 0, 0)
}
