// Command balancer runs a ringcast balancer: it routes each WebSocket to the
// node that owns its client id and serves the admin API and demo page.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ringcast/ringcast/pkg/balancer"
	"github.com/ringcast/ringcast/pkg/flagenv"
	"github.com/ringcast/ringcast/pkg/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "balancer:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, env func(string) string, stderr io.Writer) error {
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
	fs.Var(&join, "join", "comma-separated gossip seeds (host:port); the first process joins nothing")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", "", "shared secret encrypting gossip; required when -gossip is not loopback")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow a non-loopback -gossip without -cluster-key: any process reaching it joins the cluster")
	fs.StringVar(&cfg.Detect, "detect", d.Detect, "failure detection profile: lan (5-7 s) | fast (< 1 s, loopback/LAN)")
	fs.DurationVar(&cfg.Proxy.DialTimeout, "dial-timeout", d.Proxy.DialTimeout, "bounds dialling a node and the first byte of its answer to the upgrade; longer is a failed dial (next owner)")
	fs.DurationVar(&cfg.Proxy.DownFor, "down-for", d.Proxy.DownFor, "a node whose dial failed is skipped locally for this long")
	logFormat := fs.String("log", "dev", "log format: dev | json")
	logLevel := fs.String("log-level", "info", "log level: debug | info | warn | error")
	if err := flagenv.Parse(fs, args, env); err != nil {
		return err
	}
	cfg.Join = join
	log, err := logging.New(*logFormat, *logLevel)
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
