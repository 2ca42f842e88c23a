// Package session is one client's WebSocket on a node: handshake, read loop,
// limits, heartbeat and requests served through the hub (frames out: pkg/outbound).
package session

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/hub"
	"github.com/ringcast/ringcast/pkg/outbound"
	"github.com/ringcast/ringcast/pkg/park"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Config holds the limits every connection of an Upgrader shares.
type Config struct {
	Node             string        // node id told to clients in the welcome; required
	Origins          []string      // allowed Origin header values; empty = any
	Heartbeat        time.Duration // heartbeat_ms told to clients; a link silent for 3× is closed; default 10s
	MaxMessage       int           // largest client message summed over fragments, bytes; default 64 KiB
	SendQueue        int           // frames queued before the connection is closed 4008; default 1024
	SendQueueBytes   int           // bytes queued before the connection is closed 4008; default 4 MiB
	WriteTimeout     time.Duration // a write to the client that takes longer closes it; default 10s
	RequestTimeout   time.Duration // hub and bridge work per request (attach, subscribe, publish); default 5s
	HandshakeTimeout time.Duration // the WebSocket upgrade's I/O; default 5s
	// AssemblyTimeout bounds reading one client message, from its first
	// frame header to its last byte; past it the connection is closed 1008.
	// Default 10s: 64 KiB over a 64 kbit/s link, while a message trickled a
	// byte at a time cannot hold its buffer for hours.
	AssemblyTimeout time.Duration
	// MaxUnfinished bounds the memory node-wide of client messages still
	// being read: they are read into a region of this size outside the Go
	// heap, and each page they take and each connection in the middle of
	// one (its reader's state and the collector's headroom for it, 16 KiB
	// at GOGC=100) is charged to it (region.go). A frame that would pass
	// it closes its connection 1013 (try again later). Default 16 MiB:
	// about 200 maximum-size messages in flight at once, far above what
	// clients that send whole messages need.
	MaxUnfinished int64
	// RequestRate bounds the messages and control frames one connection
	// may send per second (a token bucket, burst 2×); past it the
	// connection is closed 1008. Default 100: ten times a chatty client.
	RequestRate float64
	// MaxConnsPerClient bounds the connections one client id holds on this
	// node (tabs, devices); one more gets HTTP 429 before the upgrade (a
	// connection that replaces its own session does not count). Default 16:
	// plenty of tabs, while one leaked token cannot pin thousands of sockets.
	MaxConnsPerClient int
	// CloseGrace bounds how long a connection lives after its close frame
	// was queued: time for the writer to flush it and the peer to answer.
	// Default 2s: a client on a slow link still reads the close code
	// (1012, 4009: why to reconnect); shorter frees the socket sooner.
	CloseGrace time.Duration
	// MaxOutbound bounds the bytes queued for clients node-wide (pkg/outbound):
	// past it the slowest consumers are closed 4008 and new work is refused
	// until the total is back under 3/4 of it. Default outbound.DefaultMaxOutbound.
	MaxOutbound int64
	// MaxLag closes a connection 4008 whose oldest unwritten frame is older
	// than this when another frame is queued for it (with none coming, a
	// stuck write ends by WriteTimeout). Default 5s: a client that far
	// behind is better off reconnecting and recovering from history.
	MaxLag time.Duration
	// SendBuffer is the kernel send buffer (SO_SNDBUF) of every connection,
	// bytes, so that a slow link's backlog stays in the queue where MaxLag
	// sees it instead of seconds of it in the kernel. Default 64 KiB: 1 s
	// at 512 kbit/s, 5 MB/s at 100 ms round trip. Negative = the kernel's
	// autotuning (up to 4 MiB).
	SendBuffer int
	// IdleWait is how a connection with nothing to read waits for its
	// next bytes: IdleEpoll parks it on one of GOMAXPROCS epoll pollers
	// (no goroutine, stack, timer or buffer while idle; Linux only, a
	// goroutine elsewhere), IdleGoroutine on a goroutine of its own.
	// Default IdleEpoll.
	IdleWait string
}

// The values of Config.IdleWait.
const (
	IdleGoroutine = "goroutine"
	IdleEpoll     = "epoll"
)

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		Heartbeat:         10 * time.Second,
		MaxMessage:        64 << 10,
		SendQueue:         1024,
		SendQueueBytes:    4 << 20,
		WriteTimeout:      10 * time.Second,
		RequestTimeout:    5 * time.Second,
		HandshakeTimeout:  5 * time.Second,
		AssemblyTimeout:   10 * time.Second,
		MaxUnfinished:     16 << 20,
		RequestRate:       100,
		MaxConnsPerClient: 16,
		CloseGrace:        2 * time.Second,
		MaxOutbound:       maxOutbound,
		MaxLag:            5 * time.Second,
		SendBuffer:        64 << 10,
		IdleWait:          IdleEpoll,
	}
}

