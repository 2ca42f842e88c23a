package redis

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Config configures a Bridge.
type Config struct {
	URL         string                // redis://…, redis+sentinel://… or redis+cluster://… (see IsURL); required
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

// DefaultPartitions is the number of partitions on a Redis Cluster when the
// URL names none. A partition's channels (their pub/sub, history and direct
// messages) live in one hash slot, and each node keeps one subscriber
// connection per partition: partitions are the unit a cluster spreads over
// its shards and reshards, and each costs a connection per node (measured:
// fewer connections deliver more per second). Their slots spread evenly, so
// a multiple of the shard count balances; 12 suits 2, 3, 4 or 6 shards. Every
// node must use the same number.
const DefaultPartitions = 12

// URL schemes the bridge accepts; the rediss forms use TLS.
var schemes = []string{"redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"}

// IsURL reports whether s names a Redis bridge: a redis://, rediss://,
// redis+sentinel://, rediss+sentinel://, redis+cluster:// or
// rediss+cluster:// URL.
func IsURL(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return false
	}
	for _, sc := range schemes {
		if scheme == sc {
			return true
		}
	}
	return false
}

// server is the parsed URL: one of single, sentinel or cluster is set.
type server struct {
	single     *goredis.Options
	sentinel   *goredis.FailoverOptions
	cluster    *goredis.ClusterOptions
	partitions int // cluster only
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
func (c *Config) server() (*server, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	scheme, rest, _ := strings.Cut(c.URL, "://")
	if !IsURL(c.URL) {
		return nil, fmt.Errorf("redis: URL scheme %q: want redis, redis+sentinel or redis+cluster (rediss… for TLS)", scheme)
	}
	var s server
	var err error
	switch base, kind, _ := strings.Cut(scheme, "+"); kind {
	case "":
		s.single, err = goredis.ParseURL(c.URL)
		if err != nil {
			return nil, fmt.Errorf("redis: parse URL: %w", err)
		}
		c.tune(&s.single.ClientName, &s.single.DialTimeout, &s.single.ReadTimeout, &s.single.WriteTimeout,
			&s.single.PoolTimeout, &s.single.ContextTimeoutEnabled, &s.single.MaxRetries, &s.single.DisableIdentity)
		s.single.MaintNotificationsConfig = noMaint()
	case "sentinel":
		s.sentinel, err = parseSentinel(base, rest)
		if err != nil {
			return nil, err
		}
		o := s.sentinel
		c.tune(&o.ClientName, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout,
			&o.PoolTimeout, &o.ContextTimeoutEnabled, &o.MaxRetries, &o.DisableIdentity)
	case "cluster":
		s.cluster, s.partitions, err = parseCluster(base, rest)
		if err != nil {
			return nil, err
		}
		o := s.cluster
		c.tune(&o.ClientName, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout,
			&o.PoolTimeout, &o.ContextTimeoutEnabled, &o.MaxRetries, &o.DisableIdentity)
		o.MaintNotificationsConfig = noMaint()
		// MOVED and ASK replies are followed (the command was not run);
		// network errors are not retried: see noRetry.
		o.MaxRedirects = 3
	}
	return &s, nil
}

// tune applies the settings every client kind shares.
func (c *Config) tune(name *string, dial, read, write, pool *time.Duration, ctxTimeout *bool, retries *int, noIdentity *bool) {
	*name = "ringcast-" + c.NodeID
	*dial, *read, *write, *pool = c.OpTimeout, c.OpTimeout, c.OpTimeout, c.OpTimeout
	*ctxTimeout = true
	*retries = -1 // a retried publish script could apply twice
	*noIdentity = true
}

// noMaint turns off go-redis's maintenance notifications (a Redis Enterprise
// feature) and the background goroutines that come with them.
func noMaint() *maintnotifications.Config {
	return &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// authority splits "[user[:pass]@]host:port,host:port[/path][?query]" into
// credentials, addresses and the rest, parsed as a URL path and query.
func authority(base, rest string) (user, pass string, addrs []string, u *url.URL, err error) {
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	hosts := rest[:end]
	if at := strings.LastIndex(hosts, "@"); at >= 0 {
		info, err := url.PathUnescape(hosts[:at])
		if err != nil {
			return "", "", nil, nil, fmt.Errorf("redis: URL credentials: %w", err)
		}
		user, pass, _ = strings.Cut(info, ":")
		hosts = hosts[at+1:]
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			continue
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" {
			return "", "", nil, nil, fmt.Errorf("redis: URL address %q: want host:port", h)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", "", nil, nil, fmt.Errorf("redis: URL address %q: bad port", h)
		}
		addrs = append(addrs, h)
	}
	if len(addrs) == 0 {
		return "", "", nil, nil, errors.New("redis: URL names no host:port")
	}
	u, err = url.Parse(base + "://x" + rest[end:])
	if err != nil {
		return "", "", nil, nil, fmt.Errorf("redis: parse URL: %w", err)
	}
	return user, pass, addrs, u, nil
}

func tlsFor(base string, addrs []string) *tls.Config {
	if base != "rediss" {
		return nil
	}
	host, _, _ := net.SplitHostPort(addrs[0])
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

// parseSentinel parses redis+sentinel://[user:pass@]host:port,…/master[/db]
// [?sentinel_password=…]: the addresses are Sentinels, the credentials
// those of the Redis servers.
func parseSentinel(base, rest string) (*goredis.FailoverOptions, error) {
	user, pass, addrs, u, err := authority(base, rest)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if parts[0] == "" || len(parts) > 2 {
		return nil, errors.New("redis: sentinel URL needs /<master name>[/<db>] after the addresses")
	}
	o := &goredis.FailoverOptions{MasterName: parts[0], SentinelAddrs: addrs, Username: user, Password: pass, TLSConfig: tlsFor(base, addrs)}
	if len(parts) == 2 {
		if o.DB, err = strconv.Atoi(parts[1]); err != nil || o.DB < 0 {
			return nil, fmt.Errorf("redis: sentinel URL database %q: want a number", parts[1])
		}
	}
	for k, v := range u.Query() {
		switch k {
		case "sentinel_password":
			o.SentinelPassword = v[0]
		default:
			return nil, fmt.Errorf("redis: sentinel URL option %q: only sentinel_password is known", k)
		}
	}
	return o, nil
}

// parseCluster parses redis+cluster://[user:pass@]host:port,…[?partitions=N]:
// the addresses are seeds, any nodes of the cluster.
func parseCluster(base, rest string) (*goredis.ClusterOptions, int, error) {
	user, pass, addrs, u, err := authority(base, rest)
	if err != nil {
		return nil, 0, err
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return nil, 0, fmt.Errorf("redis: cluster URL path %q: a cluster has no databases", p)
	}
	partitions := DefaultPartitions
	for k, v := range u.Query() {
		switch k {
		case "partitions":
			partitions, err = strconv.Atoi(v[0])
			if err != nil || partitions < 1 || partitions > 1024 {
				return nil, 0, fmt.Errorf("redis: cluster URL partitions %q: want 1…1024", v[0])
			}
		default:
			return nil, 0, fmt.Errorf("redis: cluster URL option %q: only partitions is known", k)
		}
	}
	return &goredis.ClusterOptions{Addrs: addrs, Username: user, Password: pass, TLSConfig: tlsFor(base, addrs)}, partitions, nil
}
