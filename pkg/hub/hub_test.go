package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeBridge is an in-memory bridge.Bridge for one node. Interest is a set,
// as in the real adapters: Unsubscribe after Subscribe drops it whatever
// the hub's own count says. Publish delivers synchronously.
type fakeBridge struct {
	h *Hub

	// Hooks run inside the call, before interest changes (nil = none).
	onSubscribe func(channel string)
	onUnsub     func(channel string)
	onHold      func(id string)
	history     func(ctx context.Context, channel string, since *wire.Position) ([]bridge.Message, wire.Position, bool, error)
	subErr      error

	mu       sync.Mutex
	subs     map[string]int // Subscribe calls per channel
	unsubs   map[string]int // Unsubscribe calls per channel
	interest map[string]bool
	held     map[string]bool
}

func newFake() *fakeBridge {
	return &fakeBridge{subs: map[string]int{}, unsubs: map[string]int{}, interest: map[string]bool{}, held: map[string]bool{}}
}

func (b *fakeBridge) Run(ctx context.Context) error { <-ctx.Done(); return nil }

func (b *fakeBridge) Publish(_ context.Context, m bridge.Message) (bridge.Message, error) {
	b.h.Deliver(m)
	return m, nil
}

func (b *fakeBridge) Send(_ context.Context, d bridge.Direct) (bool, error) {
	return b.h.DeliverDirect(d), nil
}

func (b *fakeBridge) Subscribe(ctx context.Context, ch string) error {
	if b.onSubscribe != nil {
		b.onSubscribe(ch)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs[ch]++
	if b.subErr != nil {
		return b.subErr
	}
	b.interest[ch] = true
	return nil
}

func (b *fakeBridge) Unsubscribe(ch string) {
	if b.onUnsub != nil {
		b.onUnsub(ch)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unsubs[ch]++
	delete(b.interest, ch)
}

func (b *fakeBridge) Hold(_ context.Context, id string) error {
	if b.onHold != nil {
		b.onHold(id)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held[id] = true
	return nil
}

func (b *fakeBridge) Release(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.held, id)
}

func (b *fakeBridge) History(ctx context.Context, ch string, since *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
	if b.history != nil {
		return b.history(ctx, ch, since)
	}
	return nil, wire.Position{}, false, nil
}

func (b *fakeBridge) Ready() error { return nil }

func (b *fakeBridge) state(ch string) (subs, unsubs int, interest bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[ch], b.unsubs[ch], b.interest[ch]
}

func (b *fakeBridge) holds(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held[id]
}

// sink records the frames it is sent; with refuse set it takes none.
type sink struct {
	id      string
	session string
	refuse  bool

	mu     sync.Mutex
	frames []wire.Frame
}

func (s *sink) ClientID() string { return s.id }

func (s *sink) Session() string { return s.session }

func (s *sink) Send(b []byte) bool {
	if s.refuse {
		return false
	}
	var f wire.Frame
	if err := json.Unmarshal(b, &f); err != nil {
		panic(fmt.Sprintf("hub sent invalid JSON %q: %v", b, err))
	}
	s.mu.Lock()
	s.frames = append(s.frames, f)
	s.mu.Unlock()
	return true
}

func (s *sink) got() []wire.Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.frames)
}

// messages returns the data of the message frames received, in order.
func (s *sink) messages() []string {
	var out []string
	for _, f := range s.got() {
		if f.Op == wire.OpMessage {
			out = append(out, string(f.Data))
		}
	}
	return out
}

func newHub(t *testing.T, cfg Config) (*Hub, *fakeBridge) {
	t.Helper()
	br := newFake()
	h, err := New(cfg, br, nil, nil)
	if err != nil {
		t.Fatalf("New error = %v", err)
	}
	br.h = h
	return h, br
}

func attach(t *testing.T, h *Hub, s Sink) {
	t.Helper()
	prev, err := h.Attach(context.Background(), s)
	if err != nil || prev != nil {
		t.Fatalf("Attach(%s) = %v, %v, want nil, nil", s.ClientID(), prev, err)
	}
}

