package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// node is a Bridge with a recording Receiver: one "node" of a test cluster.
type node struct {
	*Bridge
	stop func()
	lost atomic.Int32

	mu      sync.Mutex
	msgs    []bridge.Message
	directs []bridge.Direct
	local   map[string]bool // client ids connected here
}

func fastConfig(url, id string) Config {
	return Config{URL: url, NodeID: id, PingEvery: 200 * time.Millisecond}
}

// start runs a bridge for cfg until the test ends or stop is called.
func start(tb testing.TB, cfg Config) *node {
	tb.Helper()
	n := &node{local: map[string]bool{}}
	b, err := New(cfg, bridge.Receiver{
		Deliver: func(m bridge.Message) {
			n.mu.Lock()
			n.msgs = append(n.msgs, m)
			n.mu.Unlock()
		},
		DeliverDirect: func(d bridge.Direct) bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.directs = append(n.directs, d)
			return n.local[d.To]
		},
		Lost: func() {
			n.lost.Add(1)
			n.mu.Lock()
			n.msgs = append(n.msgs, bridge.Message{}) // marks the Lost call among the messages
			n.mu.Unlock()
		},
	})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	n.Bridge = b
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("Run = %v", err)
			}
		})
	}
	tb.Cleanup(n.stop)
	return n
}

// received returns the messages delivered on channel so far.
func (n *node) received(channel string) []bridge.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []bridge.Message
	for _, m := range n.msgs {
		if m.Channel == channel {
			out = append(out, m)
		}
	}
	return out
}

func (n *node) directsTo(id string) []bridge.Direct {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []bridge.Direct
	for _, d := range n.directs {
		if d.To == id {
			out = append(out, d)
		}
	}
	return out
}

func waitReady(tb testing.TB, nodes ...*node) {
	tb.Helper()
	for _, n := range nodes {
		testkit.Eventually(tb, 5*time.Second, func() bool { return n.Ready() == nil }, "Ready() = %v, want nil", n.Ready())
	}
}

// numSub returns the number of subscribers of a pub/sub channel.
func numSub(tb testing.TB, srv *redistest.Server, channel string) int64 {
	tb.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer c.Close()
	n, err := c.PubSubNumSub(context.Background(), channel).Result()
	if err != nil {
		return -1
	}
	return n[channel]
}

func msg(channel string, data any) bridge.Message {
	raw, _ := json.Marshal(data)
	return bridge.Message{Channel: channel, Data: raw, From: "alice"}
}

func TestNewValidates(t *testing.T) {
	recv := bridge.Receiver{Deliver: func(bridge.Message) {}, DeliverDirect: func(bridge.Direct) bool { return false }}
	tests := []struct {
		name string
		cfg  Config
		recv bridge.Receiver
	}{
		{"no URL", Config{NodeID: "n1"}, recv},
		{"no node id", Config{URL: "redis://127.0.0.1:6379"}, recv},
		{"bad scheme", Config{URL: "http://127.0.0.1:6379", NodeID: "n1"}, recv},
		{"bad db", Config{URL: "redis://127.0.0.1:6379/x", NodeID: "n1"}, recv},
		{"negative history", Config{URL: "redis://127.0.0.1:6379", NodeID: "n1", HistorySize: -1}, recv},
		{"negative timeout", Config{URL: "redis://127.0.0.1:6379", NodeID: "n1", OpTimeout: -time.Second}, recv},
		{"no receiver", Config{URL: "redis://127.0.0.1:6379", NodeID: "n1"}, bridge.Receiver{}},
	}
	for _, tt := range tests {
		if _, err := New(tt.cfg, tt.recv); err == nil {
			t.Errorf("New(%s) = nil error, want one", tt.name)
		}
	}
	b, err := New(Config{URL: "redis://127.0.0.1:6379", NodeID: "n1", HistorySize: 10}, recv)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	want := DefaultConfig()
	if b.cfg.HistoryTTL != want.HistoryTTL || b.cfg.Prefix != want.Prefix || b.cfg.PingEvery != want.PingEvery ||
		b.cfg.OpTimeout != want.OpTimeout || b.cfg.QueueLen != want.QueueLen {
		t.Errorf("defaults = %+v, want those of %+v", b.cfg, want)
	}
	if err := b.Ready(); !errors.Is(err, bridge.ErrUnavailable) {
		t.Errorf("Ready() before Run = %v, want ErrUnavailable", err)
	}
}

