package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// clustertest's shared HTTP client keeps idle keep-alive connections.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
}

// scenarioReport is what the scenario tests read of a report.
type scenarioReport struct {
	OK         bool     `json:"ok"`
	Violations []string `json:"violations"`
	Faults     []struct {
		Kind      string         `json:"kind"`
		Note      string         `json:"note"`
		Readiness *readiness     `json:"readiness"`
		Outage    map[string]int `json:"outage_publishes"`
	} `json:"faults"`
	Messages  tally          `json:"messages"`
	Publishes map[string]int `json:"publishes"`
}

// runScenario runs the scenario of args, fails the test unless every
// invariant held, and returns its report.
func runScenario(t *testing.T, args ...string) scenarioReport {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "report.json")
	args = append(args, "-report", path, "-logs", filepath.Join(dir, "logs"))
	var out bytes.Buffer
	err := run(context.Background(), args, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatalf("run %s: %v", strings.Join(args, " "), err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep scenarioReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || len(rep.Violations) > 0 {
		t.Errorf("report ok = %v, violations %v", rep.OK, rep.Violations)
	}
	return rep
}

// TestShortScenario runs a short chaos scenario against real processes and
// requires every invariant to hold.
func TestShortScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster of processes for half a minute")
	}
	// Seed 110 draws one fault of each kind: kill, balancer, term, pause.
	rep := runScenario(t, "-nodes", "3", "-clients", "60", "-channels", "4", "-rate", "40", "-duration", "36s",
		"-fault-every", "7s", "-settle", "20s", "-seed", "110")
	kinds := map[string]bool{}
	for _, f := range rep.Faults {
		kinds[f.Kind] = true
	}
	if len(kinds) != len(defaultFaults) {
		t.Errorf("faults injected %+v, want one of each kind %v", rep.Faults, defaultFaults)
	}
	if rep.Messages.Delivered == 0 || rep.Messages.Delivered < rep.Messages.Expected*9/10 {
		t.Errorf("delivered %d of %d expected messages, want at least 90%%", rep.Messages.Delivered, rep.Messages.Expected)
	}
}