func subscribe(t *testing.T, h *Hub, s Sink, ch string) {
	t.Helper()
	if err := h.Subscribe(context.Background(), s, ch, nil, nil); err != nil {
		t.Fatalf("Subscribe(%s, %s) error = %v", s.ClientID(), ch, err)
	}
}

func publish(t *testing.T, h *Hub, ch, data string) {
	t.Helper()
	if _, err := h.Publish(context.Background(), bridge.Message{Channel: ch, Data: json.RawMessage(data)}); err != nil {
		t.Fatalf("Publish(%s) error = %v", ch, err)
	}
}

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{MaxChannels: -1}, newFake(), nil, nil); err == nil {
		t.Errorf("New(MaxChannels -1) error = nil, want an error")
	}
	if _, err := New(Config{}, nil, nil, nil); err == nil {
		t.Errorf("New(nil bridge) error = nil, want an error")
	}
}

func TestFanOut(t *testing.T) {
	h, _ := newHub(t, Config{})
	a, b, c := &sink{id: "a"}, &sink{id: "b"}, &sink{id: "c"}
	for _, s := range []*sink{a, b, c} {
		attach(t, h, s)
	}
	subscribe(t, h, a, "room")
	subscribe(t, h, b, "room")
	subscribe(t, h, c, "other")
	publish(t, h, "room", `1`)
	publish(t, h, "nobody", `2`)

	for _, tt := range []struct {
		s    *sink
		want []string
	}{{a, []string{"1"}}, {b, []string{"1"}}, {c, nil}} {
		if got := tt.s.messages(); !slices.Equal(got, tt.want) {
			t.Errorf("%s got messages %q, want %q", tt.s.id, got, tt.want)
		}
	}
	f := a.got()
	if len(f) != 2 || f[0].Op != wire.OpSubscribed || f[0].Channel != "room" || f[0].Recovered != nil {
		t.Fatalf("a got %+v, want subscribed{room} then the message", f)
	}
	if m := f[1]; m.Channel != "room" || m.Offset != nil || m.Epoch != "" {
		t.Errorf("message = %+v, want channel room without offset/epoch", m)
	}
}

func TestRefusingSinkDoesNotStopOthers(t *testing.T) {
	h, _ := newHub(t, Config{})
	bad, good := &sink{id: "bad"}, &sink{id: "good"}
	attach(t, h, bad)
	attach(t, h, good)
	subscribe(t, h, bad, "room")
	subscribe(t, h, good, "room")
	bad.refuse = true
	for i := range 3 {
		publish(t, h, "room", fmt.Sprint(i))
	}
	if got, want := good.messages(), []string{"0", "1", "2"}; !slices.Equal(got, want) {
		t.Errorf("good got %q, want %q", got, want)
	}
}

func TestBridgeInterestOncePerChannel(t *testing.T) {
	h, br := newHub(t, Config{})
	a, b := &sink{id: "a"}, &sink{id: "b"}
	attach(t, h, a)
	attach(t, h, b)
	subscribe(t, h, a, "room")
	subscribe(t, h, b, "room")
	subscribe(t, h, a, "room") // again: no new interest
	if subs, unsubs, on := br.state("room"); subs != 1 || unsubs != 0 || !on {
		t.Fatalf("after 2 subscribers: Subscribe×%d Unsubscribe×%d interest %v, want 1, 0, true", subs, unsubs, on)
	}
	if !h.Unsubscribe(a, "room") {
		t.Errorf("Unsubscribe(a) = false, want true")
	}
	if h.Unsubscribe(a, "room") {
		t.Errorf("second Unsubscribe(a) = true, want false")
	}
	if _, unsubs, _ := br.state("room"); unsubs != 0 {
		t.Fatalf("Unsubscribe×%d with b still subscribed, want 0", unsubs)
	}
	h.Unsubscribe(b, "room")
	if subs, unsubs, on := br.state("room"); subs != 1 || unsubs != 1 || on {
		t.Fatalf("after the last left: Subscribe×%d Unsubscribe×%d interest %v, want 1, 1, false", subs, unsubs, on)
	}
	publish(t, h, "room", `1`)
	if got := b.messages(); len(got) != 0 {
		t.Errorf("b got %q after unsubscribing, want none", got)
	}
}

