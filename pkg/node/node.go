// Package node is the node process: it wires sessions, hub, bridge and gossip,
// runs their lifecycle, and applies membership policy (rebalance, drain, fence).
package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/bridges"
	"github.com/ringcast/ringcast/pkg/bridge/mesh"
	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/gate"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/hub"
	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/session"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Config configures a node.
type Config struct {
	ID          string        // node id, unique in the cluster; required
	Addr        string        // HTTP/WebSocket listen address; default 127.0.0.1:9001 (port 0 = any)
	Advertise   string        // WebSocket address others dial when it differs from Addr
	HealthAddr  string        // a second listener for /healthz, /readyz and /metrics only, apart from client traffic; empty = none
	Gossip      string        // gossip bind address; default 127.0.0.1:7001
	GossipAdv   string        // gossip address others use when it differs from Gossip
	Join        []string      // gossip seeds
	Bridge      string        // "mesh" (default), redis://host:port[/db], redis+sentinel://host:port,…/master[/db] or redis+cluster://host:port,…
	ClusterKey  string        // gossip encryption + mesh link auth; empty = off (loopback gossip only, unless Insecure)
	Insecure    bool          // allow an open cluster (no ClusterKey) on a non-loopback gossip address
	Detect      string        // failure detection profile: lan (default) | fast
	Warmup      time.Duration // a node that comes back is off the ring this long (doubling per flap); 0 = cluster default 2s, negative = off; same on every process
	HistorySize int           // messages kept per channel; 0 = history off
	HistoryTTL  time.Duration // history kept this long after a channel's last publish; default 2m (the Redis adapter's)
	Origins     []string      // allowed Origin header values; empty = any

	Heartbeat         time.Duration // heartbeat_ms told to clients; the node closes links silent for 3×; default 10s
	MaxMessage        int           // largest client message summed over fragments, bytes; default 64 KiB
	MaxChannels       int           // channels per connection; default 128
	SendQueue         int           // frames queued per connection before it is closed 4008; default 1024
	SendQueueBytes    int           // bytes queued per connection before it is closed 4008; default 4 MiB
	RequestRate       float64       // messages + control frames per second per connection (burst 2×), more closes 1008; 0 = session default (100)
	MaxUnfinished     int64         // memory node-wide for client messages being read (session.Config), more closes 1013; 0 = session default (16 MiB)
	AssemblyTimeout   time.Duration // one client message must arrive whole within this, else 1008; 0 = session default (10s)
	MaxOutbound       int64         // bytes queued for clients node-wide; past it the slowest are closed 4008 and new work gets 503; 0 = outbound.DefaultMaxOutbound
	MaxLag            time.Duration // a connection whose oldest unwritten frame is older is closed 4008; 0 = session default (5s)
	SendBuffer        int           // SO_SNDBUF of client connections, bytes; 0 = session default (64 KiB), negative = kernel autotuning
	WriteTimeout      time.Duration // a write to a client that takes longer closes it; default 10s
	RequestTimeout    time.Duration // bridge work per request (subscribe, publish); default 5s
	DrainWindow       time.Duration // on shutdown clients are asked to reconnect spread over this; default 5s
	RebalanceRate     int           // clients per second asked to move after a ring change; default 500
	RebalanceSpread   time.Duration // reconnect after_ms is jittered over this; default 1s
	MaxPending        int           // connections being set up at once; more wait PendingWait for a slot, then get HTTP 503 and retry; default 512
	PendingWait       time.Duration // how long a set-up past MaxPending waits for a slot (up to gate.QueueFactor × MaxPending wait); default 250ms, well below a balancer's DialTimeout (1s), which takes a node that has not begun to answer by then for stalled; negative = refused at once
	MaxConnsPerClient int           // connections one client id holds here (tabs, devices); one more gets HTTP 429; default 16
	IdleWait          string        // how idle connections wait: session.IdleEpoll or session.IdleGoroutine; "" = session default
	Auth              auth.Config   // client tokens and the API key; the same on every balancer and node

	// Failover timings. Zero means the default; negative is refused.

	// MoveFloor is the least after_ms of a rebalance reconnect request: time
	// for every balancer to see the ring change this node saw, so the client
	// is routed to its new owner, not back here. Default 300ms (gossip
	// spreads a change in well under that with -detect fast); shorter moves
	// clients sooner but risks a second move when a balancer lags.
	MoveFloor time.Duration
	// SweepAge is how long a client must have sat on a node that does not
	// own it before the periodic sweep (run this often) asks it to move: it
	// landed here while a balancer's view lagged, or its owner was
	// unreachable. Default 3s; shorter converges sooner after such a
	// detour, longer moves fewer clients that are about to move anyway.
	SweepAge time.Duration
	// OwnerProbeTimeout bounds the health check of a client's new owner
	// before clients are asked to move to it (a crashed node not yet
	// declared dead must not attract clients). Default 500ms: a live node
	// answers in a millisecond; longer delays a rebalance pass behind a
	// frozen owner, shorter may skip an owner that is only slow.
	OwnerProbeTimeout time.Duration
	// FenceAfter is the pause (SIGSTOP, a VM freeze, CPU starvation) after
	// which this node closes every session with 1012 at once, since every
	// peer has declared it dead and re-homed its clients meanwhile. Default
	// 0: the latest a peer declares a silent member dead under -detect
	// (cluster.Detection().Latest). A shorter pause, past the earliest a
	// peer may declare it dead (Detection().Earliest: 600ms fast, 5s lan,
	// under 10 processes), fences only if gossip suspected this node or
	// declared it dead meanwhile (cluster.Accused), so a stall gossip did
	// not notice closes nothing.
	// Shorter risks closing sessions after pauses gossip forgave; longer
	// leans on the accusation alone.
	FenceAfter time.Duration
	// CloseGrace bounds how long a connection lives after its close frame
	// was queued. Default 2s (session.Config.CloseGrace).
	CloseGrace time.Duration

	Log      *zap.Logger
	Registry *prometheus.Registry // nil = a fresh one
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	sd := session.DefaultConfig()
	return Config{
		Addr:            "127.0.0.1:9001",
		Gossip:          "127.0.0.1:7001",
		Bridge:          bridges.Mesh,
		HistoryTTL:      bridges.DefaultConfig().HistoryTTL,
		Detect:          "lan",
		Heartbeat:       sd.Heartbeat,
		MaxMessage:      sd.MaxMessage,
		MaxChannels:     hub.DefaultConfig().MaxChannels,
		SendQueue:       sd.SendQueue,
		SendQueueBytes:  sd.SendQueueBytes,
		WriteTimeout:    sd.WriteTimeout,
		RequestTimeout:  sd.RequestTimeout,
		DrainWindow:     5 * time.Second,
		RebalanceRate:   500,
		RebalanceSpread: time.Second,
		MaxPending:      512,
		PendingWait:     250 * time.Millisecond,

		MoveFloor:         300 * time.Millisecond,
		SweepAge:          3 * time.Second,
		OwnerProbeTimeout: 500 * time.Millisecond,
		CloseGrace:        sd.CloseGrace,

		MaxConnsPerClient: sd.MaxConnsPerClient,
	}
}

