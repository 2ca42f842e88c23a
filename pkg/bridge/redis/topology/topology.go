// Package topology names the Redis deployment the bridge talks to. It
// parses the -bridge URL forms — one server (redis://), a Sentinel-managed
// primary (redis+sentinel://) or a Redis Cluster (redis+cluster://), rediss…
// for TLS — into go-redis client options, and lays a cluster's channels out
// over partitions, each pinned to one hash slot by its hash tag.
package topology

import (
	"crypto/tls"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

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

// Server is a parsed URL: exactly one of Single, Sentinel or Cluster is set.
type Server struct {
	Single     *goredis.Options
	Sentinel   *goredis.FailoverOptions
	Cluster    *goredis.ClusterOptions
	Partitions int // Cluster only: see DefaultPartitions
}

// Parse parses a URL IsURL accepts into client options named name whose
// dials, reads, writes and pool waits are bounded by timeout. Commands are
// never retried (a retried publish script could apply twice); on a cluster
// MOVED and ASK replies are followed.
func Parse(rawURL, name string, timeout time.Duration) (*Server, error) {
	scheme, rest, _ := strings.Cut(rawURL, "://")
	if !IsURL(rawURL) {
		return nil, fmt.Errorf("redis: URL scheme %q: want redis, redis+sentinel or redis+cluster (rediss… for TLS)", scheme)
	}
	var s Server
	var err error
	t := tuning{name, timeout}
	switch base, kind, _ := strings.Cut(scheme, "+"); kind {
	case "":
		s.Single, err = goredis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis: parse URL: %w", err)
		}
		o := s.Single
		t.apply(&o.ClientName, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout,
			&o.PoolTimeout, &o.ContextTimeoutEnabled, &o.MaxRetries, &o.DisableIdentity)
		o.MaintNotificationsConfig = noMaint()
	case "sentinel":
		s.Sentinel, err = parseSentinel(base, rest)
		if err != nil {
			return nil, err
		}
		o := s.Sentinel
		t.apply(&o.ClientName, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout,
			&o.PoolTimeout, &o.ContextTimeoutEnabled, &o.MaxRetries, &o.DisableIdentity)
	case "cluster":
		s.Cluster, s.Partitions, err = parseCluster(base, rest)
		if err != nil {
			return nil, err
		}
		o := s.Cluster
		t.apply(&o.ClientName, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout,
			&o.PoolTimeout, &o.ContextTimeoutEnabled, &o.MaxRetries, &o.DisableIdentity)
		o.MaintNotificationsConfig = noMaint()
		// MOVED and ASK replies are followed (the command was not run);
		// the bridge keeps network errors from being retried.
		o.MaxRedirects = 3
	}
	return &s, nil
}

// tuning is what every client kind shares.
type tuning struct {
	name    string
	timeout time.Duration
}

func (t tuning) apply(name *string, dial, read, write, pool *time.Duration, ctxTimeout *bool, retries *int, noIdentity *bool) {
	*name = t.name
	*dial, *read, *write, *pool = t.timeout, t.timeout, t.timeout, t.timeout
	*ctxTimeout = true
	*retries = -1 // a retried publish script could apply twice
	*noIdentity = true
}

// Partition returns which of n partitions a channel name or client id is
// in.
func Partition(key string, n int) int {
	return int(crc32.ChecksumIEEE([]byte(key)) % uint32(n))
}

// PartitionTags returns n hash tags whose slots spread evenly over the
// 16384 slots: partition i's slot lies in [i×16384/n, (i+1)×16384/n), so a
// cluster whose shards hold equal slot ranges gets equal partition counts.
// Every node computes the same tags.
func PartitionTags(n int) []string {
	tags := make([]string, n)
	left := n
	for k := 0; left > 0; k++ {
		t := strconv.FormatInt(int64(k), 36)
		i := int(Slot(t)) * n / 16384
		if tags[i] == "" {
			tags[i] = "{" + t + "}"
			left--
		}
	}
	return tags
}

// Slot is Redis Cluster's hash slot of a key without a hash tag: CRC-16
// (XMODEM) mod 16384.
func Slot(key string) uint16 {
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
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