// TestRedisPrimaryKilled runs nodes with history on a Redis Cluster (3
// primaries, 3 replicas) and on Sentinel while the nemesis kills the
// primary of a channel: every invariant holds (no acknowledged message
// lost without recovered:false), each kill shows in /readyz and heals,
// and every publish that failed meanwhile failed as bridge_unavailable.
func TestRedisPrimaryKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and a cluster of processes for half a minute")
	}
	// A fault heals once the replica has taken over and the killed primary
	// rejoined (5–10 s here): the next one comes after it.
	for _, tc := range []struct {
		bridge, duration, every string
		faults                  int
	}{
		{bridgeCluster, "32s", "14s", 2}, // the primaries of chaos-0 and chaos-1
		{bridgeSentinel, "16s", "8s", 1},
	} {
		t.Run(tc.bridge, func(t *testing.T) {
			rep := runScenario(t, "-bridge", tc.bridge, "-faults", faultRedis, "-history", "100", "-nodes", "2",
				"-clients", "30", "-channels", "4", "-rate", "40", "-duration", tc.duration, "-fault-every", tc.every,
				"-settle", "20s", "-seed", "1")
			if len(rep.Faults) != tc.faults {
				t.Errorf("faults injected %+v, want %d primaries killed", rep.Faults, tc.faults)
			}
			for _, f := range rep.Faults {
				rd := f.Readiness
				if f.Kind != faultRedis || rd == nil || rd.NotReadyMS < 0 || rd.ReadyMS < 0 {
					t.Errorf("fault %+v: want a primary killed, /readyz 503 and then 200 again", f)
					continue
				}
				if f.Outage[statusUnavailable] == 0 || f.Outage[statusFailed] > 0 {
					t.Errorf("%s: publishes during the outage %v, want some %s and none %s", f.Note, f.Outage, statusUnavailable, statusFailed)
				}
				t.Logf("%s: not ready after %.0f ms, ready again after %.0f ms, publishes meanwhile %v", f.Note, rd.NotReadyMS, rd.ReadyMS, f.Outage)
			}
			if rep.Messages.Delivered == 0 || rep.Messages.Lost > 0 {
				t.Errorf("messages %+v: want deliveries and no loss untold", rep.Messages)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	s := time.Second
	yes, no := true, false
	// c1 is on n1 throughout; c2 is on n2 until 10 s, back at 12 s.
	c1 := func() clientLog {
		return clientLog{ID: "c1", Balancer: "b1", Channels: []string{"a"},
			Sessions: []session{{Node: "n1", Welcome: 0, End: open, Subs: map[string]time.Duration{"a": s / 10}}}}
	}
	c2 := func() clientLog {
		return clientLog{ID: "c2", Balancer: "b1", Channels: []string{"a"}, Sessions: []session{
			{Node: "n2", Welcome: 0, End: 10*s + s/20, Subs: map[string]time.Duration{"a": s / 10}},
			{Node: "n1", Welcome: 12 * s, End: open, Subs: map[string]time.Duration{"a": 12*s + s/10}},
		}}
	}
	// c1got is c1 having received h1/1 at offset off of epoch e.
	c1got := func(off uint64) clientLog {
		c := c1()
		c.Messages = []delivery{{At: 11 * s, Channel: "a", Pub: "h1", Seq: 1, Epoch: "e", Offset: off}}
		return c
	}
	// diedAfterRecovery is c2 with a third session: on n1 from 12 s until
	// 12.2 s, on n3 from 13 s; replies are its subscribed replies after the
	// first one.
	diedAfterRecovery := func(replies ...reply) clientLog {
		c := c2()
		c.Sessions[1].End = 12*s + s/5
		c.Sessions = append(c.Sessions, session{Node: "n3", Welcome: 13 * s, End: open, Subs: map[string]time.Duration{"a": 13*s + s/10}})
		c.Replies = append([]reply{{At: s / 10, Channel: "a"}}, replies...)
		return c
	}
	pub := func(seq int64, at time.Duration, status string) op {
		return op{Pub: "h1", Seq: seq, Channel: "a", Start: at, End: at + s/100, Status: status}
	}
	got := func(ch string, seq int64) delivery { return delivery{Channel: ch, Pub: "h1", Seq: seq} }
	killN2 := []fault{{Kind: faultKill, Target: "n2", Start: 10 * s, End: 11 * s}}
	tests := []struct {
		name  string
		h     history
		check func(r result) (got, want int)
		what  string
	}{
		{"loss across a fault is allowed without history",
			history{Publishes: []op{pub(1, 11*s, statusOK)}, Clients: []clientLog{c2()}, Faults: killN2},
			func(r result) (int, int) { return r.Messages.LostAllowed, 1 }, "lost_allowed"},
		{"loss while connected and quiet breaks even without history",
			history{Publishes: []op{pub(1, 30*s, statusOK)}, Clients: []clientLog{c1()}, Faults: killN2},
			func(r result) (int, int) { return r.Messages.Lost, 1 }, "lost"},
		{"loss while connected inside a fault window is allowed without history",
			history{Publishes: []op{pub(1, 12*s, statusOK)}, Clients: []clientLog{c1()}, Faults: killN2},
			func(r result) (int, int) { return r.Messages.Lost, 0 }, "lost"},
		{"with history, a loss reported recovered:false is told",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{func() clientLog {
				c := c2()
				c.Replies = []reply{{At: s / 10, Channel: "a"}, {At: 12*s + s/10, Channel: "a", Recovered: &no}}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.LostTold, 1 }, "lost_told"},
		{"with history, a loss the resubscription claimed to recover breaks",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{func() clientLog {
				c := c2()
				c.Replies = []reply{{At: s / 10, Channel: "a"}, {At: 12*s + s/10, Channel: "a", Recovered: &yes}}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.Lost, 1 }, "lost"},
		{"recovered, died before the recovered messages came, then told: told",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{c1got(6), diedAfterRecovery(
				reply{At: 12*s + s/10, Channel: "a", Recovered: &yes, Epoch: "e", Offset: 5},
				reply{At: 13*s + s/10, Channel: "a", Recovered: &no, Epoch: "e", Offset: 7})}},
			func(r result) (int, int) { return r.Messages.LostTold*10 + r.Messages.Lost, 10 }, "lost_told×10+lost"},
		{"the same without the message's position: told by the time of the reply",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{diedAfterRecovery(
				reply{At: 12*s + s/10, Channel: "a", Recovered: &yes, Epoch: "e", Offset: 5},
				reply{At: 13*s + s/10, Channel: "a", Recovered: &no, Epoch: "e", Offset: 7})}},
			func(r result) (int, int) { return r.Messages.LostTold*10 + r.Messages.Lost, 10 }, "lost_told×10+lost"},
		{"recovered:false that starts before the message leaves it owed",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{c1got(6), diedAfterRecovery(
				reply{At: 12*s + s/10, Channel: "a", Recovered: &no, Epoch: "e", Offset: 5})}},
			func(r result) (int, int) { return r.Messages.LostTold*10 + r.Messages.Lost, 1 }, "lost_told×10+lost"},
		{"recovered:false in a new epoch tells",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{c1got(6), diedAfterRecovery(
				reply{At: 12*s + s/10, Channel: "a", Recovered: &no, Epoch: "e2", Offset: 1})}},
			func(r result) (int, int) { return r.Messages.LostTold*10 + r.Messages.Lost, 10 }, "lost_told×10+lost"},
		{"recovered:false while the publish was in flight, then a recovery that owed it: lost",
			history{HistoryOn: true, Publishes: []op{pub(1, 11*s, statusOK)}, Faults: killN2, Clients: []clientLog{diedAfterRecovery(
				reply{At: 11*s + s/200, Channel: "a", Recovered: &no, Epoch: "e", Offset: 5},
				reply{At: 13*s + s/10, Channel: "a", Recovered: &yes, Epoch: "e", Offset: 7})}},
			func(r result) (int, int) { return r.Messages.LostTold*10 + r.Messages.Lost, 1 }, "lost_told×10+lost"},
		{"an offset the server sent twice in one subscription is a violation",
			history{HistoryOn: true, Publishes: []op{pub(1, s, statusOK)}, Clients: []clientLog{func() clientLog {
				c := c1got(6)
				c.WireRepeats = []delivery{{Channel: "a", Pub: "h1", Seq: 1, Epoch: "e", Offset: 6}}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.WireRepeated * len(r.violations()), 1 }, "sent twice × violations"},
		{"a second delivery is a duplicate",
			history{Publishes: []op{pub(1, s, statusOK)}, Clients: []clientLog{func() clientLog {
				c := c1()
				c.Messages = []delivery{got("a", 1), got("a", 1)}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.Duplicated, 1 }, "duplicated"},
		{"an earlier acknowledged publish after a later one is out of order",
			history{Publishes: []op{pub(1, s, statusOK), pub(2, 2*s, statusOK)}, Clients: []clientLog{func() clientLog {
				c := c1()
				c.Messages = []delivery{got("a", 2), got("a", 1)}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.OutOfOrder, 1 }, "out_of_order"},
		{"a failed publish may arrive late",
			history{Publishes: []op{pub(1, s, statusFailed), pub(2, 2*s, statusOK)}, Clients: []clientLog{func() clientLog {
				c := c1()
				c.Messages = []delivery{got("a", 2), got("a", 1)}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.OutOfOrder + r.Messages.Unexpected, 0 }, "out_of_order+unexpected"},
		{"data never published is unexpected",
			history{Publishes: []op{pub(1, s, statusNotSent)}, Clients: []clientLog{func() clientLog {
				c := c1()
				c.Messages = []delivery{got("a", 1), {Channel: "a"}, got("b", 7)}
				return c
			}()}},
			func(r result) (int, int) { return r.Messages.Unexpected, 3 }, "unexpected"},
		{"a direct lost while connected and quiet breaks",
			history{Sends: []op{{Pub: "d1", Seq: 1, To: "c1", Start: 20 * s, End: 20 * s, Status: statusOK}}, Clients: []clientLog{c1()}},
			func(r result) (int, int) { return r.Directs.Lost, 1 }, "directs lost"},
		{"a direct answered delivered:false is not expected",
			history{Sends: []op{{Pub: "d1", Seq: 1, To: "c1", Start: 20 * s, End: 20 * s, Status: statusNobody}}, Clients: []clientLog{c1()}},
			func(r result) (int, int) { return r.Directs.Expected + r.Directs.Lost, 0 }, "directs expected+lost"},
		{"a client of the faulted node is affected",
			history{Clients: []clientLog{c1(), c2()}, Faults: killN2},
			func(r result) (int, int) { return r.Failover[faultKill].Affected, 1 }, "affected"},
		{"a session cut with no fault nearby and no request to move is unprovoked",
			history{Clients: []clientLog{{ID: "c3", Balancer: "b1", Sessions: []session{
				{Node: "n2", End: 10*s + s/2, Reason: "eof"},
				{Node: "n1", Welcome: 11 * s, End: 30 * s, Reason: "eof"},
				{Node: "n1", Welcome: 31 * s, End: 40 * s, Reason: "reconnect rebalance"},
				{Node: "n1", Welcome: 41 * s, End: open},
			}}}, Faults: killN2},
			func(r result) (int, int) { return r.Unprovoked, 1 }, "unprovoked"},
		{"a disconnect is the next fault's when it hit first",
			history{Clients: []clientLog{c2()}, Faults: []fault{
				{Kind: faultCutBal, Target: "n2", Start: 5 * s, End: 8 * s},
				{Kind: faultKill, Target: "n2", Start: 10 * s, End: 11 * s}}},
			func(r result) (int, int) {
				return r.Failover[faultCutBal].Affected*10 + r.Failover[faultKill].Affected, 1
			}, "cut×10+kill affected"},
		{"a drained client cut off without a reconnect request is dropped",
			history{Clients: []clientLog{c2(), func() clientLog {
				c := c2()
				c.Sessions[0].Reason = "reconnect drain"
				return c
			}()}, Faults: []fault{{Kind: faultTerm, Target: "n2", Start: 10 * s, End: 11 * s}}},
			func(r result) (int, int) { return r.Failover[faultTerm].Dropped, 1 }, "dropped"},
		{"a client drained twice was moved onto a node that drained before it moved back",
			history{Clients: []clientLog{c1(), {ID: "c4", Balancer: "b1", Sessions: []session{
				{Node: "n1", End: 10 * s, Reason: "reconnect drain"},
				{Node: "n2", Welcome: 10 * s, End: 11 * s, Reason: "reconnect drain"},
				{Node: "n1", Welcome: 11 * s, End: open},
			}}}},
			func(r result) (int, int) { return r.DrainedAgain, 1 }, "drained_again"},
		{"resubscribed is measured from the fault",
			history{Clients: []clientLog{c1(), c2()}, Faults: killN2},
			func(r result) (int, int) { return int(r.Failover[faultKill].MaxMS), 2100 }, "max ms"},
	}
	for _, tc := range tests {
		r := check(&tc.h)
		if got, want := tc.check(r); got != want {
			t.Errorf("%s: %s = %d, want %d (examples %q)", tc.name, tc.what, got, want, r.Examples)
		}
	}
}

func TestPlan(t *testing.T) {
	nodes, balancers := []string{"n1", "n2", "n3"}, []string{"b1", "b2"}
	a := plan(7, time.Minute, 2*time.Second, faultKinds, nodes, balancers, 2)
	if b := plan(7, time.Minute, 2*time.Second, faultKinds, nodes, balancers, 2); !slices.Equal(a, b) {
		t.Fatalf("plan(seed 7) differs between calls:\n%v\n%v", a, b)
	}
	if p := plan(7, time.Minute, time.Second, nil, nodes, balancers, 2); len(p) != 0 {
		t.Errorf("plan without fault kinds = %v, want none", p)
	}
	if len(a) < 10 {
		t.Fatalf("plan has %d faults in a minute at one per 2s, want at least 10", len(a))
	}
	for i, p := range a {
		if end := p.At + p.busyFor(); end > time.Minute {
			t.Errorf("fault %d %+v heals at %v, after the load stops", i, p, end)
		}
		out := map[string]bool{}
		for _, q := range a[:i+1] {
			if q.At <= p.At && p.At < q.At+q.busyFor() {
				if out[q.Target] {
					t.Errorf("fault %d %+v hits %s while it is out", i, p, q.Target)
				}
				out[q.Target] = true
			}
		}
		down := 0
		for _, n := range nodes {
			if out[n] {
				down++
			}
		}
		if len(nodes)-down < 2 {
			t.Errorf("fault %d %+v leaves %d nodes untouched, want min-alive 2", i, p, len(nodes)-down)
		}
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-faults", "kill,explode"},
		{"-faults", "redis"},
		{"-faults", "kill,partition"},
		{"-bridge", "kafka"},
		{"-nodes", "0"},
		{"-rate", "0"},
		{"-history", "-1"},
		{"-history", "10"},
		{"-bridge", "sentinel", "-net"},
		{"extra"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("parseFlags(%q) = nil error, want one", args)
		}
	}
	c, err := parseFlags([]string{"-nodes", "5", "-report", "x.json"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Seed == 0 || !slices.Contains(c.Args, "-nodes=5") || slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "-report") }) {
		t.Errorf("parseFlags: seed %d, args %q: want a drawn seed, -nodes=5 and no -report", c.Seed, c.Args)
	}
}
