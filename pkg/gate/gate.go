// Package gate bounds the connections being set up at once. A set-up past
// the bound waits, in arrival order, for a slot up to a short time while a
// few more than the bound wait; the rest are refused at once. A burst of
// reconnects (a node just died) is so served at the rate set-ups
// complete, the work in flight stays bounded, and a client is told to
// come back later only when even the waiting room is full or its wait
// ran out.
package gate

import (
	"context"
	"sync/atomic"
	"time"
)

// QueueFactor is how many set-ups may wait per slot.
const QueueFactor = 4

// Gate admits at most Max set-ups at once. The zero of *Gate (nil) admits
// everything.
type Gate struct {
	slots   chan struct{}
	wait    time.Duration
	waiting atomic.Int64
	queue   int64
}

// New returns a gate for max set-ups at once, with up to QueueFactor × max
// more waiting at most wait each for a slot (none when wait ≤ 0). It
// returns nil, admitting everything, when max ≤ 0.
func New(max int, wait time.Duration) *Gate {
	if max <= 0 {
		return nil
	}
	return &Gate{slots: make(chan struct{}, max), wait: wait, queue: int64(QueueFactor * max)}
}

// Enter takes a slot, waiting for one when all are taken; false means
// refused: the waiting room was full, the wait ran out or ctx ended. A
// true must be paired with one Leave.
func (g *Gate) Enter(ctx context.Context) bool {
	if g == nil {
		return true
	}
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	if g.wait <= 0 {
		return false
	}
	if g.waiting.Add(1) > g.queue {
		g.waiting.Add(-1)
		return false
	}
	defer g.waiting.Add(-1)
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// Leave gives back a slot Enter took.
func (g *Gate) Leave() {
	if g != nil {
		<-g.slots
	}
}

// Waiting reports the set-ups waiting for a slot now.
func (g *Gate) Waiting() int {
	if g == nil {
		return 0
	}
	return int(g.waiting.Load())
}

// InFlight reports the slots taken now.
func (g *Gate) InFlight() int {
	if g == nil {
		return 0
	}
	return len(g.slots)
}
