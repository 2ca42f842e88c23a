// Command balancer runs a ringcast balancer: it routes each WebSocket to the
// node that owns its client id and serves the admin API and demo page.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/ringcast/ringcast/pkg/balancer"
	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/flagenv"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/logging"
	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/proxy"
)

func main() { proc.Main("balancer", run) }

func run(ctx context.Context, args []string, env func(string) string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == httpapi.HealthcheckCommand {
		return httpapi.Healthcheck(ctx, args[1:])
	}
	d := balancer.DefaultConfig()
	fs := flag.NewFlagSet("balancer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := d
	var join flagenv.List
	fs.StringVar(&cfg.ID, "id", "", "member id in gossip (default balancer-<addr>)")
	fs.StringVar(&cfg.Addr, "addr", d.Addr, "HTTP and WebSocket listen address (port 0 = any)")
	fs.StringVar(&cfg.Gossip, "gossip", d.Gossip, "gossip bind address")
	fs.StringVar(&cfg.GossipAdv, "gossip-advertise", "", "gossip address peers use, when it differs from -gossip")
	fs.StringVar(&cfg.GossipAdv, "advertise", "", "alias of -gossip-advertise")
	fs.Var(&join, "join", "comma-separated gossip seeds: host:port, or dns:NAME:PORT for every address of NAME; the first process joins nothing")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", "", "shared secret encrypting gossip; required when -gossip is not loopback")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow a non-loopback -gossip without -cluster-key: any process reaching it joins the cluster")
	fs.StringVar(&cfg.Detect, "detect", d.Detect, "failure detection profile: lan (5-7 s) | fast (< 1 s, loopback/LAN)")
	fs.DurationVar(&cfg.Warmup, "warmup", cluster.DefaultConfig().Warmup, "a restarted node stays off the ring (warming) this long, doubled per restart within a minute up to 30s (negative: off); use the same value everywhere")
	fs.DurationVar(&cfg.Proxy.DialTimeout, "dial-timeout", d.Proxy.DialTimeout, "bounds dialling a node and the first byte of its answer to the upgrade; longer is a failed dial (next owner)")
	fs.DurationVar(&cfg.Proxy.DownFor, "down-for", d.Proxy.DownFor, "a node whose dial failed is skipped locally for this long")
	fs.DurationVar(&cfg.ProbeInterval, "probe-interval", d.ProbeInterval, "how often each node is checked on this balancer's own path (GET /healthz)")
	fs.DurationVar(&cfg.ProbeTimeout, "probe-timeout", d.ProbeTimeout, "bounds one check of a node")
	fs.IntVar(&cfg.ProbeMisses, "probe-misses", d.ProbeMisses, "failed checks in a row that make a node unreachable: its relays are closed and clients routed around it")
	fs.IntVar(&cfg.Proxy.MaxConnsPerIP, "max-conns-per-ip", d.Proxy.MaxConnsPerIP, "connections one source address (IPv4, IPv6 /64) may hold; more get HTTP 429 (-1 = no limit)")
	fs.Float64Var(&cfg.Proxy.ConnRatePerIP, "conn-rate-per-ip", d.Proxy.ConnRatePerIP, "new connections per second per source address, burst 2x; more get HTTP 429 with Retry-After (-1 = no limit)")
	fs.IntVar(&cfg.Proxy.MaxSources, "max-sources", d.Proxy.MaxSources, "source addresses the per-IP limits track at once (about 200 bytes each); a new one past it, after idle ones are forgotten, gets HTTP 503 with Retry-After: 1")
	fs.IntVar(&cfg.Proxy.MaxPending, "max-pending", d.Proxy.MaxPending, "upgrades being set up at once; more wait -pending-wait for a slot (up to 4 × max-pending waiting), then get HTTP 503 with Retry-After: 1 (admission control for reconnect bursts; -1 = no limit)")
	fs.IntVar(&cfg.Proxy.RelayShards, "relay-shards", d.Proxy.RelayShards, "epoll shards relaying links (default: cores minus one, at least one: the least CPU per message below saturation; one per core uses every core once the relay alone saturates them)")
	fs.DurationVar(&cfg.Proxy.PendingWait, "pending-wait", d.Proxy.PendingWait, "how long an upgrade past -max-pending waits for a slot before HTTP 503 (negative: refused at once)")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate (chain) file: serve HTTPS and wss:// on -addr; re-read when it changes")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key file of -tls-cert")
	var trusted flagenv.List
	fs.Var(&trusted, "trusted-proxies", "comma-separated CIDRs or addresses allowed to set the client address with X-Forwarded-For")
	cfg.Auth.RegisterFlags(fs)
	newLog := logging.Flags(fs)
	if err := flagenv.Parse(fs, args, env); err != nil {
		return err
	}
	cfg.Join = join
	var err error
	if cfg.Proxy.TrustedProxies, err = proxy.ParseCIDRs(trusted); err != nil {
		return fmt.Errorf("-trusted-proxies: %w", err)
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	defer log.Sync()
	cfg.Log = log.Named("balancer")
	srv, err := balancer.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
