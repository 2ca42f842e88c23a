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
	rate     float64 // round trips (echo) or connections (connect) per second
	p50, p99 time.Duration
	cpu      float64 // hop CPU µs per round trip or connection; 0 when there is no hop
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

// med returns the median of v (upper median for even counts).
func med(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// median returns the per-field median of ss.
func median(ss []sample) sample {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		return med(v)
	}
	return sample{
		rate: pick(func(s sample) float64 { return s.rate }),
		p50:  time.Duration(pick(func(s sample) float64 { return float64(s.p50) })),
		p99:  time.Duration(pick(func(s sample) float64 { return float64(s.p99) })),
		cpu:  pick(func(s sample) float64 { return s.cpu }),
	}
}

// peers are the paths every other path is compared with, when measured.
var peers = []string{"direct", "nginx", "haproxy", "relay baseline"}

// printTables prints one row per path and round, then the medians. The
// ratios in the summary are the median of the per-round ratios (both paths
// measured in the same round, back to back), with their range: on a shared
// machine the load drifts between rounds, and a ratio taken within one round
// cancels most of it.
func printTables(w io.Writer, names []string, conns int, unit string, got map[string][]sample) {
	rounds := len(got[names[0]])
	var bases []string
	for _, b := range peers {
		if _, ok := got[b]; ok {
			bases = append(bases, b)
		}
	}
	header := []string{"path", "conns", unit + "/s", "p50 µs", "p99 µs", "hop CPU µs/" + unit}
	for _, b := range bases {
		header = append(header, "vs "+b)
	}
	for _, b := range bases {
		if b != "direct" {
			header = append(header, "CPU vs "+b)
		}
	}
	cpuCell := func(v float64) string {
		if v <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	// ratios returns path n's per-round ratios to base b, of rate or CPU.
	ratios := func(n, b string, cpu bool) []float64 {
		var v []float64
		for r := range rounds {
			s, t := got[n][r], got[b][r]
			if cpu {
				if s.cpu > 0 && t.cpu > 0 {
					v = append(v, s.cpu/t.cpu)
				}
				continue
			}
			v = append(v, s.rate/t.rate)
		}
		return v
	}
	summary := func(v []float64) string {
		if len(v) == 0 {
			return "-"
		}
		if len(v) == 1 {
			return fmt.Sprintf("%.2f×", v[0])
		}
		return fmt.Sprintf("%.2f× (%.2f–%.2f)", med(v), slices.Min(v), slices.Max(v))
	}
	var notes []string
	if rounds > 1 {
		var rows [][]string
		for r := range rounds {
			for _, n := range names {
				s := got[n][r]
				row := []string{fmt.Sprintf("%s (round %d)", n, r+1), fmt.Sprint(conns), fmt.Sprintf("%.0f", s.rate),
					fmt.Sprint(s.p50.Microseconds()), fmt.Sprint(s.p99.Microseconds()), cpuCell(s.cpu)}
				for _, b := range bases {
					row = append(row, fmt.Sprintf("%.2f×", s.rate/got[b][r].rate))
				}
				for _, b := range bases {
					if b == "direct" {
						continue
					}
					if t := got[b][r]; s.cpu > 0 && t.cpu > 0 {
						row = append(row, fmt.Sprintf("%.2f×", s.cpu/t.cpu))
					} else {
						row = append(row, "-")
					}
				}
				rows = append(rows, row)
				if s.note != "" {
					notes = append(notes, fmt.Sprintf("%s, round %d: %s", n, r+1, s.note))
				}
			}
		}
		fmt.Fprintln(w, "per round:")
		printAligned(w, header, rows)
		fmt.Fprintf(w, "\nsummary of %d rounds: rates, latencies and CPU are medians; ratios are the median of the per-round ratios (min–max over rounds)\n", rounds)
	}
	var rows [][]string
	for _, n := range names {
		s := median(got[n])
		row := []string{n, fmt.Sprint(conns), fmt.Sprintf("%.0f", s.rate),
			fmt.Sprint(s.p50.Microseconds()), fmt.Sprint(s.p99.Microseconds()), cpuCell(s.cpu)}
		for _, b := range bases {
			row = append(row, summary(ratios(n, b, false)))
		}
		for _, b := range bases {
			if b != "direct" {
				row = append(row, summary(ratios(n, b, true)))
			}
		}
		rows = append(rows, row)
		if rounds == 1 && got[n][0].note != "" {
			notes = append(notes, n+": "+got[n][0].note)
		}
	}
	printAligned(w, header, rows)
	for _, n := range notes {
		fmt.Fprintln(w, "note:", n)
	}
	fmt.Fprintf(w, "hop CPU: user+system CPU time of the hop process (nginx: master and workers) over the window, per %s\n", unit)
}

func printAligned(w io.Writer, header []string, rows [][]string) {
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
