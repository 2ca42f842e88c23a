package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func publish(t *testing.T, c *clustertest.Cluster, channel string, data any) int {
	t.Helper()
	code, err := clustertest.PostJSON(context.Background(), c.HTTP()+"/v1/publish", map[string]any{"channel": channel, "data": data}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestRedisRecoveryAfterDisconnect(t *testing.T) {
	rs := redistest.Start(t)
	c := startCluster(t, clustertest.Options{Nodes: 2, Bridge: rs.URL(), HistorySize: 100})

	a := wstest.Connect(t, c.Balancers[0].Addr, "reader")
	a.SendFrame(wire.Frame{Op: wire.OpSubscribe, Channel: "news"})
	sub := a.Next()
	if sub.Op != wire.OpSubscribed || sub.Epoch == "" || sub.Offset == nil {
		t.Fatalf("subscribed = %+v, want an epoch and an offset", sub)
	}
	for i := 1; i <= 3; i++ {
		if code := publish(t, c, "news", i); code != 200 {
			t.Fatalf("publish = %d", code)
		}
	}
	var last wire.Frame
	for i := 1; i <= 3; i++ {
		last = a.Next()
		if last.Op != wire.OpMessage || *last.Offset != *sub.Offset+uint64(i) || last.Epoch != sub.Epoch {
			t.Fatalf("message %d = %+v, want offset %d epoch %s", i, last, *sub.Offset+uint64(i), sub.Epoch)
		}
	}
	a.NC.Close()

	for i := 4; i <= 8; i++ {
		publish(t, c, "news", i)
	}
	b := wstest.Connect(t, c.Balancers[0].Addr, "reader")
	b.SendFrame(wire.Frame{Op: wire.OpSubscribe, Channel: "news", Since: &wire.Position{Epoch: last.Epoch, Offset: *last.Offset}})
	if f := b.Next(); f.Op != wire.OpSubscribed || f.Recovered == nil || !*f.Recovered {
		t.Fatalf("resubscribe = %+v, want recovered:true", f)
	}
	publish(t, c, "news", 9)
	for i := 4; i <= 9; i++ {
		f := b.Next()
		if f.Op != wire.OpMessage || string(f.Data) != fmt.Sprint(i) || *f.Offset != *last.Offset+uint64(i-3) {
			t.Fatalf("after resubscribe got %+v, want data %d at offset %d", f, i, *last.Offset+uint64(i-3))
		}
	}

	// Asking from an epoch Redis never had is answered recovered:false.
	d := wstest.Connect(t, c.Balancers[0].Addr, "stranger")
	d.SendFrame(wire.Frame{Op: wire.OpSubscribe, Channel: "news", Since: &wire.Position{Epoch: "gone", Offset: 1}})
	if f := d.Next(); f.Recovered == nil || *f.Recovered || f.Epoch != last.Epoch {
		t.Fatalf("subscribe since an unknown epoch = %+v, want recovered:false in %s", f, last.Epoch)
	}
}

func TestRedisOutage(t *testing.T) {
	ctx := context.Background()
	rs := redistest.Start(t)
	c := startCluster(t, clustertest.Options{Nodes: 2, Bridge: rs.URL(), HistorySize: 100})
	f := newFleet(t, c, "o", 10, "news")
	publish(t, c, "news", "before")
	if err := f.WaitAll(ctx, 5*time.Second, "given the first message", func(m *clustertest.Member) bool { return m.HasData("news", "before") }); err != nil {
		t.Fatal(err)
	}

	rs.Kill()
	killed := time.Now()
	for _, n := range c.Nodes {
		err := testkit.Wait(ctx, 5*time.Second, func() error {
			if clustertest.GetJSON(ctx, "http://"+n.Addr+"/readyz", nil) == nil {
				return fmt.Errorf("%s still ready", n.Name)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%v %v after Redis died", err, time.Since(killed))
		}
	}
	t.Logf("nodes not ready %v after Redis died", time.Since(killed))
	if code := publish(t, c, "news", "lost?"); code != 503 {
		t.Errorf("publish with Redis down = %d, want 503", code)
	}
	err := f.Clients[0].Client.Publish(ctx, "news", "lost?")
	if we, ok := err.(*wire.Error); !ok || we.Code != wire.CodeBridgeUnavailable {
		t.Errorf("socket publish with Redis down = %v, want error bridge_unavailable", err)
	}

	rs.Restart()
	back := time.Now()
	if err := c.WaitConverged(ctx, 2); err != nil {
		t.Fatal(err)
	}
	t.Logf("nodes ready %v after Redis returned", time.Since(back))
	if d := time.Since(back); d > 5*time.Second {
		t.Errorf("ready again after %v, want within 5 s", d)
	}
	// Redis lost the history: every client is told so, then receives again.
	if err := f.WaitAll(ctx, 10*time.Second, "told recovered:false", func(m *clustertest.Member) bool { return m.Unrecovered() > 0 }); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Wait(ctx, 10*time.Second, func() error {
		if code := publish(t, c, "news", "after"); code != 200 {
			return fmt.Errorf("publish = %d", code)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, 10*time.Second, "given the publish after the restart", func(m *clustertest.Member) bool { return m.HasData("news", "after") }); err != nil {
		t.Fatal(err)
	}
	for _, m := range f.Clients {
		if m.HasData("news", "lost?") {
			t.Errorf("%s received a publish that was refused", m.ID)
		}
	}
}

// A node is killed while a publisher runs: every client ends with every
// acknowledged message exactly once, in order.
func TestRedisFailoverNoLoss(t *testing.T) {
	ctx := context.Background()
	rs := redistest.Start(t)
	c := startCluster(t, clustertest.Options{Nodes: 3, Bridge: rs.URL(), HistorySize: 1000})
	f := newFleet(t, c, "h", 45, "feed")

	pub := clustertest.StartPublisher(c.HTTP(), "feed", 10*time.Millisecond)
	defer pub.Stop()
	if err := pub.WaitAcked(ctx, 50, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	victim := f.Clients[0].Node()
	c.Node(victim).Kill()
	if err := pub.WaitAcked(ctx, len(pub.Acked())+100, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pub.Stop()

	want := pub.Acked()
	if err := f.WaitAll(ctx, 15*time.Second, "holding every acknowledged message", func(m *clustertest.Member) bool {
		return clustertest.HoldsAll(m, "feed", want)
	}); err != nil {
		t.Error(err)
	}
	tally := f.Tally("feed", want)
	t.Logf("failover with history, killed %s: %v", victim, tally)
	if !tally.OK() {
		t.Errorf("%v: want all 0", tally)
	}
}

// TestRedisExactlyOnceAtTheSeam reconnects one raw client over and over
// while messages are published without pause, each time resubscribing from
// the last offset it read: live copies of the messages its history read
// returned reach the node around that read. Every offset must arrive once,
// in order, on every connection.
func TestRedisExactlyOnceAtTheSeam(t *testing.T) {
	rs := redistest.Start(t)
	c := startCluster(t, clustertest.Options{Nodes: 1, Bridge: rs.URL(), HistorySize: 1000})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pub sync.WaitGroup
	defer pub.Wait()
	defer cancel()
	pub.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			clustertest.PostJSON(ctx, c.HTTP()+"/v1/publish", map[string]any{"channel": "tick", "data": i}, nil)
		}
	})
	first := wstest.Connect(t, c.Balancers[0].Addr, "seam")
	first.SendFrame(wire.Frame{Op: wire.OpSubscribe, Channel: "tick"})
	sub := first.Next()
	if sub.Offset == nil {
		t.Fatalf("subscribed = %+v, want an offset", sub)
	}
	last := wire.Position{Epoch: sub.Epoch, Offset: *sub.Offset}
	first.NC.Close()
	for round := range 25 {
		r := wstest.Connect(t, c.Balancers[0].Addr, "seam")
		r.SendFrame(wire.Frame{Op: wire.OpSubscribe, Channel: "tick", Since: &last})
		if f := r.Next(); f.Op != wire.OpSubscribed || f.Recovered == nil || !*f.Recovered {
			t.Fatalf("round %d: resubscribe since %+v = %+v, want recovered:true", round, last, f)
		}
		for range 3 + round%7 {
			f := r.Next()
			if f.Op != wire.OpMessage || f.Offset == nil || f.Epoch != last.Epoch || *f.Offset != last.Offset+1 {
				t.Fatalf("round %d: after offset %d got %+v, want offset %d", round, last.Offset, f, last.Offset+1)
			}
			last.Offset = *f.Offset
		}
		r.NC.Close()
	}
}

// subscriberKills is how many times TestRedisSubscriberKills kills the
// node's pub/sub connection (RINGCAST_SUBSCRIBER_KILLS; 40 for the README
// figure).
func subscriberKills() int {
	if n, err := strconv.Atoi(os.Getenv("RINGCAST_SUBSCRIBER_KILLS")); err == nil && n > 0 {
		return n
	}
	return 8
}

// TestRedisSubscriberKills kills the node's Redis pub/sub connection over
// and over while messages flow: the node refills each gap from history in
// place, so no client is closed and every offset arrives once, in order.
func TestRedisSubscriberKills(t *testing.T) {
	ctx := context.Background()
	rs := redistest.Start(t)
	c := startCluster(t, clustertest.Options{Nodes: 1, Bridge: rs.URL(), HistorySize: 10000})
	rc := goredis.NewClient(&goredis.Options{Addr: rs.Addr()})
	defer rc.Close()

	type reader struct {
		offs   []uint64
		frames []wire.Frame // anything but messages after the subscribed reply
		err    error
		done   chan struct{}
	}
	const clients = 20
	readers := make([]*reader, clients)
	for i := range readers {
		r := wstest.Connect(t, c.Balancers[0].Addr, fmt.Sprint("kill-", i))
		r.SendFrame(wire.Frame{Op: wire.OpSubscribe, Channel: "feed"})
		if f := r.Next(); f.Op != wire.OpSubscribed || f.Offset == nil {
			t.Fatalf("subscribed = %+v", f)
		}
		rd := &reader{done: make(chan struct{})}
		readers[i] = rd
		go func() {
			defer close(rd.done)
			for {
				e, err := r.Read(20 * time.Second)
				if err == nil && e.Frame.Op == "" {
					err = fmt.Errorf("not a protocol frame: %+v", e)
				}
				if err != nil {
					rd.err = err
					return
				}
				f := e.Frame
				if f.Op != wire.OpMessage || f.Offset == nil {
					rd.frames = append(rd.frames, f)
					continue
				}
				rd.offs = append(rd.offs, *f.Offset)
				if string(f.Data) == `"end"` {
					return
				}
			}
		}()
	}
	pctx, stop := context.WithCancel(ctx)
	var pub sync.WaitGroup
	pub.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; pctx.Err() == nil; i++ {
			clustertest.PostJSON(pctx, c.HTTP()+"/v1/publish", map[string]any{"channel": "feed", "data": i}, nil)
			<-tick.C
		}
	})
	kills := subscriberKills()
	start := time.Now()
	for range kills {
		time.Sleep(250 * time.Millisecond) // the pace of the fault, not an assertion
		if err := rc.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
			t.Errorf("CLIENT KILL: %v", err)
		}
	}
	took := time.Since(start)
	stop()
	pub.Wait()
	if err := testkit.Wait(ctx, 10*time.Second, func() error {
		code, err := clustertest.PostJSON(ctx, c.HTTP()+"/v1/publish", map[string]any{"channel": "feed", "data": "end"}, nil)
		if err == nil && code != 200 {
			err = fmt.Errorf("publish end: %d", code)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	closed, gaps := 0, 0
	for i, rd := range readers {
		select {
		case <-rd.done:
		case <-time.After(15 * time.Second):
			t.Fatalf("client %d did not get the end message", i)
		}
		if rd.err != nil {
			closed++
			t.Errorf("client %d: %v (frames %+v)", i, rd.err, rd.frames)
			continue
		}
		for j := 1; j < len(rd.offs); j++ {
			if rd.offs[j] != rd.offs[j-1]+1 {
				gaps++
				t.Errorf("client %d: offset %d after %d", i, rd.offs[j], rd.offs[j-1])
				break
			}
		}
		if len(rd.frames) > 0 {
			t.Errorf("client %d got %+v besides messages", i, rd.frames)
		}
	}
	t.Logf("%d subscriber kills in %v: %d of %d clients closed, %d with a gap; %d messages each",
		kills, took.Round(time.Millisecond), closed, clients, gaps, len(readers[0].offs))
	if !strings.Contains(c.Nodes[0].Log(), "refilled from history") {
		t.Errorf("the node never refilled from history: the kills did not reach it")
	}
}
