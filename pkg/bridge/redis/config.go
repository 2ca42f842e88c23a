package redis

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge/redis/topology"
)

// Config configures a Bridge.
type Config struct {
	URL         string                // redis://…, redis+sentinel://… or redis+cluster://… (see topology.IsURL); required
	NodeID      string                // this node's id, shown as the Redis client name; required
	HistorySize int                   // messages kept per channel; 0 = history off
	HistoryTTL  time.Duration         // a channel's history is dropped this long after its last publish; default 2m when HistorySize > 0
	Prefix      string                // prefix of every Redis key and pub/sub channel; default "ringcast:"
	PingEvery   time.Duration         // health check and idle subscriber ping interval; an outage shows in Ready within PingEvery+OpTimeout; default 1s
	OpTimeout   time.Duration         // bound on one Redis command or pipeline, dial included; default 2s
	QueueLen    int                   // publishes and sends waiting for the writer; a full queue fails callers after OpTimeout; default 8192
	MaxMessage  int                   // largest message data accepted from Redis, bytes (the node's -max-message); default 64 KiB
	Registry    prometheus.Registerer // where ringcast_node_bridge_dropped_total goes; nil = nowhere
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
		MaxMessage: 64 << 10,
	}
}

// validate checks c and fills in its defaults.
func (c *Config) validate() error {
	d := DefaultConfig()
	switch {
	case c.URL == "":
		return errors.New("redis: URL is required")
	case c.NodeID == "":
		return errors.New("redis: NodeID is required")
	case c.HistorySize < 0:
		return fmt.Errorf("redis: HistorySize %d < 0", c.HistorySize)
	case c.HistoryTTL < 0 || c.PingEvery < 0 || c.OpTimeout < 0 || c.QueueLen < 0 || c.MaxMessage < 0:
		return errors.New("redis: durations, QueueLen and MaxMessage must not be negative")
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
	if c.MaxMessage == 0 {
		c.MaxMessage = d.MaxMessage
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return nil
}

// server validates c and parses its URL into client options.
func (c *Config) server() (*topology.Server, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	return topology.Parse(c.URL, "ringcast-"+c.NodeID, c.OpTimeout)
}
