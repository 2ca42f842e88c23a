package session

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("after 5 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePages is how many of the region's pages are free.
func (r *region) freePages() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.free) + len(r.mem)/pageSize - int(r.next)
}

// TestFragmentedMessagesIntact publishes messages of many sizes, cut into
// fragments of many sizes (page boundaries, the read buffer's size, empty
// ones) with pings between them, from 4 connections at once, and requires
// each to arrive intact; then every page is free and nothing is charged.
func TestFragmentedMessagesIntact(t *testing.T) {
	t.Parallel()
	n := start(t, nil)
	var wg sync.WaitGroup
	for k := range 4 {
		c := n.connect(t, fmt.Sprint("c", k))
		channel := fmt.Sprint("room", k)
		c.Send(`{"op":"subscribe","channel":"` + channel + `"}`)
		c.Expect(wire.OpSubscribed)
		wg.Go(func() {
			if err := sendFragmented(c, channel, rand.New(rand.NewPCG(13, uint64(k)))); err != nil {
				t.Errorf("%s: %v", c.ID, err)
			}
		})
	}
	wg.Wait()
	all := int(n.u.cfg.MaxUnfinished / pageSize)
	waitFor(t, "every page free and nothing charged", func() bool {
		return n.u.region.freePages() == all && n.u.unfinished.Load() == 0
	})
}

// sendFragmented publishes on channel, which c is subscribed to, messages
// cut as the table and rng say, and requires each back intact.
func sendFragmented(c *wstest.Conn, channel string, rng *rand.Rand) error {
	cuts := [][]int{
		nil, // one frame
		{1}, {0, 0}, {7, 4089}, {4095, 1, 4096}, {4096, 4096, 4096}, {2047, 2048, 2049},
		{125, 0, 3}, {10000, 20000}, {1, 1, 1, 1, 1},
	}
	for range 20 {
		var cut []int
		for range 1 + rng.IntN(12) {
			cut = append(cut, rng.IntN(6000))
		}
		cuts = append(cuts, cut)
	}
	for i, cut := range cuts {
		size := rng.IntN(60000)
		if i < 3 {
			size = []int{10, 3000, 50000}[i]
		}
		var data strings.Builder
		for data.Len() < size {
			data.WriteByte(byte('a' + rng.IntN(26)))
		}
		msg := []byte(fmt.Sprintf(`{"op":"publish","channel":%q,"data":%q}`, channel, data.String()))
		pings := 0
		for j := 0; ; j++ {
			k := len(msg)
			if j < len(cut) {
				k = min(cut[j], len(msg))
			}
			op := ws.OpText
			if j > 0 {
				op = ws.OpContinuation
			}
			fin := k == len(msg) && j >= len(cut)
			if err := c.WriteFrame(op, fin, msg[:k]); err != nil {
				return err
			}
			msg = msg[k:]
			if fin {
				break
			}
			if rng.IntN(3) == 0 {
				pings++
				if err := c.WriteFrame(ws.OpPing, true, []byte("p")); err != nil {
					return err
				}
			}
		}
		for pongs := 0; ; {
			e, err := c.Read(5 * time.Second)
			if err != nil {
				return fmt.Errorf("message %d (%d bytes, cut %v): %w", i, size, cut, err)
			}
			if e.Pong != nil {
				pongs++
				continue
			}
			if e.Frame.Op != wire.OpMessage || string(e.Frame.Data) != fmt.Sprintf("%q", data.String()) {
				return fmt.Errorf("message %d (%d bytes, cut %v): got %.80s…, want the message published", i, size, cut, e.Raw)
			}
			if pongs != pings {
				return fmt.Errorf("message %d: %d pongs before it, want %d", i, pongs, pings)
			}
			break
		}
	}
	return nil
}

// TestUnfinishedBudget: the pages and reader allowance of unfinished
// messages are charged to MaxUnfinished; a frame past it closes its
// connection 1013, the others go on, and what they held comes back.
func TestUnfinishedBudget(t *testing.T) {
	t.Parallel()
	budget := 2*readerCost() + 3*pageSize
	n := start(t, func(c *testConfig) { c.MaxUnfinished = budget })
	charged := func(want int64) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d bytes charged", want), func() bool { return n.u.unfinished.Load() == want })
	}
	a, b, c := n.connect(t, "a"), n.connect(t, "b"), n.connect(t, "c")
	a.Send(`{"op":"subscribe","channel":"room"}`)
	a.Expect(wire.OpSubscribed)
	msg := []byte(fmt.Sprintf(`{"op":"publish","channel":"room","data":%q}`, strings.Repeat("x", 4000)))
	if a.WriteFrame(ws.OpText, false, msg[:2000]) != nil {
		t.Fatal("write a")
	}
	charged(readerCost() + pageSize)
	if b.WriteFrame(ws.OpText, false, make([]byte, 4096)) != nil || b.WriteFrame(ws.OpContinuation, false, []byte{' '}) != nil {
		t.Fatal("write b")
	}
	charged(budget) // b took two pages
	c.WriteFrame(ws.OpText, false, []byte("{"))
	c.ExpectClose(wire.CloseTryAgainLater, 0, 5*time.Second)
	if got := n.u.unfinished.Load(); got != budget {
		t.Errorf("after the refusal %d bytes charged, want %d", got, budget)
	}
	// a's message fits the pages it was charged: it completes.
	if a.WriteFrame(ws.OpContinuation, true, msg[2000:]) != nil {
		t.Fatal("write a")
	}
	if f := a.Expect(wire.OpMessage); string(f.Data) != fmt.Sprintf("%q", strings.Repeat("x", 4000)) {
		t.Errorf("a's message arrived as %.40s…", f.Data)
	}
	charged(readerCost() + 2*pageSize)
	b.NC.Close()
	charged(0)
	waitFor(t, "every page free", func() bool { return n.u.region.freePages() == int(budget/pageSize) })
}

func TestRegion(t *testing.T) {
	r, err := newRegion(3*pageSize + 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for range 3 {
		p := r.get()
		if p < 0 {
			t.Fatal("no page among 3")
		}
		copy(r.page(p), "used")
		got = append(got, p)
	}
	if p := r.get(); p != -1 {
		t.Fatalf("a 4th page %d of 3", p)
	}
	r.put(got)
	if runtime.GOOS != "linux" {
		return // the heap-backed region keeps what was written
	}
	for range 3 {
		if p := r.get(); string(r.page(p)[:4]) != "\x00\x00\x00\x00" {
			t.Errorf("page %d reads %q after it was returned, want zeros", p, r.page(p)[:4])
		}
	}
}
