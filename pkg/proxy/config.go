package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/relay"
)

// Config tunes a Proxy. A zero field means its default.
type Config struct {
	// DialTimeout bounds one attempt on a node: the TCP dial, the forwarded
	// upgrade and the first byte of the node's answer. An attempt that takes
	// longer is a failed dial: the node is marked down and the next owner is
	// tried. Default 1s: a healthy node answers a loopback or LAN upgrade in
	// about a millisecond; a node that accepts TCP but is frozen (SIGSTOP,
	// overload) costs a new client this much before it moves on. Lower
	// falls back sooner but may give up on a node that is only slow.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the rest of the node's answer once its first
	// byte arrived. Default 5s; a node that began answering is not tried
	// again elsewhere: the client gets 502.
	HandshakeTimeout time.Duration
	// MaxAttempts is how many nodes are dialled per client connection. Default
	// 3: one failed owner plus two fallbacks; more only delays the 503.
	MaxAttempts int
	// DownFor is how long a node whose dial failed (or that did not answer the
	// upgrade) is skipped locally, without waiting for gossip. Default 3s: long
	// enough for gossip to confirm a death, short enough that a restarted node
	// gets its clients back soon.
	DownFor time.Duration
	// BufferSize is the relay buffer in bytes: relay.Config.BufferSize, with
	// its default (16 KiB) and trade-off.
	BufferSize int
	// RelayShards is the number of epoll shards relaying links:
	// relay.Config.Shards, with its default (GOMAXPROCS minus one, at
	// least one) and trade-off.
	RelayShards int
	// IdleTimeout closes a relayed connection that moved no bytes in either
	// direction for this long (relay.Config.IdleTimeout). Default 0 = never:
	// the node enforces the WebSocket heartbeat.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to the client or the node, the
	// handshake's and the relay's (relay.Config.WriteTimeout). Default 10s:
	// a peer that takes longer to accept one buffer is treated as dead.
	WriteTimeout time.Duration
	// MaxConnsPerIP bounds the relayed connections of one source address
	// (an IPv4 address or an IPv6 /64); over it an upgrade gets 429 before
	// any node is dialled. Default 2048: an office of 500 people behind one
	// NAT address, each with four tabs open, stays under it. Negative = off.
	MaxConnsPerIP int
	// ConnRatePerIP bounds the new connections per second of one source
	// address (a token bucket with a burst of twice the rate); over it an
	// upgrade gets 429 with the Retry-After of the next token. Default 200:
	// the whole office above reconnects (after a balancer restart) within
	// about 8 s of retries, while one host cannot churn connections faster.
	// Negative = off.
	ConnRatePerIP float64
	// MaxSources bounds the source addresses the per-IP limits keep state
	// for (about 200 bytes each). Idle ones (no connection, a full bucket)
	// are forgotten every 10 s, or at once when the table is full; a new
	// source that still finds it full gets 503 with Retry-After: 1, while
	// known sources are served as before. Default 262,144 (about 50 MiB):
	// raise it on a balancer whose clients come from more addresses at
	// once.
	MaxSources int
	// MaxPending bounds the upgrades being set up at once, all sources
	// together: from admission to the relay's start (token check, dial, the
	// node's answer). One more gets 503 with Retry-After: 1 before any node
	// is dialled, and so does an upgrade no node could take. Default 1024:
	// a loopback or LAN upgrade takes a few milliseconds, so only a balancer
	// that cannot keep up (a fresh one facing every client of its
	// predecessor, or stalled nodes) gets there; clients then come back
	// after a second instead of piling up. Negative = off.
	MaxPending int
	// PendingWait is how long an upgrade past MaxPending waits, in arrival
	// order, for a slot (up to gate.QueueFactor × MaxPending wait; more
	// are refused at once) before its 503. Default 1s: a burst is served
	// at the rate set-ups complete rather than told to come back after
	// Retry-After and a backoff. Negative = refused at once.
	PendingWait time.Duration
	// TrustedProxies may set the client address with X-Forwarded-For: a
	// connection from one of them is counted against the rightmost address
	// in that header that is not itself trusted. Default none: the header
	// is ignored (and replaced towards the node).
	TrustedProxies []netip.Prefix
	// Auth verifies each upgrade's token before any node is dialled; the
	// connection is routed by the verified client id. Nil = auth off: the
	// client_id parameter is taken as given.
	Auth *auth.Verifier
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	r := relay.DefaultConfig()
	return Config{
		DialTimeout:      time.Second,
		HandshakeTimeout: 5 * time.Second,
		MaxAttempts:      3,
		DownFor:          3 * time.Second,
		BufferSize:       r.BufferSize,
		RelayShards:      r.Shards,
		IdleTimeout:      r.IdleTimeout,
		WriteTimeout:     r.WriteTimeout,
		MaxConnsPerIP:    2048,
		ConnRatePerIP:    200,
		MaxSources:       1 << 18,
		MaxPending:       1024,
		PendingWait:      time.Second,
	}
}

// withDefaults fills zero fields with their defaults and rejects negative ones.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if err := errors.Join(
		defaults.Set("DialTimeout", &c.DialTimeout, d.DialTimeout),
		defaults.Set("HandshakeTimeout", &c.HandshakeTimeout, d.HandshakeTimeout),
		defaults.Set("DownFor", &c.DownFor, d.DownFor),
		defaults.Set("IdleTimeout", &c.IdleTimeout, d.IdleTimeout),
		defaults.Set("WriteTimeout", &c.WriteTimeout, d.WriteTimeout),
		defaults.Set("MaxAttempts", &c.MaxAttempts, d.MaxAttempts),
		defaults.Set("BufferSize", &c.BufferSize, d.BufferSize),
		defaults.Set("RelayShards", &c.RelayShards, d.RelayShards),
		defaults.Set("MaxSources", &c.MaxSources, d.MaxSources),
	); err != nil {
		return c, fmt.Errorf("proxy config: %w", err)
	}
	defaults.SetOrOff(&c.MaxConnsPerIP, d.MaxConnsPerIP)
	defaults.SetOrOff(&c.MaxPending, d.MaxPending)
	defaults.SetOrOff(&c.PendingWait, d.PendingWait)
	defaults.SetOrOff(&c.ConnRatePerIP, d.ConnRatePerIP)
	return c, nil
}

// Listen opens the TCP listener for client connections. Accepted sockets
// get no TCP keep-alive (Go's listener sets four socket options on each
// by default): a relayed client that vanished is found by the node's
// heartbeat, which crosses the relay, and an upgrade that never finishes
// by the server's header timeout.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, "tcp", addr)
}
