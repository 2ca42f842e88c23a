package mesh

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/bridge"
)

func TestBackoffDelays(t *testing.T) {
	const base, ceiling = 100 * time.Millisecond, time.Second
	now := time.Unix(0, 0)
	b := &backoff{}
	for n := 1; n <= 40; n++ {
		b.fail(base, ceiling, now)
		d := min(ceiling, base<<min(n-1, 20))
		if got := b.next.Sub(now); got < d/2 || got > d {
			t.Errorf("after %d failures: delay %v, want within [%v, %v]", n, got, d/2, d)
		}
	}
}

// TestRedialBacksOff points a mesh at a peer that accepts TCP and closes
// at once: the dials must thin out instead of repeating every Redial.
func TestRedialBacksOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	const redial, ceiling, window = 10 * time.Millisecond, 160 * time.Millisecond, 1500 * time.Millisecond
	m, err := New(Config{ID: "a", Redial: redial, RedialMax: ceiling}, bridge.Receiver{
		Deliver: func(bridge.Message) {}, DeliverDirect: func(bridge.Direct) bool { return false },
	})
	if err != nil {
		t.Fatal(err)
	}
	m.SetPeers(map[string]string{"b": ln.Addr().String()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	time.Sleep(window) // the dials are counted over this window
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	// Every Redial would be 150 dials; doubling to 160 ms allows at most
	// 5 + 1.5 s / 80 ms ≈ 24.
	n := accepted.Load()
	if n < 2 || n > 25 {
		t.Errorf("%d dials in %v with Redial %v, RedialMax %v: want 2..25", n, window, redial, ceiling)
	}
	t.Logf("%d dials in %v", n, window)
}