func TestPublishReachesOnlyInterestedNodes(t *testing.T) {
	srv := redistest.Start(t)
	a, b := start(t, fastConfig(srv.URL(), "a")), start(t, fastConfig(srv.URL(), "b"))
	waitReady(t, a, b)
	ctx := context.Background()

	// b has no interest in "room": its marker on "other", published after,
	// arrives alone (one connection delivers in publish order).
	if err := b.Subscribe(ctx, "other"); err != nil {
		t.Fatalf("Subscribe(other): %v", err)
	}
	for _, m := range []bridge.Message{msg("room", 1), msg("other", 2)} {
		got, err := a.Publish(ctx, m)
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if got.Offset != 0 || got.Epoch != "" {
			t.Errorf("Publish with history off = offset %d epoch %q, want none", got.Offset, got.Epoch)
		}
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(b.received("other")) == 1 }, "b did not get the message on other")
	if got := b.received("room"); len(got) != 0 {
		t.Errorf("b without interest received %v", got)
	}

	// Every publish that starts once Subscribe returned arrives.
	for i := range 50 {
		ch := "c" + strconv.Itoa(i)
		if err := b.Subscribe(ctx, ch); err != nil {
			t.Fatalf("Subscribe(%s): %v", ch, err)
		}
		if _, err := a.Publish(ctx, msg(ch, i)); err != nil {
			t.Fatalf("Publish(%s): %v", ch, err)
		}
	}
	for i := range 50 {
		ch := "c" + strconv.Itoa(i)
		testkit.Eventually(t, 2*time.Second, func() bool { return len(b.received(ch)) == 1 }, "b got %d messages on %s, want 1", len(b.received(ch)), ch)
	}
	if got := a.received("c0"); len(got) != 0 {
		t.Errorf("a without interest received %v", got)
	}

	// A subscribed publisher receives its own message.
	if err := a.Subscribe(ctx, "room"); err != nil {
		t.Fatalf("Subscribe(room): %v", err)
	}
	if err := b.Subscribe(ctx, "room"); err != nil {
		t.Fatalf("Subscribe(room): %v", err)
	}
	if _, err := a.Publish(ctx, msg("room", 3)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	for name, n := range map[string]*node{"a": a, "b": b} {
		testkit.Eventually(t, 2*time.Second, func() bool { return len(n.received("room")) == 1 }, "%s did not get its room message", name)
		if got := n.received("room")[0]; string(got.Data) != "3" || got.From != "alice" {
			t.Errorf("%s received %+v, want data 3 from alice", name, got)
		}
	}

	b.Unsubscribe("room")
	testkit.Eventually(t, 2*time.Second, func() bool { return numSub(t, srv, "ringcast:c:room") == 1 }, "b still subscribed to room")
	for _, m := range []bridge.Message{msg("room", 4), msg("other", 5)} {
		if _, err := a.Publish(ctx, m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(b.received("other")) == 2 }, "b did not get its second message on other")
	if got := b.received("room"); len(got) != 1 {
		t.Errorf("b after Unsubscribe has %d room messages, want 1", len(got))
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(a.received("room")) == 2 }, "a did not get the room message")
}

func TestSubscribeUnsubscribeChurn(t *testing.T) {
	srv := redistest.Start(t)
	a := start(t, fastConfig(srv.URL(), "a"))
	waitReady(t, a)
	ctx := context.Background()
	// Unsubscribe and Subscribe racing on one channel must settle on the
	// last call, and a Subscribe that returned must be live.
	for i := range 200 {
		if i%3 != 2 {
			a.Unsubscribe("x")
		}
		if err := a.Subscribe(ctx, "x"); err != nil {
			t.Fatalf("Subscribe #%d: %v", i, err)
		}
	}
	if _, err := a.Publish(ctx, msg("x", "last")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(a.received("x")) == 1 }, "subscribed after churn, got %d messages", len(a.received("x")))
	a.Unsubscribe("x")
	testkit.Eventually(t, 2*time.Second, func() bool { return numSub(t, srv, "ringcast:c:x") == 0 }, "still subscribed after the last Unsubscribe")
}

