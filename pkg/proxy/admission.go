package proxy

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// admission limits the connections one source address holds and opens per
// second. A source is an IPv4 address or an IPv6 /64 (one host's usual
// allocation). Its methods are safe for concurrent use.
type admission struct {
	maxConns   int        // 0 = no limit
	rate       rate.Limit // new connections per second; 0 = no limit
	burst      int
	maxSources int // 0 = no cap (tests that build an admission by hand)
	trusted    []netip.Prefix

	mu      sync.Mutex
	sources map[netip.Addr]*source
	swept   time.Time
}

type source struct {
	conns int
	lim   *rate.Limiter // nil without a rate limit
}

// sweepEvery bounds how often idle sources are forgotten; a source is idle
// when it holds no connection and its bucket is full again. A full table
// is swept at most every sweepFull.
const (
	sweepEvery = 10 * time.Second
	sweepFull  = time.Second
)

func newAdmission(cfg Config) *admission {
	return &admission{
		maxConns:   cfg.MaxConnsPerIP,
		rate:       rate.Limit(cfg.ConnRatePerIP),
		burst:      max(1, int(math.Ceil(2*cfg.ConnRatePerIP))),
		maxSources: cfg.MaxSources,
		trusted:    cfg.TrustedProxies,
		sources:    make(map[netip.Addr]*source),
	}
}

// refusal says why a connection was not admitted.
type refusal struct {
	reason     string        // metric label: per_ip_conns, per_ip_rate or sources_full
	status     int           // 429, or 503 when the table of sources is full
	retryAfter time.Duration // what Retry-After tells the client
}

// admit takes one connection slot for the client at ip, or says why not. A
// slot taken must be given back with release.
func (a *admission) admit(ip netip.Addr, now time.Time) *refusal {
	if a.off() {
		return nil
	}
	src := group(ip)
	a.mu.Lock()
	defer a.mu.Unlock()
	if now.Sub(a.swept) > sweepEvery {
		a.sweep(now)
	}
	s := a.sources[src]
	if s == nil && a.maxSources > 0 && len(a.sources) >= a.maxSources {
		if now.Sub(a.swept) > sweepFull {
			a.sweep(now)
		}
		if len(a.sources) >= a.maxSources {
			return &refusal{reason: "sources_full", status: http.StatusServiceUnavailable, retryAfter: time.Second}
		}
	}
	if s == nil {
		s = &source{}
		if a.rate > 0 {
			s.lim = rate.NewLimiter(a.rate, a.burst)
		}
		a.sources[src] = s
	}
	if a.maxConns > 0 && s.conns >= a.maxConns {
		return &refusal{reason: "per_ip_conns", status: http.StatusTooManyRequests, retryAfter: 5 * time.Second}
	}
	if s.lim != nil && !s.lim.AllowN(now, 1) {
		wait := time.Duration((1 - s.lim.TokensAt(now)) / float64(a.rate) * float64(time.Second))
		return &refusal{reason: "per_ip_rate", status: http.StatusTooManyRequests, retryAfter: wait}
	}
	s.conns++
	return nil
}

// release gives back a slot admit took for ip.
func (a *admission) release(ip netip.Addr) {
	if a.off() {
		return
	}
	src := group(ip)
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.sources[src]; s != nil && s.conns > 0 {
		s.conns--
	}
}

// off reports that neither limit is set: no source state is kept.
func (a *admission) off() bool { return a.maxConns == 0 && a.rate == 0 }

func (a *admission) sweep(now time.Time) {
	a.swept = now
	for k, s := range a.sources {
		if s.conns == 0 && (s.lim == nil || s.lim.TokensAt(now) >= float64(a.burst)) {
			delete(a.sources, k)
		}
	}
}

// sourceOf returns the client address of r: the peer's, or, when the peer
// is a trusted proxy, the rightmost X-Forwarded-For entry that is not
// itself a trusted proxy.
func (a *admission) sourceOf(r *http.Request) netip.Addr {
	ip := peerAddr(r)
	if !a.isTrusted(ip) {
		return ip
	}
	hops := r.Header.Values("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return ip // a malformed chain: trust it no further
			}
			ip = hop.Unmap()
			if !a.isTrusted(ip) {
				return ip
			}
		}
	}
	return ip
}

func (a *admission) isTrusted(ip netip.Addr) bool {
	for _, p := range a.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// peerAddr is r's TCP peer address; the zero Addr when it cannot be parsed.
func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// group maps an IPv6 address to its /64, which one host usually holds
// whole; IPv4 addresses stand for themselves.
func group(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// ParseCIDRs parses a list of CIDR prefixes or bare addresses (a single
// host), as -trusted-proxies takes them.
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, &net.ParseError{Type: "CIDR address", Text: s}
			}
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, &net.ParseError{Type: "CIDR address", Text: s}
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// retryAfter renders d as a Retry-After value: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}
