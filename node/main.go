// Command node runs a ringcast node: it terminates client WebSockets, joins
// the cluster over gossip and bridges messages to the other nodes.
package main

import (
	"context"
	"flag"
	"io"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/flagenv"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/logging"
	"github.com/ringcast/ringcast/pkg/node"
	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/session"
)

func main() { proc.Main("node", run) }

func run(ctx context.Context, args []string, env func(string) string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == httpapi.HealthcheckCommand {
		return httpapi.Healthcheck(ctx, args[1:])
	}
	d := node.DefaultConfig()
	sd := session.DefaultConfig()
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := d
	var join, origins flagenv.List
	fs.StringVar(&cfg.ID, "id", "", "node id, unique in the cluster (required)")
	fs.StringVar(&cfg.Addr, "addr", d.Addr, "HTTP and WebSocket listen address (port 0 = any)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "WebSocket address balancers and peers dial, when it differs from -addr")
	fs.StringVar(&cfg.HealthAddr, "health-addr", "", "a second listen address serving only /healthz, /readyz and /metrics, apart from client traffic (empty: none; the main address serves them too)")
	fs.StringVar(&cfg.Gossip, "gossip", d.Gossip, "gossip bind address")
	fs.StringVar(&cfg.GossipAdv, "gossip-advertise", "", "gossip address peers use, when it differs from -gossip")
	fs.Var(&join, "join", "comma-separated gossip seeds: host:port, or dns:NAME:PORT for every address of NAME")
	fs.StringVar(&cfg.Bridge, "bridge", d.Bridge, "message bridge between nodes: mesh | redis://host:port[/db] | redis+sentinel://host:port,…/master[/db] | redis+cluster://host:port,…[?partitions=N]")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", "", "shared secret: encrypts gossip and authenticates mesh links; required when -gossip is not loopback")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow a non-loopback -gossip without -cluster-key: any process reaching it joins the cluster")
	fs.StringVar(&cfg.Detect, "detect", d.Detect, "failure detection profile: lan (5-7 s) | fast (< 1 s, loopback/LAN)")
	fs.DurationVar(&cfg.Warmup, "warmup", cluster.DefaultConfig().Warmup, "a restarted node stays off the ring (warming) this long, doubled per restart within a minute up to 30s (negative: off); use the same value everywhere")
	fs.IntVar(&cfg.HistorySize, "history-size", 0, "messages kept per channel (0 = history off)")
	fs.DurationVar(&cfg.HistoryTTL, "history-ttl", d.HistoryTTL, "how long channel history is kept")
	fs.Var(&origins, "origins", "comma-separated allowed Origin values (empty = any)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", d.Heartbeat, "client heartbeat interval; silent links are closed after 3x")
	fs.IntVar(&cfg.MaxMessage, "max-message", d.MaxMessage, "largest client message in bytes, summed over fragments")
	fs.IntVar(&cfg.MaxChannels, "max-channels", d.MaxChannels, "channels one connection may subscribe to")
	fs.IntVar(&cfg.SendQueue, "send-queue", d.SendQueue, "frames queued per connection before it is closed as slow (4008)")
	fs.Float64Var(&cfg.RequestRate, "request-rate", sd.RequestRate, "messages and control frames per second one connection may send (burst 2x); more closes it 1008")
	fs.Int64Var(&cfg.MaxUnfinished, "max-unfinished", sd.MaxUnfinished, "memory node-wide for client messages still being read (their 4 KiB pages, outside the Go heap, plus 16 KiB per connection in the middle of one at GOGC=100); a frame past it closes its connection 1013")
	fs.DurationVar(&cfg.AssemblyTimeout, "assembly-timeout", sd.AssemblyTimeout, "one client message must arrive whole (all fragments) within this; else close 1008")
	fs.Int64Var(&cfg.MaxOutbound, "max-outbound", sd.MaxOutbound, "bytes queued for clients node-wide; past it the slowest consumers are closed 4008 and new connections and publishes get 503 (default: a quarter of GOMEMLIMIT or the memory cgroup's limit, else 512 MiB)")
	fs.DurationVar(&cfg.MaxLag, "max-lag", sd.MaxLag, "a connection whose oldest unsent frame is older than this is closed 4008 (slow consumer)")
	fs.IntVar(&cfg.SendBuffer, "send-buffer", sd.SendBuffer, "kernel send buffer (SO_SNDBUF) of client connections in bytes, so a slow link's backlog shows as lag (negative: kernel autotuning)")
	fs.DurationVar(&cfg.DrainWindow, "drain", d.DrainWindow, "on SIGTERM, clients are asked to reconnect spread over this window")
	fs.IntVar(&cfg.MaxPending, "max-pending", d.MaxPending, "connections set up at once; more wait -pending-wait for a slot (up to 4 × max-pending waiting), then get HTTP 503 and retry (admission control)")
	fs.DurationVar(&cfg.PendingWait, "pending-wait", d.PendingWait, "how long a connection set-up past -max-pending waits for a slot before HTTP 503; keep it well below the balancers' -dial-timeout, past which they take the node for stalled (negative: refused at once)")
	fs.IntVar(&cfg.RebalanceRate, "rebalance-rate", d.RebalanceRate, "clients per second asked to move after a ring change")
	fs.IntVar(&cfg.MaxConnsPerClient, "max-conns-per-client", d.MaxConnsPerClient, "connections one client id may hold on a node; more get HTTP 429")
	fs.DurationVar(&cfg.MoveFloor, "move-floor", d.MoveFloor, "least delay of a rebalance reconnect request: time for every balancer to see the ring change")
	fs.DurationVar(&cfg.SweepAge, "sweep-age", d.SweepAge, "a client sitting this long on a node that does not own it is asked to move (checked this often)")
	fs.DurationVar(&cfg.OwnerProbeTimeout, "owner-probe-timeout", d.OwnerProbeTimeout, "health check of a new owner before clients are asked to move to it")
	fs.DurationVar(&cfg.FenceAfter, "fence-after", 0, "a pause (SIGSTOP, VM freeze) longer than this closes every session 1012 (0 = the earliest gossip may declare this node dead: 600ms fast, 5s lan)")
	fs.DurationVar(&cfg.CloseGrace, "close-grace", d.CloseGrace, "a connection lives this long after its close frame was queued")
	fs.StringVar(&cfg.IdleWait, "idle-wait", sd.IdleWait, "how idle connections wait for bytes: epoll (a few pollers, no goroutine each; Linux) | goroutine (one each)")
	cfg.Auth.RegisterFlags(fs)
	newLog := logging.Flags(fs)
	if err := flagenv.Parse(fs, args, env); err != nil {
		return err
	}
	cfg.Join, cfg.Origins = join, origins
	log, err := newLog()
	if err != nil {
		return err
	}
	defer log.Sync()
	cfg.Log = log.Named(cfg.ID)
	goredis.SetLogger(redisLog{log.Named(cfg.ID).Named("redis").Sugar()})
	srv, err := node.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// redisLog routes go-redis's process-wide logger (reconnect notices) to zap.
type redisLog struct{ log *zap.SugaredLogger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) { l.log.Infof(format, v...) }
