package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// sample is one path measured in one round.
type sample struct {
	rate     float64 // round trips per second
	p50, p99 time.Duration
	cpu      float64 // hop CPU µs per round trip; 0 when there is no hop
	note     string  // failed connections, if any
}

func newSample(res result, cpu time.Duration) sample {
	s := sample{rate: float64(res.Msgs) / res.Seconds, p50: res.P50, p99: res.P99,
		cpu: float64(cpu.Microseconds()) / float64(res.Msgs)}
	if res.Errors > 0 {
		s.note = fmt.Sprintf("%d connections failed (first: %s)", res.Errors, res.FirstError)
	}
	return s
}

// median returns the per-field median of ss (upper median for even counts).
func median(ss []sample) sample {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return sample{
		rate: pick(func(s sample) float64 { return s.rate }),
		p50:  time.Duration(pick(func(s sample) float64 { return float64(s.p50) })),
		p99:  time.Duration(pick(func(s sample) float64 { return float64(s.p99) })),
		cpu:  pick(func(s sample) float64 { return s.cpu }),
	}
}

var header = []string{"path", "conns", "msgs/s", "p50 µs", "p99 µs", "vs direct", "vs nginx", "hop CPU µs/msg"}

// printTables prints one row per path and round, then the medians.
func printTables(w io.Writer, names []string, conns int, got map[string][]sample) {
	rounds := len(got[names[0]])
	row := func(name string, s sample, round int) []string {
		ratio := func(base string) string {
			b, ok := got[base]
			if !ok {
				return "-"
			}
			if round < 0 {
				return fmt.Sprintf("%.2f×", s.rate/median(b).rate)
			}
			return fmt.Sprintf("%.2f×", s.rate/b[round].rate)
		}
		cpu := "-"
		if s.cpu > 0 {
			cpu = fmt.Sprintf("%.1f", s.cpu)
		}
		return []string{name, fmt.Sprint(conns), fmt.Sprintf("%.0f", s.rate),
			fmt.Sprint(s.p50.Microseconds()), fmt.Sprint(s.p99.Microseconds()), ratio("direct"), ratio("nginx"), cpu}
	}
	var notes []string
	if rounds > 1 {
		var rows [][]string
		for r := range rounds {
			for _, n := range names {
				s := got[n][r]
				rows = append(rows, row(fmt.Sprintf("%s (round %d)", n, r+1), s, r))
				if s.note != "" {
					notes = append(notes, fmt.Sprintf("%s, round %d: %s", n, r+1, s.note))
				}
			}
		}
		fmt.Fprintln(w, "per round:")
		printAligned(w, rows)
		fmt.Fprintf(w, "\nmedian of %d rounds (ratios of medians):\n", rounds)
	}
	var rows [][]string
	for _, n := range names {
		rows = append(rows, row(n, median(got[n]), -1))
		if rounds == 1 && got[n][0].note != "" {
			notes = append(notes, n+": "+got[n][0].note)
		}
	}
	printAligned(w, rows)
	for _, n := range notes {
		fmt.Fprintln(w, "note:", n)
	}
	fmt.Fprintln(w, "hop CPU µs/msg: user+system CPU time of the hop process (nginx: master and workers) over the window, per echo round trip")
}

func printAligned(w io.Writer, rows [][]string) {
	all := append([][]string{header}, rows...)
	widths := make([]int, len(header))
	for _, r := range all {
		for i, c := range r {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	for k, r := range all {
		cells := make([]string, len(r))
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-len([]rune(c)))
			if i == 0 {
				cells[i] = c + pad
			} else {
				cells[i] = pad + c
			}
		}
		fmt.Fprintln(w, strings.Join(cells, " | "))
		if k == 0 {
			for i := range cells {
				cells[i] = strings.Repeat("-", widths[i])
			}
			fmt.Fprintln(w, strings.Join(cells, "-|-"))
		}
	}
}