// maxOutbound is outbound.DefaultMaxOutbound, read once.
var maxOutbound, _ = outbound.DefaultMaxOutbound()

func (c *Config) validate() error {
	if c.Node == "" {
		return errors.New("session: Node is required")
	}
	d := DefaultConfig()
	if err := errors.Join(
		defaults.Set("Heartbeat", &c.Heartbeat, d.Heartbeat),
		defaults.Set("WriteTimeout", &c.WriteTimeout, d.WriteTimeout),
		defaults.Set("RequestTimeout", &c.RequestTimeout, d.RequestTimeout),
		defaults.Set("HandshakeTimeout", &c.HandshakeTimeout, d.HandshakeTimeout),
		defaults.Set("AssemblyTimeout", &c.AssemblyTimeout, d.AssemblyTimeout),
		defaults.Set("CloseGrace", &c.CloseGrace, d.CloseGrace),
		defaults.Set("MaxLag", &c.MaxLag, d.MaxLag),
		defaults.Set("MaxMessage", &c.MaxMessage, d.MaxMessage),
		defaults.Set("SendQueue", &c.SendQueue, d.SendQueue),
		defaults.Set("SendQueueBytes", &c.SendQueueBytes, d.SendQueueBytes),
		defaults.Set("MaxConnsPerClient", &c.MaxConnsPerClient, d.MaxConnsPerClient),
		defaults.Set("MaxUnfinished", &c.MaxUnfinished, d.MaxUnfinished),
		defaults.Set("RequestRate", &c.RequestRate, d.RequestRate),
		defaults.Set("MaxOutbound", &c.MaxOutbound, d.MaxOutbound),
	); err != nil {
		return fmt.Errorf("session: %w", err)
	}
	if c.SendBuffer == 0 { // negative keeps its meaning: the kernel's autotuning
		c.SendBuffer = d.SendBuffer
	}
	switch c.IdleWait {
	case "":
		c.IdleWait = d.IdleWait
	case IdleGoroutine, IdleEpoll:
	default:
		return fmt.Errorf("session: IdleWait %q is neither %q nor %q", c.IdleWait, IdleEpoll, IdleGoroutine)
	}
	return nil
}

// Deps is what connections need from the node that runs them. The funcs
// are called concurrently from connection goroutines and must not block.
type Deps struct {
	Hub      *hub.Hub              // serves the requests; required
	WG       *sync.WaitGroup       // counts every goroutine a connection runs; the owner waits on it; required
	Log      *zap.Logger           // nil = no logs
	Registry prometheus.Registerer // where the session metrics go; required
	Auth     *auth.Verifier        // verifies each upgrade's token; nil = auth off (client_id as given)

	// RingEpoch is the ring epoch told in the welcome. Nil = 0.
	RingEpoch func() uint64
	// Admit decides, before the upgrade, whether the node takes one more
	// connection; when it returns false it has answered w. Every true is
	// paired with one later call of Release. Nil = always.
	Admit func(w http.ResponseWriter, r *http.Request) bool
	// Release ends the admission Admit granted: the connection is attached
	// to the hub, failed to attach, or failed to upgrade. May be nil.
	Release func()
	// Attached is called once the connection is attached to the hub,
	// before its first request: from then on it is among Hub.Sinks until
	// it is detached, just before Done. May be nil.
	Attached func(*Conn)
	// Done is called once when an upgraded connection is over. May be nil.
	Done func(*Conn)
	// Subscribed is called after each successful subscribe. May be nil.
	Subscribed func(*Conn)
}

// Upgrader turns WebSocket upgrade requests into connections and holds
// what they share. Safe for concurrent use.
type Upgrader struct {
	unfinished atomic.Int64 // bytes charged to MaxUnfinished (limits.go)
	region     *region      // the pages of unfinished client messages (region.go)

	cfg  Config
	rate rateLimit // cfg.RequestRate
	deps Deps
	log  *zap.Logger
	met  *metrics
	out  *outbound.Pool
	idle *park.Set // nil: idle connections wait on goroutines
}

// New checks cfg and deps and registers the session metrics.
func New(cfg Config, deps Deps) (*Upgrader, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if deps.Hub == nil || deps.WG == nil || deps.Registry == nil {
		return nil, errors.New("session: Deps.Hub, Deps.WG and Deps.Registry are required")
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	u := &Upgrader{cfg: cfg, rate: newRateLimit(cfg.RequestRate), deps: deps, log: deps.Log, met: newMetrics(deps.Registry)}
	if cfg.IdleWait == IdleEpoll {
		u.idle = park.New(3*cfg.Heartbeat, deps.WG, deps.Log)
	}
	var err error
	if u.region, err = newRegion(cfg.MaxUnfinished); err != nil {
		return nil, err
	}
	unfinished := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ringcast_node_unfinished_message_bytes",
		Help: "Bytes charged to the node-wide budget of client messages still being read: their pages and a reader allowance (16 KiB at GOGC=100) per connection in the middle of one.",
	}, func() float64 { return float64(u.unfinished.Load()) })
	if err := deps.Registry.Register(unfinished); err != nil {
		return nil, fmt.Errorf("session: register metrics: %w", err)
	}
	if u.out, err = outbound.New(outbound.Config{
		SendQueue: cfg.SendQueue, SendQueueBytes: cfg.SendQueueBytes, MaxOutbound: cfg.MaxOutbound,
		MaxLag: cfg.MaxLag, WriteTimeout: cfg.WriteTimeout, CloseGrace: cfg.CloseGrace, SendBuffer: cfg.SendBuffer,
	}, deps.WG, deps.Registry); err != nil {
		return nil, err
	}
	return u, nil
}

