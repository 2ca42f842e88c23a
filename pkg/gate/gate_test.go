package gate

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestNilAdmitsEverything(t *testing.T) {
	g := New(0, time.Second)
	for range 3 {
		if !g.Enter(context.Background()) {
			t.Fatal("a gate without a bound refused")
		}
	}
	g.Leave()
	if g.Waiting() != 0 {
		t.Fatal("nil gate reports waiters")
	}
}

func TestRefusedAtOnceWithoutWait(t *testing.T) {
	g := New(1, 0)
	if !g.Enter(context.Background()) {
		t.Fatal("first set-up refused")
	}
	if g.Enter(context.Background()) {
		t.Fatal("second set-up admitted past the bound")
	}
	g.Leave()
	if !g.Enter(context.Background()) {
		t.Fatal("a freed slot was not taken")
	}
}

// TestWaitersGetFreedSlotsInOrder: set-ups past the bound wait, take the
// slots as they are given back in arrival order, and a set-up past the
// waiting room is refused at once.
func TestWaitersGetFreedSlotsInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New(1, time.Minute)
		ctx := context.Background()
		g.Enter(ctx)
		order := make(chan int, QueueFactor)
		for i := range QueueFactor {
			go func() {
				if g.Enter(ctx) {
					order <- i
				}
			}()
			synctest.Wait() // each waiter queued before the next
		}
		if n := g.Waiting(); n != QueueFactor {
			t.Fatalf("%d waiting, want %d", n, QueueFactor)
		}
		start := time.Now()
		if g.Enter(ctx) {
			t.Fatal("admitted past the waiting room")
		}
		if time.Since(start) != 0 {
			t.Fatalf("a set-up past the waiting room waited %v", time.Since(start))
		}
		for want := range QueueFactor {
			g.Leave()
			synctest.Wait()
			select {
			case got := <-order:
				if got != want {
					t.Fatalf("slot went to waiter %d, want %d", got, want)
				}
			default:
				t.Fatalf("freed slot %d taken by nobody", want)
			}
		}
		if g.Waiting() != 0 {
			t.Fatalf("%d still waiting", g.Waiting())
		}
	})
}

func TestWaitRunsOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New(1, 250*time.Millisecond)
		g.Enter(context.Background())
		start := time.Now()
		if g.Enter(context.Background()) {
			t.Fatal("admitted while the slot was held")
		}
		if d := time.Since(start); d != 250*time.Millisecond {
			t.Fatalf("refused after %v, want the 250ms wait", d)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan bool)
		go func() { done <- g.Enter(ctx) }()
		synctest.Wait()
		cancel()
		if <-done {
			t.Fatal("admitted after its context ended")
		}
		if g.Waiting() != 0 {
			t.Fatalf("%d still waiting", g.Waiting())
		}
	})
}
