package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
)

// cpuTick is how often the CPU meter samples: fine enough to cut a
// recovery of a second or two into its own window.
const cpuTick = 50 * time.Millisecond

// clockTick is the unit of /proc/stat's times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuBaseline is how long before a fault its background CPU is taken:
// heartbeats, gossip, the load, this harness's own sampling.
const cpuBaseline = 2 * time.Second

// cpuMeter samples the CPU time the balancers, the nodes and this harness
// (whose clients share the machine) have used, and the machine's busy
// time, so that a report can tell a recovery the CPU paced from one a
// timer or a lock paced. Linux only: elsewhere it records nothing.
type cpuMeter struct {
	cl  *clustertest.Cluster
	clk clock

	mu      sync.Mutex
	samples []cpuSample
	seen    map[string]procTime // process name → its last pid and CPU time
	total   map[string]time.Duration
}

type procTime struct {
	pid int
	cpu time.Duration
}

// cpuSample is one reading: CPU time used so far by each role, summed over
// every process that had that role (a restarted one counts from zero), and
// the machine's busy and total time over all CPUs.
type cpuSample struct {
	at        time.Duration
	role      map[string]time.Duration // "balancers", "nodes", "harness"
	busy, all time.Duration
}

// recoveryCPU is the CPU a recovery took: over the window from the fault to
// its last affected client resubscribed, above the rate of the
// cpuBaseline before the fault, per resubscribed client.
type recoveryCPU struct {
	WindowMS       float64            `json:"window_ms"`
	PerClientMS    map[string]float64 `json:"per_client_ms"` // by role, and "all"
	MachineBusyPc  float64            `json:"machine_busy_pct"`
	BaselineBusyPc float64            `json:"baseline_busy_pct"`
}

// overlaps reports whether a fault other than faults[j] was on (from its
// start until quietAfter past its heal) at some time in [from, to]: the
// CPU of that window is not faults[j]'s alone.
func overlaps(faults []fault, j int, from, to time.Duration) bool {
	for i, g := range faults {
		end := open
		if g.End != open {
			end = g.End + quietAfter
		}
		if i != j && g.Start <= to && end >= from {
			return true
		}
	}
	return false
}

func (m *cpuMeter) run(ctx context.Context) {
	t := time.NewTicker(cpuTick)
	defer t.Stop()
	for {
		m.sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *cpuMeter) sample() {
	busy, all, err := machineTime()
	if err != nil {
		return
	}
	s := cpuSample{at: m.clk.now(), role: map[string]time.Duration{}, busy: busy, all: all}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == nil {
		m.seen, m.total = map[string]procTime{}, map[string]time.Duration{}
	}
	// add reads the CPU of the process called name and returns its total
	// over every pid it had. A process that died since the last sample
	// loses what it used after it (under cpuTick); a restarted one counts
	// from zero.
	add := func(name string, pid int) time.Duration {
		if cpu := clustertest.CPUTime(pid); pid != 0 && cpu != 0 { // 0: gone, or not yet scheduled
			last := m.seen[name]
			if last.pid != pid {
				last = procTime{pid: pid}
			}
			m.total[name] += max(0, cpu-last.cpu)
			m.seen[name] = procTime{pid: pid, cpu: cpu}
		}
		return m.total[name]
	}
	for _, p := range m.cl.Balancers {
		s.role["balancers"] += add(p.Name, p.Pid())
	}
	for _, p := range m.cl.Nodes {
		s.role["nodes"] += add(p.Name, p.Pid())
	}
	s.role["harness"] = add("harness", os.Getpid())
	m.samples = append(m.samples, s)
}

// at returns the last sample taken at or before t, and whether there is
// one. m.mu held.
func (m *cpuMeter) at(t time.Duration) (cpuSample, bool) {
	var found cpuSample
	ok := false
	for _, s := range m.samples {
		if s.at > t {
			break
		}
		found, ok = s, true
	}
	return found, ok
}

// after returns the first sample taken at or after t, and whether there is
// one. m.mu held.
func (m *cpuMeter) after(t time.Duration) (cpuSample, bool) {
	for _, s := range m.samples {
		if s.at >= t {
			return s, true
		}
	}
	return cpuSample{}, false
}

// recovery returns the CPU of the recovery that began at start and whose
// last client resubscribed took after it, for affected clients; nil when
// the samples do not cover it.
func (m *cpuMeter) recovery(start, took time.Duration, affected int) *recoveryCPU {
	m.mu.Lock()
	defer m.mu.Unlock()
	if affected == 0 || took <= 0 {
		return nil
	}
	b0, ok0 := m.at(start - cpuBaseline)
	s0, ok1 := m.at(start)
	s1, ok2 := m.after(start + took)
	if !ok0 || !ok1 || !ok2 || s1.at <= s0.at || s0.at <= b0.at {
		return nil
	}
	window := s1.at - s0.at
	scale := float64(window) / float64(s0.at-b0.at) // baseline rate over the window
	r := &recoveryCPU{WindowMS: ms64(window), PerClientMS: map[string]float64{}}
	var all float64
	for _, role := range []string{"balancers", "nodes", "harness"} {
		used := float64(s1.role[role]-s0.role[role]) - scale*float64(s0.role[role]-b0.role[role])
		perClient := used / float64(affected) / float64(time.Millisecond)
		r.PerClientMS[role] = round3(max(0, perClient))
		all += perClient
	}
	r.PerClientMS["all"] = round3(max(0, all))
	if d := s1.all - s0.all; d > 0 {
		r.MachineBusyPc = round3(100 * float64(s1.busy-s0.busy) / float64(d))
	}
	if d := s0.all - b0.all; d > 0 {
		r.BaselineBusyPc = round3(100 * float64(s0.busy-b0.busy) / float64(d))
	}
	return r
}

func (r *recoveryCPU) String() string {
	return fmt.Sprintf("%.2f ms per resubscribed client above the baseline (balancers %.2f, nodes %.2f, this harness process with its clients %.2f) over %.0f ms; machine busy %.0f%% (%.0f%% before)",
		r.PerClientMS["all"], r.PerClientMS["balancers"], r.PerClientMS["nodes"], r.PerClientMS["harness"], r.WindowMS, r.MachineBusyPc, r.BaselineBusyPc)
}

// machineTime returns the busy and the total CPU time of the machine, over
// all CPUs, from the first line of /proc/stat.
func machineTime() (busy, all time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 6 || string(f[0]) != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected %q", line)
	}
	var ticks [10]int64
	for i := 1; i < len(f) && i <= len(ticks); i++ {
		ticks[i-1], _ = strconv.ParseInt(string(f[i]), 10, 64)
	}
	// user nice system idle iowait irq softirq steal (guest is in user)
	var sum int64
	for _, t := range ticks[:8] {
		sum += t
	}
	idle := ticks[3] + ticks[4]
	return time.Duration(sum-idle) * clockTick, time.Duration(sum) * clockTick, nil
}

func ms64(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }
