package redis

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// checkNoSilentGap fails when n received two messages of channel in one
// epoch whose offsets are not consecutive without a Lost call between them.
// It returns how many messages were checked.
func checkNoSilentGap(t *testing.T, n *node, channel string) int {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	var last *bridge.Message
	count := 0
	for i, m := range n.msgs {
		switch {
		case m.Channel == "": // Lost
			last = nil
		case m.Channel == channel:
			count++
			if last != nil && last.Epoch == m.Epoch && m.Offset != last.Offset+1 {
				t.Errorf("%s: offset %d followed offset %d in epoch %s without a Lost call: a silent gap", channel, m.Offset, last.Offset, m.Epoch)
			}
			last = &n.msgs[i]
		}
	}
	return count
}

// publisher publishes 1, 2, 3… on channel from n until stopped, recording
// what was acknowledged and what failed.
type publisher struct {
	mu     sync.Mutex
	acked  []bridge.Message
	failed []error
	// ackedNotReady counts the acknowledged publishes during which n's
	// Ready reported an error throughout (when it did before and after).
	ackedNotReady int
	stop          chan struct{}
	done          chan struct{}
}

func startPublisher(n *node, channel string) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := 1; ; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			notReady := n.Ready() != nil
			m, err := n.Publish(context.Background(), msg(channel, i))
			notReady = notReady && n.Ready() != nil
			p.mu.Lock()
			if err != nil {
				p.failed = append(p.failed, err)
			} else {
				p.acked = append(p.acked, m)
				if notReady {
					p.ackedNotReady++
				}
			}
			p.mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond) // do not spin on a dead cluster
			} else {
				time.Sleep(2 * time.Millisecond)
			}
		}
	}()
	return p
}

func (p *publisher) counts() (acked, failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked), len(p.failed)
}

func (p *publisher) halt() {
	close(p.stop)
	<-p.done
}

// waitAcked waits until n more publishes than now were acknowledged.
func (p *publisher) waitAcked(t *testing.T, n int, within time.Duration) {
	t.Helper()
	base, _ := p.counts()
	testkit.Eventually(t, within, func() bool { a, _ := p.counts(); return a >= base+n }, "fewer than %d publishes acknowledged", n)
}