func TestDirect(t *testing.T) {
	srv := redistest.Start(t)
	a, b := start(t, fastConfig(srv.URL(), "a")), start(t, fastConfig(srv.URL(), "b"))
	waitReady(t, a, b)
	ctx := context.Background()
	for n, id := range map[*node]string{a: "alice", b: "bob"} {
		n.mu.Lock()
		n.local[id] = true
		n.mu.Unlock()
	}
	if err := b.Hold(ctx, "bob"); err != nil {
		t.Fatalf("Hold: %v", err)
	}

	tests := []struct {
		to            string
		wantDelivered bool
		wantA, wantB  int // directs seen by each node's DeliverDirect
	}{
		{"bob", true, 1, 1},   // a tries locally, then b gets it through Redis
		{"alice", true, 1, 0}, // local: never reaches Redis
		{"nobody", false, 1, 0},
	}
	for _, tt := range tests {
		ok, err := a.Send(ctx, bridge.Direct{To: tt.to, From: "carol", Data: json.RawMessage(`"hi"`)})
		if err != nil || ok != tt.wantDelivered {
			t.Errorf("Send(%q) = %v, %v, want %v, nil", tt.to, ok, err, tt.wantDelivered)
		}
		testkit.Eventually(t, 2*time.Second, func() bool { return len(b.directsTo(tt.to)) == tt.wantB },
			"b saw %d directs to %q, want %d", len(b.directsTo(tt.to)), tt.to, tt.wantB)
		if got := len(a.directsTo(tt.to)); got != tt.wantA {
			t.Errorf("a saw %d directs to %q, want %d", got, tt.to, tt.wantA)
		}
	}
	if got := b.directsTo("bob")[0]; got.From != "carol" || string(got.Data) != `"hi"` {
		t.Errorf("b got %+v, want from carol data \"hi\"", got)
	}

	b.Release("bob")
	testkit.Eventually(t, 2*time.Second, func() bool { return numSub(t, srv, "ringcast:u:bob") == 0 }, "b still holds bob")
	if ok, err := a.Send(ctx, bridge.Direct{To: "bob", Data: json.RawMessage(`1`)}); err != nil || ok {
		t.Errorf("Send(bob) after Release = %v, %v, want false, nil", ok, err)
	}
}

func TestHistory(t *testing.T) {
	srv := redistest.Start(t)
	cfg := fastConfig(srv.URL(), "a")
	cfg.HistorySize = 5
	a := start(t, cfg)
	waitReady(t, a)
	ctx := context.Background()
	if err := a.Subscribe(ctx, "h"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	msgs, top, rec, err := a.History(ctx, "h", nil)
	if err != nil || len(msgs) != 0 || rec || top.Epoch == "" || top.Offset != 0 {
		t.Fatalf("History(h, nil) on a new channel = %v, %+v, %v, %v; want no messages, a fresh epoch at 0", msgs, top, rec, err)
	}
	epoch := top.Epoch
	for i := 1; i <= 13; i++ {
		m, err := a.Publish(ctx, msg("h", i))
		if err != nil {
			t.Fatalf("Publish #%d: %v", i, err)
		}
		if m.Offset != uint64(i) || m.Epoch != epoch {
			t.Fatalf("Publish #%d = offset %d epoch %q, want %d %q", i, m.Offset, m.Epoch, i, epoch)
		}
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(a.received("h")) == 13 }, "delivered %d of 13", len(a.received("h")))
	for i, m := range a.received("h") {
		if m.Offset != uint64(i+1) || m.Epoch != epoch || string(m.Data) != strconv.Itoa(i+1) {
			t.Errorf("delivered #%d = %+v, want offset and data %d, epoch %q", i+1, m, i+1, epoch)
		}
	}

	tests := []struct {
		since         *wire.Position
		wantOffsets   []uint64
		wantRecovered bool
	}{
		{nil, nil, false},
		{&wire.Position{Epoch: epoch, Offset: 13}, nil, true},
		{&wire.Position{Epoch: epoch, Offset: 12}, []uint64{13}, true},
		{&wire.Position{Epoch: epoch, Offset: 8}, []uint64{9, 10, 11, 12, 13}, true},
		{&wire.Position{Epoch: epoch, Offset: 7}, nil, false}, // 6 missed > HistorySize
		{&wire.Position{Epoch: epoch, Offset: 0}, nil, false},
		{&wire.Position{Epoch: epoch, Offset: 14}, nil, false}, // ahead of the channel
		{&wire.Position{Epoch: "other", Offset: 12}, nil, false},
	}
	for _, tt := range tests {
		msgs, top, rec, err := a.History(ctx, "h", tt.since)
		var offsets []uint64
		for _, m := range msgs {
			offsets = append(offsets, m.Offset)
			if m.Epoch != epoch || string(m.Data) != strconv.FormatUint(m.Offset, 10) || m.Channel != "h" || m.From != "alice" {
				t.Errorf("History(h, %+v) message %+v does not match what was published", tt.since, m)
			}
		}
		if err != nil || rec != tt.wantRecovered || !slices.Equal(offsets, tt.wantOffsets) || top != (wire.Position{Epoch: epoch, Offset: 13}) {
			t.Errorf("History(h, %+v) = offsets %v, top %+v, recovered %v, %v; want %v, {%s 13}, %v, nil",
				tt.since, offsets, top, rec, err, tt.wantOffsets, epoch, tt.wantRecovered)
		}
	}
}

