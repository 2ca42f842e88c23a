package hub

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

func newStreamHub(t *testing.T) (*Hub, *streamBridge) {
	t.Helper()
	br := &streamBridge{fakeBridge: newFake()}
	h, err := New(Config{}, br, nil, nil)
	if err != nil {
		t.Fatalf("New error = %v", err)
	}
	br.h = h
	return h, br
}

// TestRepairRefillsInPlace: the bridge dropped offsets 4..6 (they are in
// history, never delivered). Repair sends each subscriber what it lacks, in
// order, once; live delivery goes on after it.
func TestRepairRefillsInPlace(t *testing.T) {
	h, br := newStreamHub(t)
	a, b := &sink{id: "a"}, &sink{id: "b"}
	attach(t, h, a)
	attach(t, h, b)
	subscribe(t, h, a, "room") // top 0
	for range 3 {
		h.Deliver(br.append("room"))
	}
	// b joins at offset 2, having recovered 1..2 on its own.
	if err := h.Subscribe(context.Background(), b, "room", &wire.Position{Epoch: "e", Offset: 2}, nil); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		br.append("room") // lost by the bridge
	}
	r := h.Repair(context.Background())
	if r.Channels != 1 || r.Messages != 6 || r.Told != 0 || len(r.Close) != 0 {
		t.Errorf("Repair = %+v, want 1 channel, 6 messages (3 each), none told or closed", r)
	}
	h.Deliver(msg("room", 5)) // a late live copy of a refilled one
	h.Deliver(br.append("room"))
	if got, want := a.offsets(t), []uint64{1, 2, 3, 4, 5, 6, 7}; !slices.Equal(got, want) {
		t.Errorf("a offsets = %v, want %v", got, want)
	}
	if got, want := b.offsets(t), []uint64{3, 4, 5, 6, 7}; !slices.Equal(got, want) {
		t.Errorf("b offsets = %v, want %v", got, want)
	}
}

// TestRepairTellsAndCloses: a gap history cannot fill is told with a
// subscribed frame {recovered:false} at the channel's position; subscribers
// of a channel without history are handed back to be closed; a subscribe
// in flight fails with ErrLost.
func TestRepairTellsAndCloses(t *testing.T) {
	h, br := newHub(t, Config{})
	a, plain, late := &sink{id: "a"}, &sink{id: "plain"}, &sink{id: "late"}
	for _, s := range []*sink{a, plain, late} {
		attach(t, h, s)
	}
	top := wire.Position{Epoch: "e", Offset: 3}
	inFlight := newGate()
	br.history = func(_ context.Context, ch string, since *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
		switch {
		case ch == "plain":
			return nil, wire.Position{}, false, nil
		case ch == "late" && since == nil:
			inFlight.hold()
			return nil, top, false, nil
		case since == nil:
			return nil, top, false, nil
		}
		return nil, wire.Position{Epoch: "e2", Offset: 9}, false, nil // history was lost
	}
	subscribe(t, h, a, "room")
	subscribe(t, h, plain, "plain")
	errc := make(chan error, 1)
	go func() { errc <- h.Subscribe(context.Background(), late, "late", nil, nil) }()
	<-inFlight.entered

	r := h.Repair(context.Background())
	close(inFlight.release)
	if err := <-errc; !errors.Is(err, ErrLost) {
		t.Errorf("Subscribe in flight during Repair = %v, want ErrLost", err)
	}
	if r.Told != 1 || len(r.Close) != 1 || r.Close[0] != Sink(plain) {
		t.Errorf("Repair = %+v, want 1 told and plain to close", r)
	}
	f := a.got()
	last := f[len(f)-1]
	if last.Op != wire.OpSubscribed || last.Recovered == nil || *last.Recovered || last.Epoch != "e2" || *last.Offset != 9 {
		t.Errorf("a's last frame = %+v, want subscribed{recovered:false, e2, 9}", last)
	}
	h.Deliver(msgIn("room", "e2", 9))
	h.Deliver(msgIn("room", "e2", 10))
	if got, want := a.offsets(t), []uint64{10}; !slices.Equal(got, want) {
		t.Errorf("a offsets after the new epoch = %v, want %v", got, want)
	}
}