// Overloaded reports whether the node is over its outbound budget and
// shedding: new connections and publishes should be refused meanwhile.
func (u *Upgrader) Overloaded() bool { return u.out.Overloaded() }

// MaxOutbound is the node-wide outbound budget in effect, in bytes.
func (u *Upgrader) MaxOutbound() int64 { return u.out.MaxOutbound() }

// Upgrade checks the handshake (RFC 6455, identity, session, Origin,
// connections of the id), asks Deps.Admit, and upgrades r. It returns nil
// when it refused or failed the request, which it has then answered with
// Connection: close; the caller starts a returned connection with Start or
// turns it away with Reject.
func (u *Upgrader) Upgrade(w http.ResponseWriter, r *http.Request) *Conn {
	// Every refusal ends the connection: the client may already be sending
	// frames behind its request. (A 101 is written on the hijacked
	// connection and does not carry this header.)
	w.Header().Set("Connection", "close")
	if reason := wire.CheckUpgrade(r); reason != "" {
		http.Error(w, reason, http.StatusBadRequest)
		return nil
	}
	// The node verifies the token itself: it never trusts the balancer alone.
	ident, err := u.deps.Auth.Identify(r)
	if err != nil {
		auth.Refuse(w, err)
		return nil
	}
	id := ident.ClientID
	session := r.URL.Query().Get("session")
	if session != "" {
		if err := wire.ValidateSession(session); err != nil {
			httpapi.WriteWireError(w, err)
			return nil
		}
	}
	if len(u.cfg.Origins) > 0 {
		if o := r.Header.Get("Origin"); o != "" && !slices.Contains(u.cfg.Origins, o) {
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return nil
		}
	}
	if u.deps.Admit != nil && !u.deps.Admit(w, r) {
		return nil
	}
	// Counted once admitted: Admit may wait for a slot, and upgrades of
	// one id that waited together must not all pass a count taken before.
	if n := u.conns(id, session); n >= u.cfg.MaxConnsPerClient {
		u.release()
		w.Header().Set("Retry-After", "5")
		httpapi.WriteError(w, wire.CodeTooManyConns, fmt.Sprintf("client %s holds %d connections on this node, the limit is %d", id, n, u.cfg.MaxConnsPerClient))
		return nil
	}
	nc, rw, _, err := ws.HTTPUpgrader{Timeout: u.cfg.HandshakeTimeout}.Upgrade(r, w)
	if err != nil {
		if nc != nil {
			nc.Close() // hijacked: the refusal is written, nothing else will close it
		}
		u.release()
		u.log.Debug("upgrade", zap.Error(err))
		return nil
	}
	// The id is copied: the one parsed from the query is a slice of the
	// request line, which it would keep alive for the connection's life.
	c := &Conn{u: u, id: strings.Clone(id), nc: nc, since: outbound.Clock()}
	if ident.Token || session != "" {
		r := &rareState{session: strings.Clone(session)}
		if ident.Token {
			r.ident.Store(ident)
		}
		c.rare.Store(r)
	}
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		c.buffer(b)
	}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	u.out.Tune(nc)
	forgetAddrs(nc)
	if c.raw != nil && u.idle != nil {
		u.idle.Assign(&c.spot)
	}
	return c
}

// Reject turns away an upgraded connection that was never started: a 1001
// close frame, then the socket is closed. The caller releases its admission.
func (c *Conn) Reject() {
	c.nc.SetWriteDeadline(time.Now().Add(c.u.cfg.WriteTimeout))
	c.nc.Write(ws.CompiledCloseGoingAway)
	c.nc.Close()
}

// conns counts the connections of id here that a new one with session
// would add to: one of the same session is replaced, not added to.
func (u *Upgrader) conns(id, session string) int {
	n := 0
	for _, s := range u.deps.Hub.Conns(id) {
		if c, ok := s.(*Conn); !ok || session == "" || c.Session() != session {
			n++
		}
	}
	return n
}

func (u *Upgrader) release() {
	if u.deps.Release != nil {
		u.deps.Release()
	}
}

type metrics struct {
	in prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		in: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_frames_in_total", Help: "Client messages read.",
		}),
	}
	reg.MustRegister(m.in)
	return m
}
