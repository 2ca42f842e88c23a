// Package balancer is the balancer process: it follows the ring over gossip, relays
// each WebSocket to its client id's owner node and forwards the HTTP API.
package balancer

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/proxy"
	"github.com/ringcast/ringcast/pkg/ring"
)

// Config configures a balancer.
type Config struct {
	ID         string        // member id in gossip; default "balancer-" + the listen address
	Addr       string        // HTTP/WebSocket listen address; default 127.0.0.1:8080 (port 0 = any)
	Gossip     string        // gossip bind address; default 127.0.0.1:7000
	GossipAdv  string        // gossip address others use when it differs from Gossip
	Join       []string      // gossip seeds; the first process of a cluster joins nothing
	ClusterKey string        // gossip encryption; empty = off (loopback gossip only, unless Insecure)
	Insecure   bool          // allow an open cluster (no ClusterKey) on a non-loopback gossip address
	Detect     string        // failure detection profile: lan (default) | fast
	Warmup     time.Duration // a node that comes back is off the ring this long (doubling per flap); 0 = cluster default 2s, negative = off; same on every process
	Proxy      proxy.Config  // WebSocket relay settings; zero fields take proxy defaults
	APITimeout time.Duration // admin API calls forwarded to nodes; default 5s
	// ProbeInterval is how often the balancer checks, on its own path,
	// each node it may relay to: GET /healthz on the node's HTTP address
	// over one kept-alive connection (see healthProbe). Gossip cannot
	// tell a node cut off from this balancer only. Default 250ms: four
	// small requests a second per node; longer notices a cut later.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one check. Default 300ms: a node answers in a
	// millisecond on a LAN; shorter misses more under load.
	ProbeTimeout time.Duration
	// ProbeMisses is how many checks in a row must fail before the node is
	// unreachable: the balancer closes the relays it holds to it (their
	// clients reconnect at once), routes new clients around it, and
	// publishes it in its gossip metadata so that no node's sweep sends
	// clients back to it; one check that succeeds makes it reachable
	// again. Default 3 (a cut is acted on within about 1.2 s); fewer
	// reacts sooner. A late answer to a request the node's kernel
	// acknowledged is no miss while gossip sees the node alive (a slow
	// node keeps its relays), and a gossip death alone never closes
	// relays: it only makes the next check start at once.
	ProbeMisses int
	Auth        auth.Config // client tokens and the API key; the same on every balancer and node
	// TLSCert and TLSKey (PEM files) serve HTTPS and wss:// on Addr. The
	// pair is re-read when either file changes (checked at most once a
	// second, on a handshake); connections already up are not touched.
	// Empty = plain HTTP.
	TLSCert, TLSKey string

	Log      *zap.Logger
	Registry *prometheus.Registry // nil = a fresh one
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		Addr:       "127.0.0.1:8080",
		Gossip:     "127.0.0.1:7000",
		Detect:     "lan",
		Proxy:      proxy.DefaultConfig(),
		APITimeout: 5 * time.Second,

		ProbeInterval: 250 * time.Millisecond,
		ProbeTimeout:  300 * time.Millisecond,
		ProbeMisses:   3,
	}
}

// LocalConfig is DefaultConfig for a balancer on loopback: any free ports
// and fast failure detection. Tests and clustertest start from it.
func LocalConfig() Config {
	c := DefaultConfig()
	c.Addr, c.Gossip, c.Detect = "127.0.0.1:0", "127.0.0.1:0", cluster.DetectFast
	return c
}

// validate fills zero fields with their defaults and rejects negatives.
func (c *Config) validate() error {
	d := DefaultConfig()
	c.Addr, c.Gossip = cmp.Or(c.Addr, d.Addr), cmp.Or(c.Gossip, d.Gossip)
	if err := errors.Join(
		defaults.Set("APITimeout", &c.APITimeout, d.APITimeout),
		defaults.Set("ProbeInterval", &c.ProbeInterval, d.ProbeInterval),
		defaults.Set("ProbeTimeout", &c.ProbeTimeout, d.ProbeTimeout),
		defaults.Set("ProbeMisses", &c.ProbeMisses, d.ProbeMisses),
	); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return nil
}

// Server is a running balancer.
type Server struct {
	cfg     Config
	log     *zap.Logger
	ln      net.Listener
	cluster *cluster.Cluster
	proxy   *proxy.Proxy
	reg     *prometheus.Registry
	http    *http.Server
	api     *http.Client
	reach   *reach
	met     *metrics
	auth    *auth.Verifier
}

// New binds the balancer's sockets; Run starts it.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, reg: cfg.Registry}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	var tlsCerts *certs
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		if cfg.TLSCert == "" || cfg.TLSKey == "" {
			return nil, errors.New("balancer: -tls-cert and -tls-key go together")
		}
		var err error
		if tlsCerts, err = loadCerts(cfg.TLSCert, cfg.TLSKey, cfg.Log.Named("tls")); err != nil {
			return nil, err
		}
	}
	ln, err := proxy.Listen(context.Background(), cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	s.ln = ln
	if tlsCerts != nil {
		s.ln = tls.NewListener(ln, tlsCerts.tlsConfig())
	}
	if s.cfg.ID == "" {
		s.cfg.ID = "balancer-" + ln.Addr().String()
	}
	if s.auth, err = auth.New(cfg.Auth); err != nil {
		ln.Close()
		return nil, err
	}
	pcfg := cfg.Proxy
	pcfg.Auth = s.auth
	s.proxy, err = proxy.New(pcfg, picker{s}, cfg.Log.Named("proxy"), s.reg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	ccfg := cluster.DefaultConfig()
	ccfg.ID, ccfg.Role, ccfg.Bind, ccfg.Advertise = s.cfg.ID, cluster.RoleBalancer, cfg.Gossip, cfg.GossipAdv
	ccfg.Join, ccfg.Detect, ccfg.Log, ccfg.Warmup = cfg.Join, cfg.Detect, cfg.Log, cfg.Warmup
	if cfg.ClusterKey != "" {
		ccfg.Key = []byte(cfg.ClusterKey)
	}
	ccfg.Insecure = cfg.Insecure
	s.cluster, err = cluster.New(ccfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.met = newMetrics(s, s.reg)
	s.api = &http.Client{
		Timeout: cfg.APITimeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	s.reach = s.newReach()
	s.http = httpapi.NewServer(s.routes(), cfg.Log.Named("http"))
	return s, nil
}

// newReach wires the reachability probes: an unreachable node's relays
// are closed, and the set is published in gossip.
func (s *Server) newReach() *reach {
	return &reach{
		interval: s.cfg.ProbeInterval, timeout: s.cfg.ProbeTimeout, misses: s.cfg.ProbeMisses,
		log:      s.log.Named("reach"),
		newProbe: newHealthProbe,
		changed: func(id string, down bool, set []string) {
			if down {
				if n := s.proxy.CloseNode(id); n > 0 {
					s.log.Info("closed connections of unreachable node", zap.String("node", id), zap.Int("connections", n))
				}
			} else {
				s.proxy.Up(id)
			}
			s.cluster.SetUnreachable(set)
		},
		relays:  func(id string) bool { return s.proxy.NodeConnections(id) > 0 },
		targets: map[string]*target{},
		down:    map[string]bool{},
	}
}

// Addr is the address the balancer serves on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// GossipAddr is the balancer's bound gossip address.
func (s *Server) GossipAddr() string { return s.cluster.GossipAddr() }

// Cluster exposes the balancer's membership view.
func (s *Server) Cluster() *cluster.Cluster { return s.cluster }

// Run serves until ctx is done: then it leaves gossip, stops accepting and
// closes every relayed connection.
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(context.Background())
	cctx, stopCluster := context.WithCancel(context.Background())
	wctx, stopWatch := context.WithCancel(context.Background())
	g.Go(func() error { return s.cluster.Run(cctx) })
	g.Go(func() error { return httpapi.Serve(s.http, s.ln) })
	g.Go(func() error { s.watch(wctx); return nil })
	g.Go(func() error { s.reach.run(wctx); return nil })
	s.log.Info("balancer up", zap.String("id", s.cfg.ID), zap.String("addr", s.Addr()), zap.String("gossip", s.GossipAddr()), zap.Bool("tls", s.cfg.TLSCert != ""))

	err := proc.Wait(ctx, gctx, s.log, "balancer")
	if lerr := s.cluster.Leave(time.Second); lerr != nil {
		s.log.Warn("leave gossip", zap.Error(lerr))
	}
	shctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	s.http.Shutdown(shctx)
	cancel()
	s.proxy.Close()
	s.api.CloseIdleConnections()
	stopWatch()
	stopCluster()
	if gerr := g.Wait(); err == nil && gerr != nil {
		err = fmt.Errorf("balancer stopped: %w", gerr)
	}
	s.log.Info("balancer stopped")
	return err
}

// watch follows membership: it hands every view to the reachability
// probes (which close the relays of nodes this balancer cannot reach), and
// forgets local down marks of nodes that (re)joined.
func (s *Server) watch(ctx context.Context) {
	var prev *ring.Ring
	for {
		changes := s.cluster.Changes()
		v := s.cluster.View()
		s.met.epoch.Set(float64(v.Epoch))
		if v.Ring != nil && v.Ring != prev {
			for _, id := range v.Ring.Members() {
				if prev == nil || !prev.Has(id) {
					s.proxy.Up(id) // (re)joined: a dial that failed before no longer counts
				}
			}
			prev = v.Ring
			if v.Ring.Len() > 1 {
				// Build the rings the fallback needs when one node fails
				// now, not in the middle of its clients' reconnect burst.
				for _, id := range v.Ring.Members() {
					v.Ring.OwnerExcluding("", id)
				}
			}
		}
		s.reach.sync(v.Members)
		select {
		case <-ctx.Done():
			return
		case <-changes:
		}
	}
}

// picker routes a client id to its ring owner.
type picker struct{ s *Server }

// WaitNodes waits until the view has a ring: a balancer that just started
// holds its first upgrades for the moment it takes to learn the ring
// instead of refusing them.
func (p picker) WaitNodes(ctx context.Context) {
	for {
		changes := p.s.cluster.Changes()
		if p.s.cluster.View().Ring != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		}
	}
}

func (p picker) Pick(clientID string, excluded []string) (string, string, error) {
	v := p.s.cluster.View()
	if v.Ring == nil {
		return "", "", ring.ErrNoNodes
	}
	// Route around the nodes this balancer cannot reach.
	id, err := v.Ring.OwnerExcluding(clientID, slices.Concat(excluded, p.s.reach.unreachable())...)
	if err != nil {
		return "", "", err
	}
	m, ok := v.Node(id)
	if !ok || m.Addr == "" {
		return "", "", fmt.Errorf("node %s has no address", id)
	}
	return id, m.Addr, nil
}
