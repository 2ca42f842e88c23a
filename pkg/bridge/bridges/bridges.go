// Package bridges builds the bridge adapter a node's -bridge flag names:
// "mesh" (node-to-node links) or a Redis URL (Redis pub/sub: redis://,
// redis+sentinel:// or redis+cluster://).
package bridges

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/mesh"
	"github.com/ringcast/ringcast/pkg/bridge/redis"
	"github.com/ringcast/ringcast/pkg/bridge/redis/topology"
)

// Mesh is the spec of the built-in mesh bridge.
const Mesh = "mesh"

// Config is what every adapter is built from.
type Config struct {
	Spec        string                // "mesh", redis://host:port[/db], redis+sentinel://host:port,…/master[/db] or redis+cluster://host:port,… (rediss… for TLS); default mesh
	NodeID      string                // this node's id; required
	Key         []byte                // mesh: shared secret authenticating links; empty = loopback links only (unless Insecure)
	Insecure    bool                  // mesh: without Key, accept links from any address
	HistorySize int                   // redis: messages kept per channel; 0 = history off (the mesh keeps none)
	HistoryTTL  time.Duration         // redis: history kept this long after a channel's last publish; 0 = the redis default
	MaxMessage  int                   // redis: largest message data accepted from Redis (the node's -max-message); 0 = the redis default
	Registry    prometheus.Registerer // redis: where its metrics go; nil = nowhere
	Log         *zap.Logger
}

// DefaultConfig returns the defaults: the mesh, and the Redis adapter's
// history TTL.
func DefaultConfig() Config {
	return Config{Spec: Mesh, HistoryTTL: redis.DefaultConfig().HistoryTTL}
}

// IsRedis reports whether spec names the Redis adapter.
func IsRedis(spec string) bool { return topology.IsURL(spec) }

// Check reports a spec no adapter serves, or history asked of the mesh.
func Check(spec string, historySize int) error {
	switch {
	case spec == Mesh && historySize > 0:
		return errors.New("-history-size needs -bridge redis://…: the mesh bridge keeps no history (at-most-once)")
	case spec != Mesh && !IsRedis(spec):
		return fmt.Errorf("unknown -bridge %q: want mesh, redis://host:port/db, redis+sentinel://host:port,…/master or redis+cluster://host:port,…", spec)
	}
	return nil
}

// New builds the adapter cfg.Spec names, delivering into recv. The mesh
// comes back as *mesh.Mesh, which the node also uses for its peer set.
func New(cfg Config, recv bridge.Receiver) (bridge.Bridge, error) {
	if cfg.Spec == "" {
		cfg.Spec = Mesh
	}
	if err := Check(cfg.Spec, cfg.HistorySize); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Spec == Mesh {
		mcfg := mesh.DefaultConfig()
		mcfg.ID, mcfg.Key, mcfg.Insecure, mcfg.Log = cfg.NodeID, cfg.Key, cfg.Insecure, cfg.Log
		m, err := mesh.New(mcfg, recv)
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	rcfg := redis.DefaultConfig()
	rcfg.URL, rcfg.NodeID, rcfg.Log = cfg.Spec, cfg.NodeID, cfg.Log
	rcfg.HistorySize, rcfg.MaxMessage, rcfg.Registry = cfg.HistorySize, cfg.MaxMessage, cfg.Registry
	if cfg.HistoryTTL != 0 {
		rcfg.HistoryTTL = cfg.HistoryTTL
	}
	r, err := redis.New(rcfg, recv)
	if err != nil {
		return nil, err
	}
	return r, nil
}