func TestAttachReplaces(t *testing.T) {
	h, br := newHub(t, Config{})
	old, cur := &sink{id: "x", session: "tab1"}, &sink{id: "x", session: "tab1"}
	attach(t, h, old)
	subscribe(t, h, old, "room")
	prev, err := h.Attach(context.Background(), cur)
	if err != nil || prev != old {
		t.Fatalf("Attach(newer) = %v, %v, want the older sink", prev, err)
	}
	if _, unsubs, _ := br.state("room"); unsubs != 1 {
		t.Errorf("replaced sink's channel: Unsubscribe×%d, want 1", unsubs)
	}
	h.Detach(old) // the older connection cleaning up must not release the id
	if !br.holds("x") {
		t.Errorf("Detach(older) released x, which the newer sink holds")
	}
	if ok, _ := h.Send(context.Background(), bridge.Direct{To: "x", Data: json.RawMessage(`1`)}); !ok {
		t.Errorf("Send(x) = false, want true")
	}
	if f := cur.got(); len(f) != 1 || f[0].Op != wire.OpDirect || string(f[0].Data) != "1" {
		t.Errorf("newer sink got %+v, want one direct", f)
	}
	if n := len(old.got()); n != 1 { // its subscribed reply only
		t.Errorf("older sink got %d frames, want 1", n)
	}
}

// TestSeveralConnsPerID: sinks of one id with different sessions (or none)
// live side by side; a direct reaches each; the id stays held until the
// last one leaves.
func TestSeveralConnsPerID(t *testing.T) {
	h, br := newHub(t, Config{})
	a, b, c := &sink{id: "x", session: "tab1"}, &sink{id: "x", session: "tab2"}, &sink{id: "x"}
	for _, s := range []*sink{a, b, c} {
		attach(t, h, s)
	}
	if prev, err := h.Attach(context.Background(), &sink{id: "x"}); prev != nil || err != nil {
		t.Fatalf("Attach(no session) = %v, %v, want no replacement", prev, err)
	}
	if n := len(h.Conns("x")); n != 4 || h.Len() != 4 {
		t.Fatalf("Conns(x) = %d, Len = %d, want 4, 4", n, h.Len())
	}
	if ok, _ := h.Send(context.Background(), bridge.Direct{To: "x", Data: json.RawMessage(`1`)}); !ok {
		t.Fatal("Send(x) = false, want true")
	}
	for i, s := range []*sink{a, b, c} {
		if f := s.got(); len(f) != 1 || f[0].Op != wire.OpDirect {
			t.Errorf("sink %d got %+v, want one direct", i, f)
		}
	}
	for _, s := range h.Conns("x") {
		h.Detach(s)
		if left := len(h.Conns("x")); left > 0 && !br.holds("x") {
			t.Fatalf("x released with %d connections left", left)
		}
	}
	if br.holds("x") {
		t.Error("x still held after its last connection left")
	}
	if ok, _ := h.Send(context.Background(), bridge.Direct{To: "x", Data: json.RawMessage(`1`)}); ok {
		t.Error("Send(x) = true with no connection, want false")
	}
}

func TestDetach(t *testing.T) {
	h, br := newHub(t, Config{})
	a := &sink{id: "a"}
	attach(t, h, a)
	subscribe(t, h, a, "r1")
	subscribe(t, h, a, "r2")
	if h.Len() != 1 || len(h.Sinks()) != 1 || !br.holds("a") {
		t.Fatalf("Len = %d, Sinks = %d, held %v, want 1, 1, true", h.Len(), len(h.Sinks()), br.holds("a"))
	}
	h.Detach(a)
	for _, ch := range []string{"r1", "r2"} {
		if _, unsubs, on := br.state(ch); unsubs != 1 || on {
			t.Errorf("%s: Unsubscribe×%d interest %v, want 1, false", ch, unsubs, on)
		}
	}
	if h.Len() != 0 || br.holds("a") {
		t.Errorf("after Detach: Len = %d, held %v, want 0, false", h.Len(), br.holds("a"))
	}
	if ok := h.DeliverDirect(bridge.Direct{To: "a"}); ok {
		t.Errorf("DeliverDirect(a) after Detach = true, want false")
	}
	if err := h.Subscribe(context.Background(), a, "r1", nil, nil); err == nil {
		t.Errorf("Subscribe after Detach error = nil, want an error")
	}
	h.Detach(a) // idempotent
}