func TestCluster(t *testing.T) {
	rc := redistest.StartCluster(t, 3, 1)
	cfg := func(id string) Config {
		c := fastConfig(rc.URL(), id)
		c.HistorySize = 1000
		return c
	}
	a, b := start(t, cfg("a")), start(t, cfg("b"))
	waitReady(t, a, b)
	ctx := context.Background()

	t.Run("delivery", func(t *testing.T) {
		primaries := map[int]bool{}
		var channels []string
		for i := range 24 {
			ch := "room" + strconv.Itoa(i)
			channels = append(channels, ch)
			primaries[rc.Primary(rc.Slot(a.channelTopic(ch))).Port()] = true
			if err := b.Subscribe(ctx, ch); err != nil {
				t.Fatalf("Subscribe(%s): %v", ch, err)
			}
		}
		if len(primaries) != 3 {
			t.Fatalf("channels spread over %d primaries, want 3", len(primaries))
		}
		for round := 1; round <= 3; round++ {
			for _, ch := range channels {
				m, err := a.Publish(ctx, msg(ch, round))
				if err != nil || m.Offset != uint64(round) || m.Epoch == "" {
					t.Fatalf("Publish(%s #%d) = %+v, %v; want offset %d and an epoch", ch, round, m, err, round)
				}
			}
		}
		for _, ch := range channels {
			testkit.Eventually(t, 5*time.Second, func() bool { return len(b.received(ch)) == 3 }, "b got %d messages on %s, want 3", len(b.received(ch)), ch)
			for i, m := range b.received(ch) {
				if m.Offset != uint64(i+1) || string(m.Data) != strconv.Itoa(i+1) {
					t.Errorf("%s message %d = %+v, want data and offset %d", ch, i, m, i+1)
				}
			}
		}
		if got := a.received("room0"); len(got) != 0 {
			t.Errorf("a without interest received %v", got)
		}

		// Direct messages cross shards too, and only to the holder.
		b.mu.Lock()
		b.local["bob"] = true
		b.mu.Unlock()
		if err := b.Hold(ctx, "bob"); err != nil {
			t.Fatalf("Hold: %v", err)
		}
		if ok, err := a.Send(ctx, bridge.Direct{To: "bob", From: "carol", Data: json.RawMessage(`"hi"`)}); err != nil || !ok {
			t.Errorf("Send(bob) = %v, %v, want true", ok, err)
		}
		testkit.Eventually(t, 2*time.Second, func() bool { return len(b.directsTo("bob")) == 1 }, "bob got no direct")
		if ok, err := a.Send(ctx, bridge.Direct{To: "nobody", Data: json.RawMessage(`1`)}); err != nil || ok {
			t.Errorf("Send(nobody) = %v, %v, want false, nil", ok, err)
		}
		b.Release("bob")

		// Unsubscribe reaches the shard.
		b.Unsubscribe("room0")
		topic := a.channelTopic("room0")
		shard := goredis.NewClient(&goredis.Options{Addr: rc.Primary(rc.Slot(topic)).Addr(), MaxRetries: -1})
		defer shard.Close()
		testkit.Eventually(t, 2*time.Second, func() bool {
			n, err := shard.PubSubShardNumSub(ctx, topic).Result()
			return err == nil && n[topic] == 0
		}, "b still subscribed to room0")
	})

	t.Run("since", func(t *testing.T) {
		top := b.received("room5")[2]
		msgs, pos, rec, err := b.History(ctx, "room5", &wire.Position{Epoch: top.Epoch, Offset: 1})
		if err != nil || !rec || len(msgs) != 2 || msgs[0].Offset != 2 || msgs[1].Offset != 3 || pos.Offset != 3 {
			t.Fatalf("History(room5 since 1) = %v, %+v, %v, %v; want offsets 2 and 3 recovered", msgs, pos, rec, err)
		}
		if _, _, rec, _ := b.History(ctx, "room5", &wire.Position{Epoch: "other", Offset: 1}); rec {
			t.Error("History since an unknown epoch recovered")
		}
	})

	t.Run("slot migration while publishing", func(t *testing.T) {
		const ch = "moving"
		if err := b.Subscribe(ctx, ch); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		lost := b.lost.Load()
		p := startPublisher(a, ch)
		p.waitAcked(t, 30, 10*time.Second)
		slot := rc.Slot(a.channelTopic(ch))
		from := rc.Primary(slot)
		to := rc.OtherPrimary(from)
		rc.MoveSlot(slot, to)
		if rc.Primary(slot) == from {
			t.Fatal("slot did not move")
		}
		p.waitAcked(t, 30, 10*time.Second)
		p.halt()
		// The new primary adopted the keys: its mark names it, and its
		// replica's copy of the migrated mark was replaced, so a promotion
		// would start a new epoch.
		markKey := a.historyKeys(ch)[3]
		if got, err := rc.Get(to, markKey); err != nil || got != rc.ID(to) {
			t.Errorf("mark on the new primary = %q, %v; want its id %s", got, err, rc.ID(to))
		}
		replica := rc.Replica(to)
		testkit.Eventually(t, 5*time.Second, func() bool { got, _ := rc.Get(replica, markKey); return got == "-" }, "the replica kept the migrated mark")
		acked, failed := p.counts()
		t.Logf("%d publishes acknowledged, %d failed %v; Lost called %d times", acked, failed, p.failed, b.lost.Load()-lost)

		// The stream moved with the slot: one epoch, and history holds
		// every acknowledged message at its offset.
		first, last := p.acked[0], p.acked[len(p.acked)-1]
		for i, m := range p.acked {
			if m.Epoch != first.Epoch {
				t.Fatalf("epoch changed from %s to %s across the migration at publish %d of %d (offset %d after %d)", first.Epoch, m.Epoch, i, len(p.acked), m.Offset, p.acked[i-1].Offset)
			}
		}
		msgs, _, rec, err := b.History(ctx, ch, &wire.Position{Epoch: first.Epoch, Offset: first.Offset - 1})
		if err != nil || !rec {
			t.Fatalf("History after the migration: recovered %v, %v", rec, err)
		}
		byOffset := map[uint64]string{}
		for _, m := range msgs {
			byOffset[m.Offset] = string(m.Data)
		}
		for _, m := range p.acked {
			if byOffset[m.Offset] != string(m.Data) {
				t.Errorf("history at offset %d = %q, want %s", m.Offset, byOffset[m.Offset], m.Data)
			}
		}
		// The subscriber was moved too: it receives the last message, and
		// any gap it had was reported.
		testkit.Eventually(t, 5*time.Second, func() bool {
			got := b.received(ch)
			return len(got) > 0 && got[len(got)-1].Offset == last.Offset
		}, "subscriber did not receive the last publish after the migration")
		checkNoSilentGap(t, b, ch)
	})

	t.Run("primary killed mid-stream", func(t *testing.T) {
		const ch = "doomed"
		failover(t, a, b, ch, func() {
			rc.Primary(rc.Slot(a.channelTopic(ch))).Kill()
		}, rc.WaitHealthy)
	})
}

