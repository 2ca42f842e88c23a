package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Nodes on a 3-shard Redis Cluster: the primary of slot 0 is killed while
// every channel is published to. Publishes fail with 503 and /readyz
// reports not ready until its replica takes over; afterwards every client
// holds every acknowledged message of each channel, or was told of the loss
// by a new epoch.
func TestRedisClusterPrimaryKilled(t *testing.T) {
	rc := redistest.StartCluster(t, 3, 1)
	channels := make([]string, 12)
	for i := range channels {
		channels[i] = "feed" + strconv.Itoa(i)
	}
	var old *redistest.Server
	primaryKilled(t, rc.URL(), channels, func() {
		old = rc.Primary(0)
		old.Kill()
	}, func() { rc.WaitPromoted(0, old) })
}

// Nodes on a Sentinel-managed primary and replica: the primary is killed
// while a channel is published to.
func TestRedisSentinelPrimaryKilled(t *testing.T) {
	st := redistest.StartSentinel(t)
	var old *redistest.Server
	primaryKilled(t, st.URL(), []string{"feed"}, func() {
		old = st.Primary()
		old.Kill()
	}, func() { st.WaitFailover(old) })
}

func primaryKilled(t *testing.T, url string, channels []string, kill, promoted func()) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 2, Bridge: url, HistorySize: 1000})
	f := newFleet(t, c, "k", 6, channels...)
	pubs := make([]*clustertest.Publisher, len(channels))
	for i, ch := range channels {
		pubs[i] = clustertest.StartPublisher(c.HTTP(), ch, 20*time.Millisecond)
		defer pubs[i].Stop()
	}
	for _, p := range pubs {
		if err := p.WaitAcked(ctx, 10, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	kill()
	killed := time.Now()
	for _, n := range c.Nodes {
		if err := testkit.Wait(ctx, 5*time.Second, func() error {
			if clustertest.GetJSON(ctx, "http://"+n.Addr+"/readyz", nil) == nil {
				return fmt.Errorf("%s still ready", n.Name)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v %v after the primary died", err, time.Since(killed))
		}
	}
	t.Logf("nodes not ready %v after the primary died", time.Since(killed))
	// A publish to a channel of the dead primary fails loudly with 503
	// (and is not delivered later).
	type attempt struct{ channel, data string }
	var refused []attempt
	n := 0
	if err := testkit.Wait(ctx, 5*time.Second, func() error {
		for _, ch := range channels {
			n++
			data := "refused-" + strconv.Itoa(n)
			if publish(t, c, ch, data) == 503 {
				refused = append(refused, attempt{ch, data})
				return nil
			}
		}
		return errors.New("no publish answered 503")
	}); err != nil {
		t.Error(err)
	}
	// So does one over a client's socket: an error frame bridge_unavailable.
	if len(refused) > 0 {
		n++
		r := attempt{refused[0].channel, "refused-" + strconv.Itoa(n)}
		var we *wire.Error
		switch err := f.Clients[0].Client.Publish(ctx, r.channel, r.data); {
		case errors.As(err, &we) && we.Code == wire.CodeBridgeUnavailable:
			refused = append(refused, r)
		default:
			t.Errorf("socket publish to %s while its primary is down: %v, want error %s", r.channel, err, wire.CodeBridgeUnavailable)
		}
	}

	promoted()
	if err := c.WaitConverged(ctx, 2); err != nil {
		t.Fatal(err)
	}
	t.Logf("nodes ready %v after the primary died", time.Since(killed))
	for _, p := range pubs {
		if err := p.WaitAcked(ctx, len(p.Acked())+20, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		p.Stop()
	}

	told := 0
	for i, ch := range channels {
		want := pubs[i].Acked()
		last := want[len(want)-1]
		if err := f.WaitAll(ctx, 15*time.Second, "given the last publish on "+ch, func(m *clustertest.Member) bool { return m.HasData(ch, last) }); err != nil {
			t.Fatal(err)
		}
		for _, m := range f.Clients {
			epochs := map[string]bool{}
			for _, msg := range m.Messages(ch) {
				epochs[msg.Epoch] = true
			}
			if len(epochs) > 1 {
				told++ // the loss, if any, was reported by the new epoch
				continue
			}
			if !clustertest.HoldsAll(m, ch, want) {
				t.Errorf("%s on %s: acknowledged messages missing in one epoch: a silent gap", m.ID, ch)
			}
		}
		if tally := f.Tally(ch, want); tally.Duplicated > 0 {
			t.Errorf("%s: %v", ch, tally)
		}
	}
	for _, r := range refused {
		for _, m := range f.Clients {
			if m.HasData(r.channel, r.data) {
				t.Errorf("%s received %s on %s, a publish that was refused", m.ID, r.data, r.channel)
			}
		}
	}
	if told == 0 {
		t.Error("no client saw a new epoch: the killed primary served none of the channels")
	}
	t.Logf("%d client×channel streams moved to a new epoch", told)
}
