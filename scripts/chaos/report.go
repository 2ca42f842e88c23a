package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// report is what a run prints and writes with -report.
type report struct {
	Config    config         `json:"config"`
	LogDir    string         `json:"log_dir"`
	Faults    []faultEntry   `json:"faults"`
	Publishes map[string]int `json:"publishes"` // by outcome
	Sends     map[string]int `json:"sends"`     // by outcome
	result
	Disconnects map[string]int `json:"disconnects"` // why client sessions ended
	Stranded    []string       `json:"stranded"`
	Disagree    []string       `json:"owner_disagreements"`
	Ghosts      map[string]int `json:"ghost_sessions"`
	Unreachable []string       `json:"unreachable"`
	SettledS    float64        `json:"settled_s"` // from the end of the load until every client sat subscribed on its owner; 0: never
	Timeline    []sample       `json:"timeline"`
	Violations  []string       `json:"violations"`
	OK          bool           `json:"ok"`
}

type faultEntry struct {
	fault
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
	*failover
}

func newReport(cfg config, logs string, h *history, res result, fin final, tl []sample) *report {
	reasons := map[string]int{}
	for _, c := range h.Clients {
		for _, s := range c.Sessions {
			if s.End != open {
				reasons[s.Reason]++
			}
		}
	}
	r := &report{
		Config: cfg, LogDir: logs, result: res, Publishes: outcomes(h.Publishes), Sends: outcomes(h.Sends),
		Disconnects: reasons, Stranded: fin.Stranded, Disagree: fin.Disagree, Ghosts: fin.Ghosts,
		Unreachable: fin.Unreachable, SettledS: fin.SettledS, Timeline: tl,
	}
	for i, f := range h.Faults {
		r.Faults = append(r.Faults, faultEntry{fault: f, StartS: round(f.Start.Seconds()), EndS: round(f.End.Seconds()), failover: res.PerFault[i]})
	}
	r.Violations = res.violations()
	for _, x := range []struct {
		what string
		n    int
	}{{"stranded clients", len(fin.Stranded)}, {"owner disagreements", len(fin.Disagree)}, {"ghost sessions", sum(fin.Ghosts)}, {"unreachable processes", len(fin.Unreachable)}} {
		if x.n > 0 {
			r.Violations = append(r.Violations, fmt.Sprintf("%s: %d", x.what, x.n))
		}
	}
	r.OK = len(r.Violations) == 0
	return r
}

