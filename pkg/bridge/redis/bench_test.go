package redis

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// BenchmarkPublishDeliver publishes on one node and counts deliveries on
// another, through one local Redis. It reports delivered msgs/s and the
// publish→deliver latency percentiles.
func BenchmarkPublishDeliver(b *testing.B) {
	for _, history := range []int{0, 100} {
		for _, publishers := range []int{1, 64} {
			b.Run(fmt.Sprintf("history=%d/publishers=%d", history, publishers), func(b *testing.B) {
				benchPublishDeliver(b, redistest.Start(b).URL(), history, publishers, 1)
			})
		}
	}
}

// BenchmarkTopology is BenchmarkPublishDeliver over 64 channels with 64
// publishers, on one Redis and on a Redis Cluster of 3 primaries (sharded
// pub/sub, no replicas). scripts/bench-redis.sh runs it in rounds, the two
// alternating, with a fixed -benchtime Nx so each run starts its servers
// once.
func BenchmarkTopology(b *testing.B) {
	for _, history := range []int{0, 100} {
		b.Run(fmt.Sprintf("redis=single/history=%d", history), func(b *testing.B) {
			benchPublishDeliver(b, redistest.Start(b).URL(), history, 64, 64)
		})
		b.Run(fmt.Sprintf("redis=cluster3/history=%d", history), func(b *testing.B) {
			benchPublishDeliver(b, redistest.StartCluster(b, 3, 0).URL(), history, 64, 64)
		})
	}
}

// benchPublishDeliver publishes b.N messages spread over channels from
// publishers goroutines on node "pub" and waits until node "sub",
// subscribed to every channel, received them all.
func benchPublishDeliver(b *testing.B, url string, history, publishers, channels int) {
	lat := make([]time.Duration, b.N)
	var got atomic.Int64
	all := make(chan struct{})
	sub, err := New(Config{URL: url, NodeID: "sub"}, bridge.Receiver{
		Deliver: func(m bridge.Message) {
			sent, _ := strconv.ParseInt(string(m.Data), 10, 64)
			i := got.Add(1)
			if i <= int64(len(lat)) {
				lat[i-1] = time.Duration(time.Now().UnixNano() - sent)
			}
			if i == int64(len(lat)) {
				close(all)
			}
		},
		DeliverDirect: func(bridge.Direct) bool { return false },
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = sub.Run(ctx)
	}()
	b.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	pub := start(b, Config{URL: url, NodeID: "pub", HistorySize: history})
	testkit.Eventually(b, 10*time.Second, func() bool { return pub.Ready() == nil && sub.Ready() == nil }, "not ready")
	names := make([]string, channels)
	for i := range names {
		names[i] = "bench" + strconv.Itoa(i)
		if err := sub.Subscribe(ctx, names[i]); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Uint64

	b.ResetTimer()
	began := time.Now()
	publish := func() bool {
		data := strconv.AppendInt(nil, time.Now().UnixNano(), 10)
		ch := names[int(seq.Add(1)%uint64(len(names)))]
		if _, err := pub.Publish(ctx, bridge.Message{Channel: ch, Data: data}); err != nil {
			b.Error(err)
			return false
		}
		return true
	}
	if publishers == 1 {
		for range b.N {
			if !publish() {
				break
			}
		}
	} else {
		b.SetParallelism((publishers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() && publish() {
			}
		})
	}
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		b.Fatalf("delivered %d of %d", got.Load(), b.N)
	}
	elapsed := time.Since(began)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
}
