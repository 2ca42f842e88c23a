// Command restartbench measures how long the clients of a restarted
// balancer take to be back: a local cluster (real binaries), a fleet of Go
// clients (the SDK's default backoff) subscribed through one balancer, the
// balancer SIGKILLed and started again -down later on the same address.
// For each client, "back" is from the kill to its first subscribed reply
// after it; the report gives p50/p99/max, also from the restart and from
// the moment the balancer answered /readyz, and what the fresh balancer
// refused.
//
//	go run ./scripts/restartbench [-clients 1000] [-down 1s] [-rounds 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/testkit"
)

func main() {
	proc.Main("restartbench", func(ctx context.Context, args []string, _ func(string) string, stdout io.Writer) error {
		return run(ctx, args)
	})
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("restartbench", flag.ContinueOnError)
	clients := fs.Int("clients", 1000, "clients, all through the balancer that is restarted")
	down := fs.Duration("down", time.Second, "time between the SIGKILL and the restart")
	rounds := fs.Int("rounds", 3, "restarts, one after another")
	nodes := fs.Int("nodes", 3, "nodes")
	sources := fs.Int("sources", 50, "127.0.0.x source addresses the clients are spread over (real clients come from many addresses; the per-address limits stay on)")
	perIP := fs.Bool("per-ip-limits", true, "keep the balancer's per-address limits (false: -max-conns-per-ip -1 -conn-rate-per-ip -1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o := clustertest.Options{Nodes: *nodes, Balancers: 1}
	if !*perIP {
		o.BalancerArgs = []string{"-max-conns-per-ip", "-1", "-conn-rate-per-ip", "-1"}
	}
	c, err := clustertest.Start(ctx, o)
	if err != nil {
		return err
	}
	defer c.RemoveLogs()
	defer c.Close()
	if err := c.WaitConverged(ctx, *nodes); err != nil {
		return err
	}
	f, err := clustertest.NewFleet(ctx, c.URL(), "rb", *clients, []string{"room"}, func(cfg *client.Config) {
		d := client.DefaultConfig()
		cfg.MinBackoff, cfg.MaxBackoff, cfg.DialTimeout = d.MinBackoff, d.MaxBackoff, d.DialTimeout
		var i int
		fmt.Sscanf(cfg.ClientID, "rb%d", &i)
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%*sources))}
		cfg.NetDial = (&net.Dialer{LocalAddr: local, Timeout: d.DialTimeout}).DialContext
	})
	if err != nil {
		return err
	}
	defer f.Close()
	b := c.Balancers[0]
	fmt.Printf("%d clients through %s, %d nodes, balancer down %v, load %s\n", *clients, b.Addr, *nodes, *down, clustertest.LoadAvg())
	for round := 1; round <= *rounds; round++ {
		// Every link held for longer than the client's stable-link time
		// (3 s), so this restart starts a new outage for each client.
		time.Sleep(4 * time.Second)
		killed := time.Now()
		b.Kill()
		time.Sleep(*down)
		restarted := time.Now()
		if err := b.Start(); err != nil {
			return err
		}
		ready := waitReady(ctx, "http://"+b.Addr+"/readyz")
		err := f.WaitAll(ctx, 60*time.Second, "back after the restart", func(m *clustertest.Member) bool {
			return m.Client.State() == client.StateConnected && m.WelcomedAt().After(killed) && m.SubscribedAt("room").After(m.WelcomedAt())
		})
		if err != nil {
			return err
		}
		var back []time.Duration
		for _, m := range f.Clients {
			back = append(back, m.SubscribedAt("room").Sub(killed))
		}
		slices.Sort(back)
		pct := func(p int) time.Duration { return back[(len(back)-1)*p/100] }
		refused := ""
		for _, reason := range []string{"overloaded", "no_node", "per_ip_rate", "per_ip_conns"} {
			v, err := testkit.Scrape(ctx, "http://"+b.Addr+"/metrics", "ringcast_balancer_connections_refused_total", reason)
			if err != nil {
				v = 0 // a reason never refused has no series
			}
			refused += fmt.Sprintf(" %s %.0f", reason, v)
		}
		fmt.Printf("round %d: back after the kill p50 %v p99 %v max %v | p99 %v after the restart | balancer ready %v after the restart, p99 %v after ready | refused:%s | load %s\n",
			round, pct(50).Round(time.Millisecond), pct(99).Round(time.Millisecond), pct(100).Round(time.Millisecond),
			(pct(99) - restarted.Sub(killed)).Round(time.Millisecond),
			ready.Sub(restarted).Round(time.Millisecond), (pct(99) - ready.Sub(killed)).Round(time.Millisecond),
			refused, clustertest.LoadAvg())
	}
	return nil
}

// waitReady polls url until it answers 200 and returns when it did.
func waitReady(ctx context.Context, url string) time.Time {
	hc := &http.Client{Timeout: 200 * time.Millisecond}
	for ctx.Err() == nil {
		if resp, err := hc.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Now()
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Now()
}
