package redis

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// TestPoisonedInput publishes straight into the bridge's Redis channels
// what no bridge would: each is dropped and counted, and what a client
// receives keeps the channel's real epoch and consecutive offsets.
func TestPoisonedInput(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	cfg := fastConfig(srv.URL(), "a")
	cfg.HistorySize, cfg.Registry = 10, reg
	a := start(t, cfg)
	waitReady(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Subscribe(ctx, "room"); err != nil {
		t.Fatal(err)
	}
	if err := a.Hold(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	first, err := a.Publish(ctx, msg("room", "one"))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return len(a.received("room")) == 1 }, "the first message")

	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer raw.Close()
	epoch := first.Epoch
	poison := []struct{ channel, payload, reason string }{
		{"c:room", `{"channel":"room","data":"` + strings.Repeat("x", 200<<10) + `"}`, dropTooLarge},
		{"c:room", `not json`, dropSchema},
		{"c:room", `{"channel":"other","data":1}`, dropSchema},
		{"c:room", `{"channel":"room"}`, dropSchema},
		{"c:room", `{"channel":"room","data":1,"from":"a/b"}`, dropSchema},
		{"c:room", `{"channel":"room","data":1,"offset":2,"epoch":"forged"}`, dropPosition},
		{"c:room", `{"channel":"room","data":1,"offset":1000000,"epoch":"` + epoch + `"}`, dropPosition},
		{"c:room", `{"channel":"room","data":1,"offset":5}`, dropPosition},
		{"u:bob", `{"to":"carol","data":1}`, dropSchema},
		{"u:bob", `{"to":"bob","data":"` + strings.Repeat("x", 200<<10) + `"}`, dropTooLarge},
	}
	want := map[string]float64{}
	for _, p := range poison {
		if err := raw.Publish(ctx, "ringcast:"+p.channel, p.payload).Err(); err != nil {
			t.Fatal(err)
		}
		want[p.reason]++
	}
	// Without a position a message promises nothing a client could resume
	// from: it passes (a node with history off publishes such).
	if err := raw.Publish(ctx, "ringcast:c:room", `{"channel":"room","data":"plain"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Publish(ctx, msg("room", "two")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return len(a.received("room")) == 3 }, "3 messages delivered, got %d", len(a.received("room")))
	for reason, n := range want {
		if got, _ := testkit.Metric(t, reg, "ringcast_node_bridge_dropped_total", reason); got != n {
			t.Errorf("ringcast_node_bridge_dropped_total{%s} = %v, want %v", reason, got, n)
		}
	}
	for _, m := range a.received("room") {
		if m.Epoch != "" && (m.Epoch != epoch || m.Offset > 2) {
			t.Errorf("delivered %s with epoch %q offset %d; the channel has epoch %q, offsets 1..2", m.Data, m.Epoch, m.Offset, epoch)
		}
	}
	if d := a.directsTo("carol"); len(d) != 0 || len(a.directsTo("bob")) != 0 {
		t.Errorf("poisoned directs delivered: %v", d)
	}
}
