package redis

import (
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Config configures a Bridge.
type Config struct {
	URL         string        // redis://host:port[/db] (rediss:// for TLS); required
	NodeID      string        // this node's id, shown as the Redis client name; required
	HistorySize int           // messages kept per channel; 0 = history off
	HistoryTTL  time.Duration // a channel's history is dropped this long after its last publish; default 2m when HistorySize > 0
	Prefix      string        // prefix of every Redis key and pub/sub channel; default "ringcast:"
	PingEvery   time.Duration // health check and idle subscriber ping interval; an outage shows in Ready within PingEvery+OpTimeout; default 1s
	OpTimeout   time.Duration // bound on one Redis command or pipeline, dial included; default 2s
	QueueLen    int           // publishes and sends waiting for the writer; a full queue fails callers after OpTimeout; default 8192
	Log         *zap.Logger
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		HistoryTTL: 2 * time.Minute,
		Prefix:     "ringcast:",
		PingEvery:  time.Second,
		OpTimeout:  2 * time.Second,
		QueueLen:   8192,
	}
}

// options validates c, fills in its defaults and returns the client options.
func (c *Config) options() (*goredis.Options, error) {
	d := DefaultConfig()
	switch {
	case c.URL == "":
		return nil, errors.New("redis: URL is required")
	case c.NodeID == "":
		return nil, errors.New("redis: NodeID is required")
	case c.HistorySize < 0:
		return nil, fmt.Errorf("redis: HistorySize %d < 0", c.HistorySize)
	case c.HistoryTTL < 0 || c.PingEvery < 0 || c.OpTimeout < 0 || c.QueueLen < 0:
		return nil, errors.New("redis: durations and QueueLen must not be negative")
	}
	if c.HistoryTTL == 0 {
		c.HistoryTTL = d.HistoryTTL
	}
	if c.Prefix == "" {
		c.Prefix = d.Prefix
	}
	if c.PingEvery == 0 {
		c.PingEvery = d.PingEvery
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = d.OpTimeout
	}
	if c.QueueLen == 0 {
		c.QueueLen = d.QueueLen
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	opt, err := goredis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("redis: parse URL: %w", err)
	}
	opt.ClientName = "ringcast-" + c.NodeID
	opt.DialTimeout = c.OpTimeout
	opt.ReadTimeout = c.OpTimeout
	opt.WriteTimeout = c.OpTimeout
	opt.PoolTimeout = c.OpTimeout
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1 // a retried publish script could apply twice
	opt.DisableIndentity = true
	return opt, nil
}
