package hub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

// offsets returns the offsets of the message frames s received, in order.
func (s *sink) offsets(t *testing.T) []uint64 {
	t.Helper()
	var out []uint64
	for _, f := range s.got() {
		if f.Op != wire.OpMessage {
			continue
		}
		if f.Offset == nil {
			t.Fatalf("message %+v has no offset", f)
		}
		out = append(out, *f.Offset)
	}
	return out
}

// TestLiveAfterHistory is the race at the recovery seam: the history read
// already returned offsets 5 and 6, and their live copies arrive only after
// the subscription went live. The subscriber must get each offset once.
func TestLiveAfterHistory(t *testing.T) {
	h, br := newHub(t, Config{})
	a := &sink{id: "a"}
	attach(t, h, a)
	br.history = func(_ context.Context, ch string, _ *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
		return []bridge.Message{msg(ch, 4), msg(ch, 5), msg(ch, 6)}, wire.Position{Epoch: "e", Offset: 6}, true, nil
	}
	if err := h.Subscribe(context.Background(), a, "room", &wire.Position{Epoch: "e", Offset: 3}, nil); err != nil {
		t.Fatalf("Subscribe error = %v", err)
	}
	for _, off := range []uint64{5, 6, 7, 7, 8} {
		h.Deliver(msg("room", off))
	}
	h.Deliver(msgIn("room", "e2", 1)) // history was lost: a new epoch starts over
	if got, want := a.offsets(t), []uint64{4, 5, 6, 7, 8, 1}; !slices.Equal(got, want) {
		t.Errorf("offsets = %v, want %v", got, want)
	}
}

// TestFreshSubscribeSkipsOlder: a subscription without since starts at the
// channel's top; a live message at or below it was published before the
// subscribe and is not delivered.
func TestFreshSubscribeSkipsOlder(t *testing.T) {
	h, br := newHub(t, Config{})
	a := &sink{id: "a"}
	attach(t, h, a)
	br.history = func(context.Context, string, *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
		return nil, wire.Position{Epoch: "e", Offset: 10}, false, nil
	}
	subscribe(t, h, a, "room")
	for _, off := range []uint64{9, 10, 11} {
		h.Deliver(msg("room", off))
	}
	if got, want := a.offsets(t), []uint64{11}; !slices.Equal(got, want) {
		t.Errorf("offsets = %v, want %v", got, want)
	}
}

// streamBridge models a bridge with history the way Redis orders it: a
// publish is appended to the channel's log first and reaches the
// subscribers' node afterwards, from one goroutine, in offset order.
type streamBridge struct {
	*fakeBridge
	mu  sync.Mutex
	log []bridge.Message
}

func (b *streamBridge) append(ch string) bridge.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := msg(ch, uint64(len(b.log)+1))
	b.log = append(b.log, m)
	return m
}

func (b *streamBridge) History(_ context.Context, _ string, since *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	top := wire.Position{Epoch: "e", Offset: uint64(len(b.log))}
	if since == nil || since.Epoch != "e" || since.Offset > top.Offset {
		return nil, top, false, nil
	}
	return slices.Clone(b.log[since.Offset:]), top, true, nil
}

// TestExactlyOnceUnderRace subscribes and resubscribes with positions while
// messages are appended and delivered, so live copies of recovered messages
// arrive before, during and after each history read. Every subscriber must
// see every offset after its starting point exactly once, in order.
func TestExactlyOnceUnderRace(t *testing.T) {
	br := &streamBridge{fakeBridge: newFake()}
	h, err := New(Config{}, br, nil, nil)
	if err != nil {
		t.Fatalf("New error = %v", err)
	}
	br.h = h
	const total = 2000
	ctx := context.Background()
	// One subscriber keeps the channel live on the node throughout.
	keeper := &sink{id: "keeper"}
	attach(t, h, keeper)
	subscribe(t, h, keeper, "room")

	done := make(chan struct{})
	go func() {
		defer close(done)
		for range total {
			m := br.append("room")
			h.Deliver(m)
		}
	}()
	type result struct {
		s      *sink
		sinces []*wire.Position // the since of each Subscribe, in order
	}
	var wg sync.WaitGroup
	results := make([]result, 16)
	for i := range results {
		wg.Go(func() {
			s := &sink{id: fmt.Sprint("s", i)}
			if _, err := h.Attach(ctx, s); err != nil {
				t.Errorf("Attach error = %v", err)
				return
			}
			var since *wire.Position
			for range 4 + i%4 {
				if err := h.Subscribe(ctx, s, "room", since, nil); err != nil {
					t.Errorf("Subscribe error = %v", err)
					return
				}
				results[i].sinces = append(results[i].sinces, since)
				// Resubscribe from somewhere the subscriber has already
				// passed, as a client that lost its last frames would.
				offs := s.offsets(t)
				since = &wire.Position{Epoch: "e"}
				if len(offs) > 0 {
					since.Offset = offs[len(offs)-1] - min(offs[len(offs)-1], uint64(rand.IntN(3)))
				}
			}
			results[i].s = s
		})
	}
	wg.Wait()
	<-done
	if got, want := keeper.offsets(t), total; len(got) != want {
		t.Errorf("keeper got %d messages, want %d", len(got), want)
	}
	for i, r := range results {
		if r.s == nil {
			continue
		}
		// After each subscribed reply the stream must be the offsets after
		// since (recovered) or after the reply's top (fresh), consecutive.
		var next uint64
		n := 0
		for _, f := range r.s.got() {
			switch f.Op {
			case wire.OpSubscribed:
				since := r.sinces[n]
				n++
				if since != nil && (f.Recovered == nil || !*f.Recovered) {
					t.Fatalf("subscriber %d: since %+v not recovered", i, since)
				}
				next = *f.Offset + 1
				if since != nil {
					next = since.Offset + 1
				}
			case wire.OpMessage:
				if *f.Offset != next {
					t.Fatalf("subscriber %d: offset %d, want %d", i, *f.Offset, next)
				}
				next++
			}
		}
		if next != total+1 {
			t.Errorf("subscriber %d ended at offset %d, want %d", i, next-1, total)
		}
	}
}
