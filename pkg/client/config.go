package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/wire"
)

// defaultHeartbeat applies when neither Config.Heartbeat nor the welcome sets
// one (DESIGN.md §6: heartbeat_ms defaults to 10000).
const defaultHeartbeat = 10 * time.Second

// Config configures a Client. Zero values mean the default.
type Config struct {
	URL      string // ws://host:port/ws; client_id (and token) are added as query parameters
	ClientID string // 1–128 bytes of [A-Za-z0-9_.:@-]
	Token    string // optional static token, sent as the token query parameter
	// TokenFunc, when set, returns the token for each (re)connect and,
	// shortly before the current token's exp, a fresh one sent as a
	// refresh. It may block up to RequestTimeout (ctx says when to give
	// up); an error counts as a failed connect and is retried with
	// backoff. It runs on the Run goroutine.
	TokenFunc   func(ctx context.Context) (string, error)
	DialTimeout time.Duration // bounds TCP connect, handshake and the wait for the welcome
	// MinBackoff and MaxBackoff bound the ceiling of the random sleep
	// before each retry (full jitter): half the time since the link was
	// lost, so a short outage costs a short wait and a long one is retried
	// gently. A Retry-After from the server (a 503 or 429 answer to the
	// upgrade, see RefusedError) is added to the sleep.
	MinBackoff     time.Duration
	MaxBackoff     time.Duration
	Heartbeat      time.Duration // ping interval; the link is dead after 2× with no frame received
	WriteTimeout   time.Duration // deadline of every write
	RequestTimeout time.Duration // how long Publish and Send wait for the ack or error
	MaxMessageSize int           // bytes per incoming message, summed over fragments; larger drops the link
	TLS            *tls.Config   // wss:// only: roots, client certificates; nil = the system roots
	// NetDial, when set, opens the TCP connection (e.g. from a chosen
	// local address); nil = net.Dialer.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	Log     *zap.Logger // nil: no logging

	// Hooks, each optional. They run on the Run goroutine, never concurrently
	// with each other or with subscription handlers, and must not block long.
	OnState            func(State, error)                       // every state change; err says why the link went down
	OnWelcome          func(wire.Frame)                         // each welcome frame
	OnDirect           func(Direct)                             // each direct message
	OnSubscribed       func(wire.Frame)                         // each subscribed frame (recovered, epoch, offset)
	OnMessageFrame     func(wire.Frame)                         // each message frame as it arrived, before duplicates are dropped: for protocol checks
	OnReconnectRequest func(reason string, after time.Duration) // each reconnect frame from the server
}

// DefaultConfig returns the defaults; URL and ClientID must still be set.
func DefaultConfig() Config {
	return Config{
		DialTimeout:    5 * time.Second,        // a hung handshake costs this much; lower fails over faster on lossy links
		MinBackoff:     100 * time.Millisecond, // first retries within this; lower reconnects faster but piles onto a struggling cluster
		MaxBackoff:     20 * time.Second,       // caps the sleep after outages over 40 s; lower retries a dead cluster more often
		Heartbeat:      0,                      // 0: the welcome's heartbeat_ms (10 s by default); lower notices dead links sooner for more traffic
		WriteTimeout:   5 * time.Second,        // a write stuck this long drops the link
		RequestTimeout: 10 * time.Second,       // Publish/Send give up after this; the outcome is then unknown
		MaxMessageSize: 1 << 20,                // 1 MiB; bounds the memory one incoming message can take
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the result.
func (cfg Config) withDefaults() (Config, error) {
	def := DefaultConfig()
	if err := errors.Join(
		defaults.Set("DialTimeout", &cfg.DialTimeout, def.DialTimeout),
		defaults.Set("MinBackoff", &cfg.MinBackoff, def.MinBackoff),
		defaults.Set("MaxBackoff", &cfg.MaxBackoff, def.MaxBackoff),
		defaults.Set("WriteTimeout", &cfg.WriteTimeout, def.WriteTimeout),
		defaults.Set("RequestTimeout", &cfg.RequestTimeout, def.RequestTimeout),
		defaults.Set("Heartbeat", &cfg.Heartbeat, 0), // 0: the welcome's, else defaultHeartbeat
		defaults.Set("MaxMessageSize", &cfg.MaxMessageSize, def.MaxMessageSize),
	); err != nil {
		return cfg, err
	}
	if cfg.MinBackoff > cfg.MaxBackoff {
		return cfg, fmt.Errorf("min backoff %v exceeds max backoff %v", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if err := wire.ValidateClientID(cfg.ClientID); err != nil {
		return cfg, err
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return cfg, nil
}

// dialURL adds client_id to the configured URL; each dial adds its token
// and session (Client.sessionURL).
func (cfg Config) dialURL() (string, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return "", fmt.Errorf("parse url: %w", err)
	}
	if (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return "", fmt.Errorf("url %q: want ws://host:port/ws or wss://", cfg.URL)
	}
	q := u.Query()
	q.Set("client_id", cfg.ClientID)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