func TestHistoryOff(t *testing.T) {
	srv := redistest.Start(t)
	a := start(t, fastConfig(srv.URL(), "a"))
	waitReady(t, a)
	msgs, top, rec, err := a.History(context.Background(), "h", &wire.Position{Epoch: "e", Offset: 1})
	if msgs != nil || top != (wire.Position{}) || rec || err != nil {
		t.Errorf("History with history off = %v, %+v, %v, %v; want nil, {}, false, nil", msgs, top, rec, err)
	}
}

func TestHistoryTTL(t *testing.T) {
	srv := redistest.Start(t)
	cfg := fastConfig(srv.URL(), "a")
	cfg.HistorySize, cfg.HistoryTTL = 1000, time.Second
	a := start(t, cfg)
	waitReady(t, a)
	ctx := context.Background()
	first, err := a.Publish(ctx, msg("h", 1))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	since := &wire.Position{Epoch: first.Epoch, Offset: 0}
	// Publishing keeps the channel's keys alive; the first message still
	// ages out of reach.
	testkit.Eventually(t, 5*time.Second, func() bool {
		if _, err := a.Publish(ctx, msg("h", 2)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		_, top, rec, err := a.History(ctx, "h", since)
		if err == nil && top.Epoch != first.Epoch {
			t.Fatalf("History(h) = epoch %q, want %q: the keys expired while publishing", top.Epoch, first.Epoch)
		}
		return err == nil && !rec
	}, "History since a message older than HistoryTTL still recovers")
	// Idle past HistoryTTL: the keys expire and a new epoch starts.
	testkit.Eventually(t, 5*time.Second, func() bool {
		_, top, rec, err := a.History(ctx, "h", since)
		return err == nil && !rec && top.Epoch != first.Epoch && top.Offset == 0
	}, "no new epoch after the channel idled past HistoryTTL")
}

func TestOffsetsAndOrderUnderConcurrentPublishers(t *testing.T) {
	srv := redistest.Start(t)
	cfg := fastConfig(srv.URL(), "a")
	cfg.HistorySize = 100
	a, b := start(t, cfg), start(t, fastConfig(srv.URL(), "b"))
	waitReady(t, a, b)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "room"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	const publishers, each = 8, 50
	offsets := make(chan uint64, publishers*each)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m, err := a.Publish(ctx, msg("room", [2]int{p, i}))
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				offsets <- m.Offset
			}
		}()
	}
	wg.Wait()
	close(offsets)
	got := slices.Sorted(func(yield func(uint64) bool) {
		for o := range offsets {
			if !yield(o) {
				return
			}
		}
	})
	for i, o := range got {
		if o != uint64(i+1) {
			t.Fatalf("returned offsets %v, want 1..%d once each", got, publishers*each)
		}
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return len(b.received("room")) == publishers*each }, "b got %d of %d", len(b.received("room")), publishers*each)
	next := make([]int, publishers)
	for i, m := range b.received("room") {
		var pi [2]int
		if err := json.Unmarshal(m.Data, &pi); err != nil {
			t.Fatalf("data %s: %v", m.Data, err)
		}
		if m.Offset != uint64(i+1) || pi[1] != next[pi[0]] {
			t.Fatalf("delivery #%d = offset %d, publisher %d message %d; want offset %d, message %d", i, m.Offset, pi[0], pi[1], i+1, next[pi[0]])
		}
		next[pi[0]]++
	}
}

func TestNewEpochAfterRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	cfg := fastConfig(srv.URL(), "a")
	cfg.HistorySize = 10
	a := start(t, cfg)
	waitReady(t, a)
	ctx := context.Background()
	var last bridge.Message
	for i := range 2 {
		var err error
		if last, err = a.Publish(ctx, msg("h", i)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	srv.Restart() // SIGKILL; the new process has no data
	since := &wire.Position{Epoch: last.Epoch, Offset: last.Offset}
	var top wire.Position
	testkit.Eventually(t, 5*time.Second, func() bool {
		var rec bool
		var err error
		_, top, rec, err = a.History(ctx, "h", since)
		if err == nil && rec {
			t.Fatalf("History(h, %+v) after history was lost recovered", since)
		}
		return err == nil
	}, "History still fails after the restart")
	if top.Epoch == last.Epoch || top.Offset != 0 {
		t.Errorf("top after restart = %+v, want a new epoch at offset 0 (old %q)", top, last.Epoch)
	}
	waitReady(t, a) // publishes are refused until then
	m, err := a.Publish(ctx, msg("h", "new"))
	if err != nil || m.Epoch != top.Epoch || m.Offset != 1 {
		t.Errorf("Publish after restart = %+v, %v; want offset 1 in epoch %q", m, err, top.Epoch)
	}
}

// TestRedisOutage runs with the default PingEvery and OpTimeout: the bounds
// it checks are the ones documented.
func TestRedisOutage(t *testing.T) {
	srv := redistest.Start(t)
	cfg := Config{URL: srv.URL(), NodeID: "a", HistorySize: 10}
	a := start(t, cfg)
	cfg.NodeID = "b"
	b := start(t, cfg)
	waitReady(t, a, b)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "room"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := b.Hold(ctx, "bob"); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	opTimeout := DefaultConfig().OpTimeout

	srv.Kill()
	killed := time.Now()
	testkit.Eventually(t, 5*time.Second, func() bool { return a.Ready() != nil && b.Ready() != nil }, "Ready() = nil with Redis down")
	t.Logf("not ready %v after kill", time.Since(killed).Round(time.Millisecond))

	calls := []struct {
		name string
		call func() error
	}{
		{"Publish", func() error { _, err := a.Publish(ctx, msg("room", "x")); return err }},
		{"Send", func() error { _, err := a.Send(ctx, bridge.Direct{To: "bob", Data: json.RawMessage(`1`)}); return err }},
		{"Subscribe", func() error { return b.Subscribe(ctx, "other") }},
		{"Hold", func() error { return b.Hold(ctx, "carol") }},
		{"History", func() error { _, _, _, err := a.History(ctx, "room", nil); return err }},
	}
	for _, c := range calls {
		began := time.Now()
		err := c.call()
		if took := time.Since(began); !errors.Is(err, bridge.ErrUnavailable) || took > opTimeout {
			t.Errorf("%s with Redis down = %v after %v, want ErrUnavailable within %v", c.name, err, took, opTimeout)
		}
	}
	b.Unsubscribe("other")
	b.Release("carol")
	if n := b.lost.Load(); n != 0 {
		t.Errorf("Lost called %d times before Redis came back, want 0", n)
	}

	srv.Restart()
	back := time.Now()
	testkit.Eventually(t, 5*time.Second, func() bool { return a.Ready() == nil && b.Ready() == nil }, "not ready again after Redis came back")
	t.Logf("ready %v after restart", time.Since(back).Round(time.Millisecond))
	// Lost comes once the subscriptions are back: a publish right after it
	// reaches b.
	testkit.Eventually(t, 5*time.Second, func() bool { return b.lost.Load() == 1 }, "Lost called %d times, want 1", b.lost.Load())
	m, err := a.Publish(ctx, msg("room", "after"))
	if err != nil {
		t.Fatalf("Publish after restart: %v", err)
	}
	testkit.Eventually(t, 2*time.Second, func() bool {
		got := b.received("room")
		return len(got) == 1 && reflect.DeepEqual(got[0], m)
	}, "b received %v, want [%+v]", b.received("room"), m)
	if ok, err := a.Send(ctx, bridge.Direct{To: "bob", Data: json.RawMessage(`2`)}); !ok || err != nil {
		t.Errorf("Send(bob) after restart = %v, %v; want true, nil", ok, err)
	}
	if n := numSub(t, srv, "ringcast:c:other") + numSub(t, srv, "ringcast:u:carol"); n != 0 {
		t.Errorf("failed Subscribe/Hold left %d subscriptions", n)
	}
	if n := b.lost.Load(); n != 1 {
		t.Errorf("Lost called %d times for one outage, want 1", n)
	}
}

func TestRedisFrozen(t *testing.T) {
	srv := redistest.Start(t)
	const opTimeout = 500 * time.Millisecond
	cfg := fastConfig(srv.URL(), "a")
	cfg.OpTimeout = opTimeout
	a := start(t, cfg)
	cfg.NodeID = "b"
	b := start(t, cfg)
	waitReady(t, a, b)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "room"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	srv.Freeze()
	began := time.Now()
	_, err := a.Publish(ctx, msg("room", "frozen"))
	// The bound is OpTimeout; the slack absorbs a starved scheduler.
	if took := time.Since(began); !errors.Is(err, bridge.ErrUnavailable) || took > 2*opTimeout {
		t.Errorf("Publish to a frozen Redis = %v after %v, want ErrUnavailable within %v", err, took, opTimeout)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return a.Ready() != nil && b.Ready() != nil }, "Ready() = nil with Redis frozen")
	srv.Thaw()
	waitReady(t, a, b)
	testkit.Eventually(t, 5*time.Second, func() bool { return b.lost.Load() == 1 }, "Lost called %d times, want 1", b.lost.Load())
	testkit.Eventually(t, 5*time.Second, func() bool {
		_, err := a.Publish(ctx, msg("room", "thawed"))
		return err == nil
	}, "Publish still fails after thaw")
	testkit.Eventually(t, 2*time.Second, func() bool {
		for _, m := range b.received("room") {
			if string(m.Data) == `"thawed"` {
				return true
			}
		}
		return false
	}, "b did not receive a message published after thaw")
}

func TestStartWithRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	a := start(t, fastConfig(srv.URL(), "a"))
	ctx := context.Background()
	if _, err := a.Publish(ctx, msg("room", 1)); !errors.Is(err, bridge.ErrUnavailable) {
		t.Errorf("Publish with Redis down = %v, want ErrUnavailable", err)
	}
	if err := a.Subscribe(ctx, "room"); !errors.Is(err, bridge.ErrUnavailable) {
		t.Errorf("Subscribe with Redis down = %v, want ErrUnavailable", err)
	}
	a.Unsubscribe("room")
	if err := a.Ready(); !errors.Is(err, bridge.ErrUnavailable) {
		t.Errorf("Ready() with Redis down = %v, want ErrUnavailable", err)
	}

	srv.Restart()
	waitReady(t, a)
	if err := a.Subscribe(ctx, "room"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if _, err := a.Publish(ctx, msg("room", 2)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(a.received("room")) == 1 }, "own message not delivered")
	if n := a.lost.Load(); n != 0 {
		t.Errorf("Lost called %d times without a connection ever made, want 0", n)
	}
}

func TestStopped(t *testing.T) {
	srv := redistest.Start(t)
	cfg := fastConfig(srv.URL(), "a")
	cfg.HistorySize = 10
	a := start(t, cfg)
	waitReady(t, a)
	a.stop()
	ctx := context.Background()
	calls := map[string]func() error{
		"Publish":   func() error { _, err := a.Publish(ctx, msg("room", 1)); return err },
		"Subscribe": func() error { return a.Subscribe(ctx, "room") },
		"Run":       func() error { return a.Run(ctx) },
		"Ready":     a.Ready,
		"History":   func() error { _, _, _, err := a.History(ctx, "room", nil); return err },
	}
	for name, call := range calls {
		if err := call(); err == nil {
			t.Errorf("%s after Run returned = nil, want an error", name)
		}
	}
}

func ExampleNew() {
	b, err := New(Config{URL: "redis://127.0.0.1:6379/0", NodeID: "n1", HistorySize: 100}, bridge.Receiver{
		Deliver:       func(m bridge.Message) { fmt.Println(m.Channel) },
		DeliverDirect: func(bridge.Direct) bool { return false },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = b // run it with b.Run(ctx)
	fmt.Println("ok")
	// Output: ok
}