func TestMaxChannels(t *testing.T) {
	h, _ := newHub(t, Config{MaxChannels: 2})
	a := &sink{id: "a"}
	attach(t, h, a)
	subscribe(t, h, a, "r1")
	subscribe(t, h, a, "r2")
	subscribe(t, h, a, "r2") // already counted
	if err := h.Subscribe(context.Background(), a, "r3", nil, nil); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("third channel: Subscribe error = %v, want ErrTooManyChannels", err)
	}
	h.Unsubscribe(a, "r1")
	subscribe(t, h, a, "r3")
}

func TestSubscribeBridgeError(t *testing.T) {
	h, br := newHub(t, Config{})
	br.subErr = bridge.ErrUnavailable
	a := &sink{id: "a"}
	attach(t, h, a)
	if err := h.Subscribe(context.Background(), a, "room", nil, nil); !errors.Is(err, bridge.ErrUnavailable) {
		t.Fatalf("Subscribe error = %v, want ErrUnavailable", err)
	}
	br.subErr = nil
	subscribe(t, h, a, "room") // the failed attempt left nothing behind
	publish(t, h, "room", `1`)
	if got := a.messages(); !slices.Equal(got, []string{"1"}) {
		t.Errorf("got %q, want [1]", got)
	}
}

func msg(ch string, off uint64) bridge.Message { return msgIn(ch, "e", off) }

func msgIn(ch, epoch string, off uint64) bridge.Message {
	return bridge.Message{Channel: ch, Data: json.RawMessage(fmt.Sprint(off)), Epoch: epoch, Offset: off}
}

// TestRecoverySeam delivers live messages while History runs, overlapping
// the backlog: the subscriber must see each offset once, in order.
func TestRecoverySeam(t *testing.T) {
	h, br := newHub(t, Config{})
	a, other := &sink{id: "a"}, &sink{id: "other"}
	attach(t, h, a)
	attach(t, h, other)
	subscribe(t, h, other, "room") // the channel is live before a joins
	br.history = func(_ context.Context, ch string, since *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
		if since == nil || *since != (wire.Position{Epoch: "e", Offset: 3}) {
			t.Errorf("History since = %+v, want {e 3}", since)
		}
		// Offsets 5..8 are published while the backlog is read: 5 and 6
		// are also in the backlog, 7 and 8 are not.
		for off := uint64(5); off <= 8; off++ {
			h.Deliver(msg(ch, off))
		}
		return []bridge.Message{msg(ch, 4), msg(ch, 5), msg(ch, 6)}, wire.Position{Epoch: "e", Offset: 6}, true, nil
	}
	since := &wire.Position{Epoch: "e", Offset: 3}
	if err := h.Subscribe(context.Background(), a, "room", since, json.RawMessage(`"s1"`)); err != nil {
		t.Fatalf("Subscribe error = %v", err)
	}
	h.Deliver(msg("room", 9))

	f := a.got()
	if len(f) == 0 || f[0].Op != wire.OpSubscribed {
		t.Fatalf("first frame = %+v, want subscribed", f)
	}
	r := f[0]
	if string(r.ID) != `"s1"` || r.Recovered == nil || !*r.Recovered || r.Epoch != "e" || r.Offset == nil || *r.Offset != 6 {
		t.Errorf("subscribed = %+v, want id s1, recovered true, epoch e, offset 6", r)
	}
	var offs []uint64
	for _, m := range f[1:] {
		if m.Op != wire.OpMessage || m.Offset == nil || m.Epoch != "e" {
			t.Fatalf("frame %+v, want a message with epoch e and an offset", m)
		}
		offs = append(offs, *m.Offset)
	}
	if want := []uint64{4, 5, 6, 7, 8, 9}; !slices.Equal(offs, want) {
		t.Errorf("offsets = %v, want %v", offs, want)
	}
	if got := other.messages(); !slices.Equal(got, []string{"5", "6", "7", "8", "9"}) {
		t.Errorf("live subscriber got %q, want every delivery", got)
	}
}

