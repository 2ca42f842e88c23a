package outbound

import (
	"sync"
	"testing"
)

func TestBudgetStates(t *testing.T) {
	t.Parallel()
	// The accounting alone: no connection is blocked, so shedding finds
	// no one to close and the node stays overloaded until bytes come back.
	var wg sync.WaitGroup
	o := &Pool{wg: &wg, b: budget{max: 100, blocked: map[Sink]struct{}{}}}
	if !o.reserve(90) || o.Overloaded() {
		t.Fatal("90 of 100: refused or overloaded")
	}
	if !o.reserve(20) || !o.Overloaded() {
		t.Fatal("110 of 100: refused, or not overloaded")
	}
	if o.reserve(20) {
		t.Fatal("130 of 100 (past 5/4) was not refused")
	}
	o.release(30) // 80: above 3/4, still overloaded
	if !o.Overloaded() {
		t.Fatal("80 of 100 after passing 100: no longer overloaded (wants 75)")
	}
	o.release(80)
	wg.Wait() // the shedding pass ends once under 75
	if o.Overloaded() || o.b.bytes.Load() != 0 {
		t.Fatalf("after release: overloaded %v, bytes %d", o.Overloaded(), o.b.bytes.Load())
	}
}