func TestSentinel(t *testing.T) {
	st := redistest.StartSentinel(t)
	cfg := func(id string) Config {
		c := fastConfig(st.URL(), id)
		c.HistorySize = 1000
		return c
	}
	a, b := start(t, cfg("a")), start(t, cfg("b"))
	waitReady(t, a, b)
	var old *redistest.Server
	failover(t, a, b, "feed", func() {
		old = st.Primary()
		old.Kill()
	}, func() { st.WaitFailover(old) })
}

// failover publishes on ch from a to b, runs kill (a primary dies), checks
// that both nodes report not ready and publishes fail with ErrUnavailable
// (on one primary: every publish made while a was not ready),
// waits for the replica to take over, and checks that publishing resumes in
// a new epoch, history since the old one is not recovered, and b's stream
// has no silent gap.
func failover(t *testing.T, a, b *node, ch string, kill, promoted func()) {
	t.Helper()
	ctx := context.Background()
	if err := b.Subscribe(ctx, ch); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	lost := b.lost.Load()
	p := startPublisher(a, ch)
	p.waitAcked(t, 30, 10*time.Second)
	testkit.Eventually(t, 5*time.Second, func() bool { return len(b.received(ch)) >= 30 }, "b got %d messages, want 30", len(b.received(ch)))
	kill()
	killed := time.Now()
	testkit.Eventually(t, 5*time.Second, func() bool { return a.Ready() != nil && b.Ready() != nil }, "nodes still ready after the primary died")
	t.Logf("not ready %v after the kill: %v", time.Since(killed), b.Ready())
	_, failedBefore := p.counts()
	testkit.Eventually(t, 5*time.Second, func() bool { _, f := p.counts(); return f > failedBefore }, "no publish failed while the primary was down")
	promoted()
	waitReady(t, a, b)
	t.Logf("ready again %v after the kill", time.Since(killed))
	p.waitAcked(t, 30, 10*time.Second)
	p.halt()

	p.mu.Lock()
	defer p.mu.Unlock()
	for _, err := range p.failed {
		if !errors.Is(err, bridge.ErrUnavailable) {
			t.Errorf("publish during the failover failed with %v, want ErrUnavailable", err)
		}
	}
	if a.cluster == nil && p.ackedNotReady > 0 {
		t.Errorf("%d publishes acknowledged while Ready reported an error throughout, want them refused", p.ackedNotReady)
	}
	before, after := p.acked[0], p.acked[len(p.acked)-1]
	if after.Epoch == before.Epoch {
		t.Errorf("epoch %s kept across the failover: messages the replica missed would go unnoticed", after.Epoch)
	}
	if _, _, rec, err := b.History(ctx, ch, &wire.Position{Epoch: before.Epoch, Offset: before.Offset}); err != nil || rec {
		t.Errorf("History since the old epoch = recovered %v, %v; want false", rec, err)
	}
	if b.lost.Load() == lost {
		t.Error("the subscriber lost its connection but Lost was not called")
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		got := b.received(ch)
		return len(got) > 0 && got[len(got)-1].Offset == after.Offset && got[len(got)-1].Epoch == after.Epoch
	}, "subscriber did not receive the last publish after the failover")
	checkNoSilentGap(t, b, ch)
}