// TestRecoveryFailed: when the gap cannot be filled the client is told, gets
// no backlog, and live messages after the channel's top.
func TestRecoveryFailed(t *testing.T) {
	h, br := newHub(t, Config{})
	a := &sink{id: "a"}
	attach(t, h, a)
	br.history = func(_ context.Context, ch string, _ *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
		h.Deliver(msgIn(ch, "e2", 10)) // before top: already counted in the reply's offset
		h.Deliver(msgIn(ch, "e2", 12)) // after it
		return []bridge.Message{msgIn(ch, "e2", 9)}, wire.Position{Epoch: "e2", Offset: 11}, false, nil
	}
	since := &wire.Position{Epoch: "old", Offset: 3}
	if err := h.Subscribe(context.Background(), a, "room", since, nil); err != nil {
		t.Fatalf("Subscribe error = %v", err)
	}
	f := a.got()
	if len(f) == 0 || f[0].Op != wire.OpSubscribed || f[0].Recovered == nil || *f[0].Recovered || f[0].Epoch != "e2" || *f[0].Offset != 11 {
		t.Fatalf("frames = %+v, want subscribed{recovered false, e2, 11} first", f)
	}
	if got := a.messages(); !slices.Equal(got, []string{"12"}) {
		t.Errorf("messages = %q, want [12]", got)
	}
}

func TestHistoryError(t *testing.T) {
	h, br := newHub(t, Config{})
	a := &sink{id: "a"}
	attach(t, h, a)
	br.history = func(context.Context, string, *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
		return nil, wire.Position{}, false, bridge.ErrUnavailable
	}
	if err := h.Subscribe(context.Background(), a, "room", nil, nil); !errors.Is(err, bridge.ErrUnavailable) {
		t.Fatalf("Subscribe error = %v, want ErrUnavailable", err)
	}
	if _, unsubs, on := br.state("room"); unsubs != 1 || on {
		t.Errorf("after a failed History: Unsubscribe×%d interest %v, want 1, false", unsubs, on)
	}
}

// gate lets a test hold a goroutine inside a bridge call.
type gate struct {
	entered chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) hold() {
	close(g.entered)
	<-g.release
}

// raceWindow is how long a test gives an unwanted interleaving to happen.
// It never decides a pass on its own: the assertions check the end state.
const raceWindow = 100 * time.Millisecond

// TestResubscribeWhileUnsubscribing: the last subscriber leaves and a new
// one arrives while the bridge is still dropping the old interest. The new
// subscriber must end up with the bridge interested in the channel.
func TestResubscribeWhileUnsubscribing(t *testing.T) {
	h, br := newHub(t, Config{})
	a, b := &sink{id: "a"}, &sink{id: "b"}
	attach(t, h, a)
	attach(t, h, b)
	subscribe(t, h, a, "room")
	g := newGate()
	var once sync.Once
	br.onUnsub = func(string) { once.Do(g.hold) }
	subCalled := make(chan struct{}, 1)
	br.onSubscribe = func(string) { subCalled <- struct{}{} }

	unsubDone := make(chan struct{})
	go func() { h.Unsubscribe(a, "room"); close(unsubDone) }()
	<-g.entered
	subDone := make(chan error)
	go func() { subDone <- h.Subscribe(context.Background(), b, "room", nil, nil) }()
	select { // let b's bridge Subscribe overtake a's Unsubscribe, if the hub allows it
	case <-subCalled:
	case <-time.After(raceWindow):
	}
	close(g.release)
	<-unsubDone
	if err := <-subDone; err != nil {
		t.Fatalf("Subscribe(b) error = %v", err)
	}
	if _, _, on := br.state("room"); !on {
		t.Errorf("b is subscribed but the bridge has no interest in room")
	}
}

// TestDetachDuringSubscribe: a connection goes away while its first
// subscription is still being set up in the bridge; no interest may stay.
func TestDetachDuringSubscribe(t *testing.T) {
	h, br := newHub(t, Config{})
	a := &sink{id: "a"}
	attach(t, h, a)
	g := newGate()
	br.onSubscribe = func(string) { g.hold() }
	subDone := make(chan error)
	go func() { subDone <- h.Subscribe(context.Background(), a, "room", nil, nil) }()
	<-g.entered
	h.Detach(a)
	close(g.release)
	<-subDone
	if _, _, on := br.state("room"); on {
		t.Errorf("a detached during Subscribe, bridge interest in room remains")
	}
	if h.channelCount() != 0 {
		t.Errorf("hub still has %d channels", h.channelCount())
	}
}

// TestReattachWhileReleasing: a client's old connection is released while
// its new one is announced; the bridge must end up holding the client.
func TestReattachWhileReleasing(t *testing.T) {
	h, br := newHub(t, Config{})
	old := &sink{id: "x"}
	attach(t, h, old)
	holdCalled := make(chan struct{}, 1)
	br.onHold = func(string) { holdCalled <- struct{}{} }
	g := newGate()
	var once sync.Once
	relBr := &releaseGate{fakeBridge: br, hold: func() { once.Do(g.hold) }}
	h.br = relBr

	detached := make(chan struct{})
	go func() { h.Detach(old); close(detached) }()
	<-g.entered
	attached := make(chan error)
	go func() { _, err := h.Attach(context.Background(), &sink{id: "x"}); attached <- err }()
	select {
	case <-holdCalled:
	case <-time.After(raceWindow):
	}
	close(g.release)
	<-detached
	if err := <-attached; err != nil {
		t.Fatalf("Attach error = %v", err)
	}
	if !br.holds("x") {
		t.Errorf("x is attached but the bridge does not hold it")
	}
}

// TestDetachDuringAttach: a connection goes away while Hold is in flight.
func TestDetachDuringAttach(t *testing.T) {
	h, br := newHub(t, Config{})
	g := newGate()
	br.onHold = func(string) { g.hold() }
	a := &sink{id: "a"}
	done := make(chan error)
	go func() { _, err := h.Attach(context.Background(), a); done <- err }()
	<-g.entered
	h.Detach(a)
	close(g.release)
	<-done
	if br.holds("a") {
		t.Errorf("a detached during Attach, the bridge still holds it")
	}
}

// releaseGate holds Release at a gate.
type releaseGate struct {
	*fakeBridge
	hold func()
}

func (r *releaseGate) Release(id string) {
	r.hold()
	r.fakeBridge.Release(id)
}

func (h *Hub) channelCount() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.channels)
}

// TestConcurrent runs deliveries, subscriptions and detaches together for
// the race detector, then checks the hub and the bridge agree.
func TestConcurrent(t *testing.T) {
	h, br := newHub(t, Config{MaxChannels: 4})
	channels := []string{"c0", "c1", "c2", "c3"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var delivering, wg sync.WaitGroup
	for i := range 2 {
		delivering.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				h.Deliver(msg(channels[n%len(channels)], uint64(n)))
				h.DeliverDirect(bridge.Direct{To: fmt.Sprint("s", (n+i)%8), Data: json.RawMessage(`1`)})
			}
		})
	}
	for i := range 8 {
		wg.Go(func() {
			for n := range 60 {
				s := &sink{id: fmt.Sprint("s", i), refuse: n%7 == 0}
				if _, err := h.Attach(ctx, s); err != nil {
					t.Errorf("Attach error = %v", err)
					return
				}
				for k := range 3 {
					ch := channels[(i+n+k)%len(channels)]
					if err := h.Subscribe(ctx, s, ch, nil, nil); err != nil {
						t.Errorf("Subscribe error = %v", err)
					}
					if k == 1 {
						h.Unsubscribe(s, ch)
					}
				}
				h.Detach(s)
			}
		})
	}
	wg.Wait()
	cancel()
	delivering.Wait()
	if n := h.channelCount(); n != 0 {
		t.Errorf("%d channels left after every sink detached", n)
	}
	for _, ch := range channels {
		if _, _, on := br.state(ch); on {
			t.Errorf("bridge interest in %s left after every sink detached", ch)
		}
	}
	if h.Len() != 0 {
		t.Errorf("Len = %d, want 0", h.Len())
	}
}

