// Command chaos starts a real ringcast cluster, drives it with clients while
// a nemesis kills, pauses and drains its processes, and checks what every
// client received against what was acknowledged. See "Chaos" in the top-level README.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/proc"
)

func main() {
	proc.Main("chaos", func(ctx context.Context, args []string, _ func(string) string, _ io.Writer) error {
		return run(ctx, args, os.Stdout)
	})
}

// config is a scenario, from the command line.
type config struct {
	Nodes        int           `json:"nodes"`
	Balancers    int           `json:"balancers"`
	Clients      int           `json:"clients"`
	Channels     int           `json:"channels"`
	Rate         float64       `json:"rate"`
	Duration     time.Duration `json:"-"`
	FaultEvery   time.Duration `json:"-"`
	Faults       []string      `json:"faults"`
	Bridge       string        `json:"bridge"`
	History      int           `json:"history"`
	Seed         uint64        `json:"seed"`
	MinAlive     int           `json:"min_alive"`
	Settle       time.Duration `json:"-"`
	Report       string        `json:"-"`
	Logs         string        `json:"-"`
	Verbose      bool          `json:"-"`
	Net          bool          `json:"net"`
	BalancerArgs []string      `json:"balancer_args,omitempty"`
	Args         []string      `json:"args"` // the scenario's flags, seed included
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&c.Nodes, "nodes", 3, "node processes")
	fs.IntVar(&c.Balancers, "balancers", 1, "balancer processes; clients and publishers spread over them")
	fs.IntVar(&c.Clients, "clients", 100, "subscribing clients, each on two channels")
	fs.IntVar(&c.Channels, "channels", 4, "channels")
	fs.Float64Var(&c.Rate, "rate", 50, "publishes per second, over all publishers (direct sends: a tenth of it)")
	fs.DurationVar(&c.Duration, "duration", 60*time.Second, "how long the load and the faults run")
	fs.DurationVar(&c.FaultEvery, "fault-every", 10*time.Second, "one fault every this long")
	faults := fs.String("faults", strings.Join(defaultFaults, ","), "fault kinds to draw from: kill,pause,term,balancer; redis (with a Redis -bridge); partition,cut-balancer (with -net, the default there); empty: none")
	fs.StringVar(&c.Bridge, "bridge", bridgeMesh, "bridge between nodes: mesh | redis (starts one redis-server) | cluster (a Redis Cluster of 3 primaries and 3 replicas) | sentinel (a primary, a replica and redis-sentinel)")
	fs.IntVar(&c.History, "history", 0, "history per channel on the nodes (-history-size; needs a Redis -bridge); 0 = off: at-most-once")
	fs.Uint64Var(&c.Seed, "seed", 0, "seed of the fault schedule; 0 = random (printed, to reproduce)")
	fs.IntVar(&c.MinAlive, "min-alive", 2, "nodes that are never faulted at the same time")
	fs.DurationVar(&c.Settle, "settle", 10*time.Second, "after the load, how long the cluster gets to converge")
	fs.StringVar(&c.Report, "report", "", "write the JSON report to this file")
	fs.StringVar(&c.Logs, "logs", "", "directory for process logs (default: a new temp dir)")
	fs.BoolVar(&c.Verbose, "v", false, "print the schedule and a cluster sample every second")
	balancerArgs := fs.String("balancer-args", "", "extra balancer flags, space-separated (e.g. \"-relay-shards 2\")")
	fs.BoolVar(&c.Net, "net", false, "run each process in a network namespace and add the faults partition,cut-balancer (root, nftables)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *faults != "" {
		c.Faults = strings.Split(*faults, ",")
	}
	c.BalancerArgs = strings.Fields(*balancerArgs)
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "faults" })
	if c.Net && !explicit {
		c.Faults = append(c.Faults, netFaults...)
	}
	for _, k := range c.Faults {
		if !slices.Contains(faultKinds, k) {
			return c, fmt.Errorf("-faults: unknown kind %q, want some of %s", k, strings.Join(faultKinds, ","))
		}
	}
	switch {
	case c.Nodes < 1 || c.Balancers < 1 || c.Clients < 1 || c.Channels < 1:
		return c, errors.New("-nodes, -balancers, -clients and -channels must be at least 1")
	case c.Rate <= 0 || c.Duration <= 0 || c.FaultEvery <= 0 || c.Settle < 0:
		return c, errors.New("-rate, -duration and -fault-every must be positive, -settle not negative")
	case !slices.Contains(bridgeKinds, c.Bridge):
		return c, fmt.Errorf("-bridge %q: want one of %s", c.Bridge, strings.Join(bridgeKinds, ", "))
	case c.History < 0 || c.MinAlive < 0:
		return c, errors.New("-history and -min-alive must not be negative")
	case c.History > 0 && c.Bridge == bridgeMesh:
		return c, errors.New("-history needs a Redis -bridge: the mesh keeps no history")
	case slices.Contains(c.Faults, faultRedis) && c.Bridge == bridgeMesh:
		return c, errors.New("-faults redis needs a Redis -bridge")
	case c.Net && (c.Bridge == bridgeCluster || c.Bridge == bridgeSentinel):
		return c, fmt.Errorf("-bridge %s binds to 127.0.0.1 only: not with -net", c.Bridge)
	case !c.Net && slices.ContainsFunc(c.Faults, func(k string) bool { return slices.Contains(netFaults, k) }):
		return c, fmt.Errorf("-faults %s need -net", strings.Join(netFaults, ","))
	}
	if c.Net {
		if err := clustertest.NetSupported(); err != nil {
			return c, fmt.Errorf("-net: %w", err)
		}
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64N(1<<31) + 1
	}
	fs.Set("seed", fmt.Sprint(c.Seed))
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "report" && f.Name != "logs" && f.Name != "v" {
			c.Args = append(c.Args, "-"+f.Name+"="+f.Value.String())
		}
	})
	return c, nil
}

// run parses args, runs the scenario, prints the summary and writes the
// report; it fails when an invariant broke.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	rep, err := scenario(ctx, cfg, stdout)
	if err != nil {
		return err
	}
	rep.print(stdout)
	if cfg.Report != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		if err := os.WriteFile(cfg.Report, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	if !rep.OK {
		return fmt.Errorf("invariants violated: %s", strings.Join(rep.Violations, "; "))
	}
	return nil
}