func outcomes(ops []op) map[string]int {
	m := map[string]int{}
	for _, o := range ops {
		m[o.Status]++
	}
	return m
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func round(x float64) float64 { return float64(int64(x*10)) / 10 }

// print writes the human-readable summary.
func (r *report) print(w io.Writer) {
	c := r.Config
	mode := "history off: at-most-once, losses across faults are allowed"
	if c.History > 0 {
		mode = fmt.Sprintf("history %d: every acknowledged message must arrive or be reported recovered:false", c.History)
	}
	fmt.Fprintf(w, "\nringcast chaos: %s bridge, %s; %d nodes, %d balancer(s), %d clients on %d channels, %.0f publishes/s for %v, seed %d\n",
		c.Bridge, mode, c.Nodes, c.Balancers, c.Clients, c.Channels, c.Rate, c.Duration, c.Seed)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "\nfaults")
	fmt.Fprintln(tw, "at\tkind\ttarget\thealed\taffected\tresubscribed p50\tp99\tmax\tnever\tlink end p99\twelcome p99\t")
	for _, f := range r.Faults {
		note := f.Note
		if rd := f.Readiness; rd != nil {
			note += fmt.Sprintf("; /readyz 503 after %s, 200 again after %s; publishes meanwhile: %s",
				msOrNever(rd.NotReadyMS), msOrNever(rd.ReadyMS), counts(f.failover.Outage))
		}
		fmt.Fprintf(tw, "%.1fs\t%s\t%s\t%.1fs\t%s  %s\n", f.StartS, f.Kind, f.Target, f.EndS, f.failover.row(), note)
	}
	for _, k := range append(slices.Clone(faultKinds), "all") {
		if fo := r.Failover[k]; fo != nil && fo.Faults > 0 {
			fmt.Fprintf(tw, "\t%s ×%d\t\t\t%s\n", k, fo.Faults, fo.row())
		}
	}
	tw.Flush()
	for _, f := range r.Faults {
		if f.failover != nil && f.CPU != nil {
			fmt.Fprintf(w, "recovery CPU, %.1fs %s %s: %s\n", f.StartS, f.Kind, f.Target, f.CPU)
		}
	}

	fmt.Fprintf(w, "\npublishes %s; direct sends %s\n", outcomeLine(r.Publishes), outcomeLine(r.Sends))
	fmt.Fprintln(w, "\ndeliveries (acknowledged message × subscribed client)")
	fmt.Fprintln(tw, "\tmessages\tdirects\t")
	for _, row := range []struct {
		name string
		f    func(t tally) int
	}{
		{"expected", func(t tally) int { return t.Expected }},
		{"delivered", func(t tally) int { return t.Delivered }},
		{"lost_allowed (at-most-once)", func(t tally) int { return t.LostAllowed }},
		{"lost_told (recovered:false)", func(t tally) int { return t.LostTold }},
		{"LOST", func(t tally) int { return t.Lost }},
		{"DUPLICATED", func(t tally) int { return t.Duplicated }},
		{"SENT TWICE (on the wire)", func(t tally) int { return t.WireRepeated }},
		{"OUT OF ORDER", func(t tally) int { return t.OutOfOrder }},
		{"UNEXPECTED", func(t tally) int { return t.Unexpected }},
		{"from failed attempts", func(t tally) int { return t.Indeterminate }},
	} {
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", row.name, row.f(r.Messages), row.f(r.Directs))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nconnections per node: relayed by the balancers (held by the node when different); x = dead, ? = unknown")
	if len(r.Timeline) > 0 {
		nodes := slices.Sorted(maps.Keys(r.Timeline[0].Nodes))
		fmt.Fprintf(tw, "t\t%s\t\n", strings.Join(nodes, "\t"))
		step := max(1, len(r.Timeline)/16)
		for i, s := range r.Timeline {
			if i%step != 0 && i != len(r.Timeline)-1 {
				continue
			}
			fmt.Fprintf(tw, "%.0fs", s.T)
			for _, n := range nodes {
				fmt.Fprintf(tw, "\t%s", s.Nodes[n].cell())
			}
			if s.ViewsDiffer {
				fmt.Fprint(tw, "\tbalancers differ")
			}
			fmt.Fprintln(tw, "\t")
		}
		tw.Flush()
	}

	fmt.Fprintf(w, "\nclients: reconnects p50 %.0f, p99 %.0f, max %.0f, total %.0f; drained more than once %d; session ends: %s\n",
		r.Reconnects.P50, r.Reconnects.P99, r.Reconnects.Max, r.Reconnects.Total, r.DrainedAgain, counts(r.Disconnects))
	if r.Unprovoked > 0 {
		fmt.Fprintf(w, "warning: %d sessions cut with no fault on their node or balancer and no request to move, e.g.\n", r.Unprovoked)
		for _, s := range first(r.UnprovokedExamples, 5) {
			fmt.Fprintln(w, "  "+s)
		}
	}
	settled := fmt.Sprintf("settled %.1fs after the load", r.SettledS)
	if r.SettledS == 0 {
		settled = fmt.Sprintf("did not settle within %v", r.Config.Settle)
	}
	fmt.Fprintf(w, "%s: %d stranded, %d owner disagreements, %d ghost sessions, %d unreachable\n",
		settled, len(r.Stranded), len(r.Disagree), sum(r.Ghosts), len(r.Unreachable))
	for _, l := range [][]string{first(r.Stranded, 5), first(r.Disagree, 5), r.Examples} {
		for _, s := range l {
			fmt.Fprintln(w, "  "+s)
		}
	}
	if r.OK {
		fmt.Fprintln(w, "\nOK: every invariant held")
	} else {
		fmt.Fprintf(w, "\nVIOLATED: %s (reproduce: go run ./scripts/chaos %s)\n", strings.Join(r.Violations, "; "), strings.Join(c.Args, " "))
	}
}

func (fo *failover) row() string {
	s := fmt.Sprintf("%d\t%s\t%s\t%s\t%d\t%s\t%s\t", fo.Affected, ms(fo.P50MS), ms(fo.P99MS), ms(fo.MaxMS), fo.Never, ms(fo.EndP99MS), ms(fo.WelcomeP99MS))
	if fo.Dropped > 0 {
		s += fmt.Sprintf("  %d dropped without a drain request", fo.Dropped)
	}
	return s
}

func (n *nodeSample) cell() string {
	s := fmt.Sprint(n.Relayed)
	if n.Held >= 0 && n.Held != n.Relayed {
		s += fmt.Sprintf(" (%d)", n.Held)
	}
	switch n.State {
	case "alive":
	case "":
		s += " ?"
	default:
		s += " x"
	}
	return s
}

// msOrNever is ms for a readiness time, "never" for -1.
func msOrNever(v float64) string {
	if v < 0 {
		return "never"
	}
	return ms(v)
}

func ms(v float64) string {
	return (time.Duration(v) * time.Millisecond).Round(time.Millisecond).String()
}

func outcomeLine(m map[string]int) string {
	return fmt.Sprintf("%d: %s", sum(m), counts(m))
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }
