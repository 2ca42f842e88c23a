package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/logging"
)

// Role is what a process does in the cluster. Only nodes are on the ring.
type Role string

const (
	RoleNode     Role = "node"
	RoleBalancer Role = "balancer"
)

// Detection profiles.
const (
	DetectLAN  = "lan"
	DetectFast = "fast"
)

// maxIDLen bounds a member id: ids travel in gossip, frames and logs.
const maxIDLen = 128

// Config configures a Cluster. Zero values mean the default.
type Config struct {
	ID        string   // unique process id, the memberlist node name; required, 1–128 bytes
	Role      Role     // RoleNode or RoleBalancer; default RoleNode
	Bind      string   // gossip bind host:port, UDP and TCP; port 0 picks a free one; default 0.0.0.0:7946
	Advertise string   // host:port peers should dial when it differs from Bind; default: Bind's address (an interface address when Bind is 0.0.0.0)
	Join      []string // seeds: host:port, or dns:NAME:PORT for every A/AAAA record of NAME (re-resolved by Run); empty for the first process of a cluster
	WSAddr    string   // role node: host:port balancers and peers dial for WebSocket/HTTP; required for nodes, carried in gossip metadata
	// Detect selects failure detection: "lan" (memberlist's LAN defaults, a
	// crashed process is declared dead after 5–7 s, tolerant of slow or lossy
	// networks) or "fast" (200 ms probes, dead in under 1 s on loopback or a
	// quiet LAN, more false suspicions under load). Default "lan".
	Detect string
	Key    []byte // gossip encryption secret of any length (AES-256 key = SHA-256 of it); empty = no encryption
	// Insecure allows gossip without Key on an address that is not loopback.
	// Default false: such a member refuses to start (ErrOpenCluster), as any
	// process that reaches an open gossip port joins the ring and is handed
	// clients.
	Insecure bool
	// RejoinInterval is how often seeds are re-joined while a member is seen
	// dead (heals partitions memberlist does not re-merge), and the cap of
	// the backoff before the first join. Default 5 s (fast: 1 s); each
	// attempt is one TCP exchange per seed.
	RejoinInterval time.Duration
	// Coalesce is how long membership must be quiet before the view is
	// rebuilt; constant churn still yields a view every 5 × Coalesce.
	// Default 100 ms (fast: 20 ms): longer batches more churn into one epoch
	// but delays every ring change.
	Coalesce time.Duration
	// Warmup is how long a node that was restarted (a new process under a
	// known name: killed or stopped, then started again) must be alive
	// before this process puts it back on the ring; it is listed as
	// warming meanwhile. Each restart within FlapWindow doubles it, up to
	// MaxWarmup, so a flapping node does not take its clients back on
	// every flap. A node seen for the first time, or one that comes back
	// as the same process (a false suspicion, a healed partition, a
	// pause), is not held back. Default 2 s: time for a restarted process
	// to settle; longer keeps clients off a shaky node longer, negative: off.
	Warmup time.Duration
	// MaxWarmup caps the doubled warm-up. Default 30 s.
	MaxWarmup time.Duration
	// FlapWindow is how long a restart counts towards the warm-up.
	// Default 60 s.
	FlapWindow time.Duration
	Resolver   Resolver    // resolves dns: seeds; nil = net.DefaultResolver
	Log        *zap.Logger // nil = no logging
}

// DefaultConfig returns the defaults; ID (and WSAddr for a node) must still be set.
func DefaultConfig() Config {
	return Config{
		Role:   RoleNode,
		Bind:   "0.0.0.0:7946", // memberlist's well-known port
		Detect: DetectLAN,
		// RejoinInterval and Coalesce: 0 = the detection profile's default, see Config.
		Warmup:     2 * time.Second,
		MaxWarmup:  30 * time.Second,
		FlapWindow: time.Minute,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Role == "" {
		c.Role = d.Role
	}
	if c.Bind == "" {
		c.Bind = d.Bind
	}
	if c.Detect == "" {
		c.Detect = d.Detect
	}
	fast := c.Detect == DetectFast
	if c.RejoinInterval == 0 {
		c.RejoinInterval = pick(fast, time.Second, 5*time.Second)
	}
	if c.Coalesce == 0 {
		c.Coalesce = pick(fast, 20*time.Millisecond, 100*time.Millisecond)
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Warmup == 0 {
		c.Warmup = d.Warmup
	}
	if c.MaxWarmup <= 0 {
		c.MaxWarmup = max(d.MaxWarmup, c.Warmup)
	}
	if c.FlapWindow <= 0 {
		c.FlapWindow = d.FlapWindow
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return c
}

func pick[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}

func (c Config) validate() error {
	switch {
	case c.ID == "" || len(c.ID) > maxIDLen:
		return fmt.Errorf("cluster id %q: want 1–%d bytes", c.ID, maxIDLen)
	case c.Role != RoleNode && c.Role != RoleBalancer:
		return fmt.Errorf("cluster role %q: want %q or %q", c.Role, RoleNode, RoleBalancer)
	case c.Detect != DetectLAN && c.Detect != DetectFast:
		return fmt.Errorf("detect %q: want %q or %q", c.Detect, DetectLAN, DetectFast)
	case c.RejoinInterval < 0 || c.Coalesce < 0:
		return errors.New("rejoin interval and coalesce must not be negative")
	case c.Role == RoleNode && c.WSAddr == "":
		return errors.New("node websocket address is required")
	}
	if c.WSAddr != "" {
		if _, _, err := net.SplitHostPort(c.WSAddr); err != nil {
			return fmt.Errorf("websocket address %q: %w", c.WSAddr, err)
		}
	}
	if err := validateSeeds(c.Join); err != nil {
		return err
	}
	if len(c.Key) == 0 && !c.Insecure {
		for _, a := range []string{c.Bind, c.Advertise} {
			if a != "" && !loopback(a) {
				return fmt.Errorf("%w: gossip address %s is not loopback", ErrOpenCluster, a)
			}
		}
	}
	return nil
}

// ErrOpenCluster refuses gossip reachable from other hosts without a key.
var ErrOpenCluster = errors.New("an open cluster: set -cluster-key (the same secret on every member), or -insecure to accept any process that reaches the gossip port")

// loopback reports whether hostport's host is a loopback address or
// "localhost". Any other name may resolve anywhere, so it is not.
func loopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// memberlistConfig translates c (validated, with defaults) for memberlist.
func (c Config) memberlistConfig(watchLog ...func(text []byte)) (*memberlist.Config, error) {
	var mc *memberlist.Config
	if c.Detect == DetectFast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.SuspicionMult = 2 // suspicion lasts 2 × max(1, log10 N) probe intervals
		mc.GossipInterval = 50 * time.Millisecond
		mc.RetransmitMult = 4                 // LAN's: the local profile's 2 loses news in small clusters
		mc.PushPullInterval = 5 * time.Second // full state sync, the backstop for lost gossip
		mc.TCPTimeout = 500 * time.Millisecond
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	// A process restarted under the same id on a new address (port 0) is
	// accepted once its previous incarnation has been dead this long.
	mc.DeadNodeReclaimTime = time.Second
	mc.Name = c.ID
	mc.Logger = logging.StdLogger(c.Log.Named("memberlist"), watchLog...)

	host, port, err := resolveHostPort(c.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address %q: %w", c.Bind, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if c.Advertise != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = resolveHostPort(c.Advertise); err != nil {
			return nil, fmt.Errorf("gossip advertise address %q: %w", c.Advertise, err)
		}
	}
	if len(c.Key) > 0 {
		k := sha256.Sum256(c.Key)
		mc.SecretKey = k[:]
	}
	return mc, nil
}

// resolveHostPort splits hostport and resolves a host name to an IP, as
// memberlist binds and advertises IPs only. An empty host is 0.0.0.0.
func resolveHostPort(hostport string) (string, int, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	if host == "" {
		return "0.0.0.0", int(port), nil
	}
	if net.ParseIP(host) != nil {
		return host, int(port), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return "", 0, fmt.Errorf("resolve %s: %w", host, err)
	}
	return ips[0].IP.String(), int(port), nil
}