// LocalConfig is DefaultConfig for node id on loopback: any free ports,
// fast failure detection and a 200 ms drain window. Tests start from it.
func LocalConfig(id string) Config {
	c := DefaultConfig()
	c.ID, c.Addr, c.Gossip, c.Detect = id, "127.0.0.1:0", "127.0.0.1:0", cluster.DetectFast
	c.DrainWindow = 200 * time.Millisecond
	return c
}

func (c *Config) validate() error {
	d := DefaultConfig()
	if c.ID == "" {
		return errors.New("node: -id is required")
	}
	c.Addr, c.Gossip = cmp.Or(c.Addr, d.Addr), cmp.Or(c.Gossip, d.Gossip)
	c.Bridge, c.Detect = cmp.Or(c.Bridge, d.Bridge), cmp.Or(c.Detect, d.Detect)
	if err := errors.Join(
		defaults.Set("Heartbeat", &c.Heartbeat, d.Heartbeat),
		defaults.Set("MaxMessage", &c.MaxMessage, d.MaxMessage),
		defaults.Set("MaxChannels", &c.MaxChannels, d.MaxChannels),
		defaults.Set("SendQueue", &c.SendQueue, d.SendQueue),
		defaults.Set("SendQueueBytes", &c.SendQueueBytes, d.SendQueueBytes),
		defaults.Set("WriteTimeout", &c.WriteTimeout, d.WriteTimeout),
		defaults.Set("RequestTimeout", &c.RequestTimeout, d.RequestTimeout),
		defaults.Set("DrainWindow", &c.DrainWindow, d.DrainWindow),
		defaults.Set("RebalanceRate", &c.RebalanceRate, d.RebalanceRate),
		defaults.Set("RebalanceSpread", &c.RebalanceSpread, d.RebalanceSpread),
		defaults.Set("MaxPending", &c.MaxPending, d.MaxPending),
		defaults.Set("MaxConnsPerClient", &c.MaxConnsPerClient, d.MaxConnsPerClient),
		defaults.Set("MoveFloor", &c.MoveFloor, d.MoveFloor),
		defaults.Set("SweepAge", &c.SweepAge, d.SweepAge),
		defaults.Set("OwnerProbeTimeout", &c.OwnerProbeTimeout, d.OwnerProbeTimeout),
		defaults.Set("CloseGrace", &c.CloseGrace, d.CloseGrace),
		// Zero keeps its meaning here: history off, the bridge's TTL, fence
		// at cluster.Detection's earliest death.
		defaults.Set("HistorySize", &c.HistorySize, 0),
		defaults.Set("HistoryTTL", &c.HistoryTTL, 0),
		defaults.Set("FenceAfter", &c.FenceAfter, 0),
	); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	defaults.SetOrOff(&c.PendingWait, d.PendingWait)
	if err := bridges.Check(c.Bridge, c.HistorySize); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return nil
}