// blockingSink blocks in its first message Send until release is closed.
type blockingSink struct {
	sink
	entered, release chan struct{}
	once             sync.Once
}

func (s *blockingSink) Send(b []byte) bool {
	if strings.Contains(string(b), `"op":"message"`) {
		s.once.Do(func() {
			close(s.entered)
			<-s.release
		})
	}
	return s.sink.Send(b)
}

// TestFanOutHoldsNoLock checks that a fan-out in progress does not hold up
// subscribes to the same channel or attaches.
func TestFanOutHoldsNoLock(t *testing.T) {
	h, _ := newHub(t, Config{})
	slow := &blockingSink{sink: sink{id: "slow"}, entered: make(chan struct{}), release: make(chan struct{})}
	attach(t, h, slow)
	subscribe(t, h, slow, "room")
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		h.Deliver(msg("room", 1))
	}()
	<-slow.entered
	joined := make(chan error, 1)
	late := &sink{id: "late"}
	go func() {
		if _, err := h.Attach(context.Background(), late); err != nil {
			joined <- err
			return
		}
		joined <- h.Subscribe(context.Background(), late, "room", nil, nil)
	}()
	select {
	case err := <-joined:
		if err != nil {
			t.Errorf("Subscribe during a fan-out error = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Subscribe waited for a fan-out in progress")
		close(slow.release)
		<-joined
	}
	select {
	case <-slow.release:
	default:
		close(slow.release)
	}
	<-delivered
	if got := slow.messages(); len(got) != 1 {
		t.Errorf("slow sink got %q, want one message", got)
	}
	// A publish after the late subscribe reaches both.
	h.Deliver(msg("room", 2))
	if got := late.messages(); len(got) != 1 {
		t.Errorf("late sink got %q, want the message published after it subscribed", got)
	}
}

// countSink counts frames and bytes without decoding them.
type countSink struct {
	id     string
	frames atomic.Int64
}

func (s *countSink) ClientID() string { return s.id }
func (s *countSink) Send([]byte) bool { s.frames.Add(1); return true }

// BenchmarkDeliver measures the hub's own cost of fanning one message out
// to a channel of 5,000 subscribers (the sinks only count).
func BenchmarkDeliver(b *testing.B) {
	br := newFake()
	h, err := New(Config{}, br, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	br.h = h
	const subs = 5000
	sinks := make([]*countSink, subs)
	for i := range sinks {
		sinks[i] = &countSink{id: fmt.Sprint("s", i)}
		if _, err := h.Attach(context.Background(), sinks[i]); err != nil {
			b.Fatal(err)
		}
		if err := h.Subscribe(context.Background(), sinks[i], "room", nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	m := msg("room", 0)
	m.Data = json.RawMessage(`"` + strings.Repeat("x", 62) + `"`)
	b.ResetTimer()
	for b.Loop() {
		h.Deliver(m)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subs), "ns/delivery")
}

// TestShrunkChannelGivesBackItsArray: a channel that lost most of its
// members keeps an array sized for the ones left, and still delivers to
// each of them once.
func TestShrunkChannelGivesBackItsArray(t *testing.T) {
	h, _ := newHub(t, Config{})
	sinks := make([]*sink, 1000)
	for i := range sinks {
		sinks[i] = &sink{id: fmt.Sprintf("s%d", i)}
		attach(t, h, sinks[i])
		subscribe(t, h, sinks[i], "room")
	}
	for _, s := range sinks[10:] {
		h.Detach(s)
	}
	h.mu.RLock()
	ch := h.channels["room"]
	n, c := len(ch.members), cap(ch.members)
	h.mu.RUnlock()
	if n != 10 || c > 64 {
		t.Fatalf("after 990 of 1000 left: %d members in an array of %d, want 10 in at most 64", n, c)
	}
	publish(t, h, "room", `1`)
	for _, s := range sinks[:10] {
		if got := s.messages(); !slices.Equal(got, []string{"1"}) {
			t.Errorf("%s got %q, want one message", s.id, got)
		}
	}
}
