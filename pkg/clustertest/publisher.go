package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// Publisher posts the numbers 1, 2, 3… to one channel over the HTTP API at
// a steady rate and records which ones were acknowledged (200, ok).
type Publisher struct {
	mu    sync.Mutex
	acked []int
	stop  context.CancelFunc
	done  chan struct{}
}

// StartPublisher publishes to channel through base (http://host:port) every
// interval until Stop.
func StartPublisher(base, channel string, every time.Duration) *Publisher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{stop: cancel, done: make(chan struct{})}
	go p.run(ctx, base, channel, every)
	return p
}

func (p *Publisher) run(ctx context.Context, base, channel string, every time.Duration) {
	defer close(p.done)
	proc.Every(ctx, every, func(seq int64) {
		var out struct{ OK bool }
		code, err := PostJSON(ctx, base+"/v1/publish", map[string]any{"channel": channel, "data": seq}, &out)
		if err == nil && code == 200 && out.OK {
			p.mu.Lock()
			p.acked = append(p.acked, int(seq))
			p.mu.Unlock()
		}
	})
}

// Acked returns the acknowledged numbers so far, in order.
func (p *Publisher) Acked() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.acked...)
}

// WaitAcked waits until n publishes have been acknowledged.
func (p *Publisher) WaitAcked(ctx context.Context, n int, timeout time.Duration) error {
	return testkit.Wait(ctx, timeout, func() error {
		if got := len(p.Acked()); got < n {
			return fmt.Errorf("%d of %d publishes acknowledged", got, n)
		}
		return nil
	})
}

// Stop stops publishing and waits for the publish in flight.
func (p *Publisher) Stop() {
	p.stop()
	<-p.done
}

// Tally is what a fleet received on one channel against what was acknowledged.
type Tally struct {
	Want                        int // acknowledged messages
	Clients                     int
	Lost, Duplicated, Reordered int // summed over clients
	Unrecovered                 int // subscribed replies with recovered:false
}

// OK reports whether nothing was lost, duplicated, reordered or left unrecovered.
func (t Tally) OK() bool { return t.Lost+t.Duplicated+t.Reordered+t.Unrecovered == 0 }

func (t Tally) String() string {
	return fmt.Sprintf("%d acknowledged messages × %d clients: lost %d, duplicated %d, out of order %d, recovered:false %d",
		t.Want, t.Clients, t.Lost, t.Duplicated, t.Reordered, t.Unrecovered)
}

// HoldsAll reports whether m received every number in want on channel.
func HoldsAll(m *Member, channel string, want []int) bool {
	got := map[string]bool{}
	for _, msg := range m.Messages(channel) {
		got[string(msg.Data)] = true
	}
	for _, seq := range want {
		if !got[fmt.Sprint(seq)] {
			return false
		}
	}
	return true
}

// Tally checks every member's messages on channel, numbers published by a
// Publisher, against want (the acknowledged ones): each exactly once, in
// order, with contiguous offsets.
func (f *Fleet) Tally(channel string, want []int) Tally {
	t := Tally{Want: len(want), Clients: len(f.Clients)}
	for _, m := range f.Clients {
		seen := map[int]int{}
		prev, prevOff := 0, uint64(0)
		for _, msg := range m.Messages(channel) {
			var seq int
			json.Unmarshal(msg.Data, &seq)
			seen[seq]++
			if seen[seq] > 1 {
				t.Duplicated++
			} else if seq <= prev || (prevOff != 0 && msg.Offset != prevOff+1) {
				t.Reordered++
			}
			prev, prevOff = seq, msg.Offset
		}
		for _, seq := range want {
			if seen[seq] == 0 {
				t.Lost++
			}
		}
		t.Unrecovered += m.Unrecovered()
	}
	return t
}