// Server is a running node.
type Server struct {
	cfg     Config
	log     *zap.Logger
	ln      net.Listener
	cluster *cluster.Cluster
	bridge  bridge.Bridge
	mesh    *mesh.Mesh // nil unless the bridge is the mesh
	hub     *hub.Hub
	sess    *session.Upgrader
	reg     *prometheus.Registry
	met     *metrics
	// failover times the resubscription of a dead peer's clients here.
	failover *failover
	http     *http.Server
	probe    *http.Client // health checks of peers
	auth     *auth.Verifier

	wg sync.WaitGroup // connection goroutines
	mu sync.Mutex
	// conns are the connections started and not yet attached to the hub
	// (at most MaxPending): the attached ones are the hub's Sinks, so an
	// idle connection costs no entry here.
	conns    map[*session.Conn]struct{}
	draining atomic.Bool // set under mu (track checks it there); /readyz reads it without
	admit    *gate.Gate  // admission control: a slot per connection being set up

	// health serves the probes on HealthAddr (nil without): its own
	// listener and accept loop, so a backlog of clients never delays them.
	health   *http.Server
	healthLn net.Listener
}

// New binds the node's sockets and wires its parts; Run starts it.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, conns: map[*session.Conn]struct{}{}, reg: cfg.Registry, admit: gate.New(cfg.MaxPending, cfg.PendingWait)}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.met = newMetrics(s, s.reg)
	s.failover = newFailover(cfg.ID)
	s.reg.MustRegister(s.failover.hist)
	var err error
	if s.auth, err = auth.New(cfg.Auth); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	s.ln = ln
	if cfg.HealthAddr != "" {
		if s.healthLn, err = net.Listen("tcp", cfg.HealthAddr); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen %s: %w", cfg.HealthAddr, err)
		}
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	s.cfg.Advertise = adv

	var join []string
	for _, j := range cfg.Join {
		if j = strings.TrimSpace(j); j != "" {
			join = append(join, j)
		}
	}
	recv := bridge.Receiver{
		Deliver:       func(m bridge.Message) { s.hub.Deliver(m) },
		DeliverDirect: func(d bridge.Direct) bool { return s.hub.DeliverDirect(d) },
		Lost:          s.bridgeLost,
	}
	s.bridge, err = bridges.New(bridges.Config{
		Spec: cfg.Bridge, NodeID: cfg.ID, Key: []byte(cfg.ClusterKey), Insecure: cfg.Insecure,
		HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, MaxMessage: cfg.MaxMessage, Registry: s.reg, Log: cfg.Log,
	}, recv)
	s.mesh, _ = s.bridge.(*mesh.Mesh)
	if err == nil {
		s.hub, err = hub.New(hub.Config{MaxChannels: cfg.MaxChannels}, s.bridge, cfg.Log, s.reg)
	}
	if err == nil {
		s.sess, err = session.New(session.Config{
			Node: cfg.ID, Origins: cfg.Origins, Heartbeat: cfg.Heartbeat, MaxMessage: cfg.MaxMessage,
			SendQueue: cfg.SendQueue, SendQueueBytes: cfg.SendQueueBytes,
			WriteTimeout: cfg.WriteTimeout, RequestTimeout: cfg.RequestTimeout,
			RequestRate: cfg.RequestRate, MaxUnfinished: cfg.MaxUnfinished, AssemblyTimeout: cfg.AssemblyTimeout,
			MaxConnsPerClient: cfg.MaxConnsPerClient, CloseGrace: cfg.CloseGrace, IdleWait: cfg.IdleWait,
			MaxOutbound: cfg.MaxOutbound, MaxLag: cfg.MaxLag, SendBuffer: cfg.SendBuffer,
		}, session.Deps{
			Hub: s.hub, WG: &s.wg, Log: cfg.Log, Registry: s.reg, Auth: s.auth,
			RingEpoch: func() uint64 { return s.cluster.View().Epoch },
			Admit:     s.admitConn,
			Release:   s.admit.Leave,
			Attached:  s.forget,
			Done:      s.forget,
			Subscribed: func(c *session.Conn) {
				s.failover.subscribed(c.ClientID(), s.cluster.View(), time.Now())
			},
		})
	}
	ccfg := cluster.DefaultConfig()
	ccfg.ID, ccfg.Role, ccfg.Bind, ccfg.Advertise = cfg.ID, cluster.RoleNode, cfg.Gossip, cfg.GossipAdv
	ccfg.Join, ccfg.WSAddr, ccfg.Detect, ccfg.Log, ccfg.Warmup = join, adv, cfg.Detect, cfg.Log, cfg.Warmup
	if cfg.ClusterKey != "" {
		ccfg.Key = []byte(cfg.ClusterKey)
	}
	ccfg.Insecure = cfg.Insecure
	if err == nil {
		s.cluster, err = cluster.New(ccfg)
	}
	if err != nil {
		ln.Close()
		if s.healthLn != nil {
			s.healthLn.Close()
		}
		return nil, err
	}
	if s.healthLn != nil {
		mux := http.NewServeMux()
		s.probeRoutes(mux)
		s.health = httpapi.NewServer(mux, cfg.Log.Named("health"))
	}

	s.probe = &http.Client{Timeout: time.Second}
	s.http = httpapi.NewServer(s.routes(), cfg.Log.Named("http"))
	return s, nil
}

