package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// DNSPrefix marks a seed resolved through DNS: dns:NAME:PORT stands for
// every A and AAAA record of NAME at PORT (a Kubernetes headless Service, a
// compose service or network alias).
const DNSPrefix = "dns:"

// resolveTimeout bounds one lookup of a DNS seed.
const resolveTimeout = 2 * time.Second

// Resolver looks up the addresses of a host name; *net.Resolver is one. It
// is called from the join loop only, never concurrently with itself.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// parseSeed checks one -join entry: host:port, or dns:NAME:PORT.
func parseSeed(s string) (name, port string, dns bool, err error) {
	rest, dns := strings.CutPrefix(s, DNSPrefix)
	host, port, err := net.SplitHostPort(rest)
	switch {
	case err != nil:
		return "", "", dns, fmt.Errorf("join address %q: %w", s, err)
	case host == "":
		return "", "", dns, fmt.Errorf("join address %q: no host", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", "", dns, fmt.Errorf("join address %q: port %q: want 0–65535", s, port)
	}
	return host, port, dns, nil
}

func validateSeeds(seeds []string) error {
	for _, s := range seeds {
		if s == "" {
			return errors.New("empty join address")
		}
		if _, _, _, err := parseSeed(s); err != nil {
			return err
		}
	}
	return nil
}

// seeds returns the addresses to join now. all: every static seed and every
// address the DNS seeds resolve to (the first join, or a member is seen
// dead). Otherwise only DNS addresses that are not alive members yet: a
// process that started after this one's join, or a group that formed on its
// own while the records were still appearing. This process's own address is
// never returned.
func (c *Cluster) seeds(ctx context.Context, all bool) []string {
	known := c.aliveGossip()
	var out []string
	for _, s := range c.cfg.Join {
		name, port, dns, _ := parseSeed(s) // validated by New
		if !dns {
			if all {
				out = append(out, s)
			}
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		ips, err := c.cfg.Resolver.LookupIPAddr(lctx, name)
		cancel()
		if err != nil {
			c.log.Debug("resolve seed", zap.String("seed", s), zap.Error(err))
			continue
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip.IP.String(), port)
			if a == c.gossip || (!all && known[a]) {
				continue
			}
			out = append(out, a)
		}
	}
	return out
}

// aliveGossip returns the gossip addresses of the members seen alive.
func (c *Cluster) aliveGossip() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	known := make(map[string]bool, len(c.records))
	for _, r := range c.records {
		if !r.dead {
			known[r.gossip] = true
		}
	}
	return known
}

// hasDNSSeeds reports whether a seed is resolved through DNS.
func (c *Cluster) hasDNSSeeds() bool {
	for _, s := range c.cfg.Join {
		if strings.HasPrefix(s, DNSPrefix) {
			return true
		}
	}
	return false
}
