package main

import (
	"os"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
)

// recovery takes the window's CPU above the baseline rate, per client.
func TestRecoveryCPU(t *testing.T) {
	s := func(at, bal, nodes, harness, busy, all time.Duration) cpuSample {
		return cpuSample{at: at, busy: busy, all: all,
			role: map[string]time.Duration{"balancers": bal, "nodes": nodes, "harness": harness}}
	}
	ms, sec := time.Millisecond, time.Second
	m := &cpuMeter{samples: []cpuSample{
		s(8*sec, 0, 0, 0, 0, 0),
		// 2 s of baseline: 100 ms each role, a quarter of 2 CPUs busy
		s(10*sec, 100*ms, 100*ms, 100*ms, 1*sec, 4*sec),
		s(10*sec+500*ms, 500*ms, 400*ms, 300*ms, 1900*ms, 5*sec),
		// 1 s after the fault: +1000, +800, +600 ms; the baseline's share is 50 ms each
		s(11*sec, 1100*ms, 900*ms, 700*ms, 2900*ms, 6*sec),
		s(12*sec, 1200*ms, 1000*ms, 800*ms, 3400*ms, 8*sec),
	}}
	r := m.recovery(10*sec, 950*ms, 100)
	if r == nil {
		t.Fatal("no recovery CPU")
	}
	want := map[string]float64{"balancers": 9.5, "nodes": 7.5, "harness": 5.5, "all": 22.5}
	for k, v := range want {
		if r.PerClientMS[k] != v {
			t.Errorf("%s: %v ms per client, want %v", k, r.PerClientMS[k], v)
		}
	}
	if r.WindowMS != 1000 || r.MachineBusyPc != 95 || r.BaselineBusyPc != 25 {
		t.Errorf("window %v ms, busy %v%%, baseline %v%%; want 1000, 95, 25", r.WindowMS, r.MachineBusyPc, r.BaselineBusyPc)
	}
	if m.recovery(9*sec, 500*ms, 100) != nil {
		t.Error("a fault whose baseline the samples do not cover has a recovery CPU")
	}
	if m.recovery(11*sec, 5*sec, 100) != nil {
		t.Error("a recovery past the last sample has a recovery CPU")
	}
}

// machineTime reads the machine's CPU time, which grows as this test
// spins (as does the process's, clustertest.CPUTime).
func TestMachineTime(t *testing.T) {
	p0 := clustertest.CPUTime(os.Getpid())
	b0, a0, err := machineTime()
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for start := time.Now(); time.Since(start) < 5*time.Second && clustertest.CPUTime(os.Getpid())-p0 < 30*time.Millisecond; {
		for range 100000 {
			x++
		}
	}
	p1 := clustertest.CPUTime(os.Getpid())
	b1, a1, _ := machineTime()
	if p1-p0 < 30*time.Millisecond || b1-b0 < p1-p0-20*time.Millisecond || a1-a0 < b1-b0 {
		t.Errorf("after spinning (%d turns): process CPU +%v, machine busy +%v of +%v", x, p1-p0, b1-b0, a1-a0)
	}
}

// A fault's CPU window is its own only when no other fault was on in it
// (up to quietAfter past that fault's heal).
func TestOverlaps(t *testing.T) {
	sec := time.Second
	faults := []fault{{Start: 10 * sec, End: 12 * sec}, {Start: 20 * sec, End: 21 * sec}, {Start: 40 * sec, End: open}}
	for _, tc := range []struct {
		j        int
		from, to time.Duration
		want     bool
	}{
		{1, 18 * sec, 22 * sec, false}, // fault 0 healed at 12 s: on until 17 s
		{1, 17 * sec, 22 * sec, true},  // … the window's start
		{0, 8 * sec, 11 * sec, false},  // alone
		{1, 19 * sec, 39 * sec, false}, // fault 2 starts at 40 s
		{1, 19 * sec, 40 * sec, true},  // … at the window's end
		{2, 45 * sec, 46 * sec, false}, // never healed, but the others are long over
	} {
		if got := overlaps(faults, tc.j, tc.from, tc.to); got != tc.want {
			t.Errorf("overlaps(fault %d, %v, %v) = %v, want %v", tc.j, tc.from, tc.to, got, tc.want)
		}
	}
}