// Addr is the address the node serves HTTP and WebSockets on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// HealthAddr is the address of the probes' own listener ("" without one).
func (s *Server) HealthAddr() string {
	if s.healthLn == nil {
		return ""
	}
	return s.healthLn.Addr().String()
}

// GossipAddr is the node's bound gossip address.
func (s *Server) GossipAddr() string { return s.cluster.GossipAddr() }

// Cluster exposes the node's membership view.
func (s *Server) Cluster() *cluster.Cluster { return s.cluster }

// Run serves until ctx is done, then drains: leave gossip, stop accepting,
// ask clients to reconnect over DrainWindow, close.
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(context.Background())
	cctx, stopCluster := context.WithCancel(context.Background())
	bctx, stopBridge := context.WithCancel(context.Background())
	g.Go(func() error { return s.cluster.Run(cctx) })
	g.Go(func() error { return s.bridge.Run(bctx) })
	g.Go(func() error { return httpapi.Serve(s.http, s.ln) })
	if s.health != nil {
		g.Go(func() error { return httpapi.Serve(s.health, s.healthLn) })
	}
	wctx, stopWatch := context.WithCancel(context.Background())
	g.Go(func() error { s.watch(wctx); return nil })
	g.Go(func() error {
		t := time.NewTicker(fenceTick)
		defer t.Stop()
		s.fence(wctx, t.C, s.fencing())
		return nil
	})
	s.log.Info("node up", zap.String("id", s.cfg.ID), zap.String("addr", s.Addr()),
		zap.String("gossip", s.GossipAddr()), zap.String("bridge", s.cfg.Bridge),
		zap.Int64("max_outbound", s.sess.MaxOutbound()))

	err := proc.Wait(ctx, gctx, s.log, "node")
	s.log.Info("node draining", zap.Duration("window", s.cfg.DrainWindow))
	if lerr := s.cluster.Leave(time.Second); lerr != nil {
		s.log.Warn("leave gossip", zap.Error(lerr))
	}
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	shctx, cancel := context.WithTimeout(context.Background(), time.Second)
	s.http.Shutdown(shctx)
	cancel()
	if err == nil {
		s.drain(s.cfg.DrainWindow)
	}
	s.closeAll()
	stopWatch()
	s.wg.Wait()
	if s.health != nil {
		// The probes answer (503 draining) until the clients are gone.
		s.health.Close()
	}
	stopBridge()
	stopCluster()
	if gerr := g.Wait(); err == nil && gerr != nil {
		err = fmt.Errorf("node stopped: %w", gerr)
	}
	s.log.Info("node stopped")
	return err
}

// fenceTick is how often the fence looks at the clock: a pause is noticed
// this much after it ended, at the latest.
const fenceTick = 100 * time.Millisecond

// fencing is the fence's policy from Config.FenceAfter and the cluster's
// detection timing.
func (s *Server) fencing() fencing {
	surely := func() time.Duration {
		if s.cfg.FenceAfter > 0 {
			return s.cfg.FenceAfter
		}
		return s.cluster.Detection().Latest
	}
	return fencing{
		surely: surely,
		maybe:  func() time.Duration { return min(s.cluster.Detection().Earliest, surely()) },
		// Peers gossip a death to the dead for a while, and a push-pull
		// sync tells it at the latest: twice the slowest detection, at
		// least 2 s.
		confirm: func() time.Duration { return max(2*s.cluster.Detection().Latest, 2*time.Second) },
		accused: s.cluster.Accused,
	}
}

// track starts c unless the node began draining since Admit let it in.
func (s *Server) track(c *session.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	c.Start(context.Background())
	return true
}

func (s *Server) forget(c *session.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// snapshot returns the node's connections: those being set up, then the
// hub's (each once: one attached meanwhile is in both).
func (s *Server) snapshot() []*session.Conn {
	s.mu.Lock()
	pending := make(map[*session.Conn]bool, len(s.conns))
	for c := range s.conns {
		pending[c] = true
	}
	s.mu.Unlock()
	sinks := s.hub.Sinks()
	out := make([]*session.Conn, 0, len(pending)+len(sinks))
	for c := range pending {
		out = append(out, c)
	}
	for _, sk := range sinks {
		if c, ok := sk.(*session.Conn); ok && !pending[c] {
			out = append(out, c)
		}
	}
	return out
}

// live is how many connections the node holds: being set up or attached.
func (s *Server) live() int {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	return n + s.hub.Len()
}

// bridgeLost runs when the bridge may have dropped messages (its link to
// Redis broke) and carries traffic again: the hub refills every
// subscription with a position from history, in place, and tells those it
// cannot fill recovered:false. Clients of channels without history are
// closed with 1012 so they reconnect and resubscribe instead of silently
// skipping the gap. It runs before the bridge resumes delivery.
func (s *Server) bridgeLost() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	r := s.hub.Repair(ctx)
	s.met.repaired.Add(float64(r.Messages))
	s.log.Warn("bridge lost messages: refilled from history",
		zap.Int("channels", r.Channels), zap.Int("messages", r.Messages),
		zap.Int("told_unrecovered", r.Told), zap.Int("closing", len(r.Close)))
	for _, sk := range r.Close {
		if c, ok := sk.(*session.Conn); ok {
			c.Close(wire.CloseServiceRestart, "bridge reconnected: resubscribe")
		}
	}
}

func (s *Server) closeAll() {
	for _, c := range s.snapshot() {
		c.Close(1001, "node shutting down")
	}
}
