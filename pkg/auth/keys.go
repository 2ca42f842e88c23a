package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// parsePublicKey reads the first PEM block: a PKIX public key (RSA, EC or
// Ed25519), a PKCS#1 RSA public key or a certificate.
func parsePublicKey(b []byte) (any, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var pub any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	default:
		return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", block.Type)
	}
	if err != nil {
		return nil, err
	}
	return checkPublic(pub)
}

// checkPublic accepts the key types tokens are verified with.
func checkPublic(pub any) (any, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
		return k, nil
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T: want RSA, EC or Ed25519", pub)
}

// maxJWKS bounds a JWKS response.
const maxJWKS = 1 << 20

// jwksKey is one verification key from the JWKS.
type jwksKey struct {
	pub any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	alg string // the JWK's alg, "" when it names none
}

// jwksCache holds the keys of a JWKS URL. Lookups of known kids never wait
// on the network; a fetch happens at most every MinRefetch, on an unknown
// kid or a set older than MaxAge, and a failed fetch keeps the old keys.
type jwksCache struct {
	url     string
	client  *http.Client
	timeout time.Duration // JWKSTimeout: bounds a fetch even through a client without a Timeout
	minGap  time.Duration
	maxAge  time.Duration
	now     func() time.Time

	fetchMu sync.Mutex // one fetch at a time
	mu      sync.RWMutex
	keys    map[string]jwksKey
	fetched time.Time // last successful fetch
	tried   time.Time // last fetch attempt
	lastErr error     // of the last attempt
}

func newJWKSCache(cfg Config) *jwksCache {
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: cfg.JWKSTimeout}
	}
	return &jwksCache{url: cfg.JWKSURL, client: client, timeout: cfg.JWKSTimeout, minGap: cfg.JWKSMinRefetch, maxAge: cfg.JWKSMaxAge, now: time.Now}
}

// key returns the key with kid ("" = the only key of the set).
func (c *jwksCache) key(kid string) (jwksKey, error) {
	k, ok, stale := c.lookup(kid)
	switch {
	case ok && !stale:
		return k, nil
	case ok:
		// Refresh a stale set only if nobody is fetching already: a known
		// key is never held up by a slow key server.
		if c.fetchMu.TryLock() {
			c.refetch()
			c.fetchMu.Unlock()
			if k2, ok2, _ := c.lookup(kid); ok2 {
				return k2, nil
			}
		}
		return k, nil
	}
	c.fetchMu.Lock()
	// Another caller may have fetched while this one waited.
	if k, ok, _ := c.lookup(kid); ok {
		c.fetchMu.Unlock()
		return k, nil
	}
	err := c.refetch()
	c.fetchMu.Unlock()
	if k, ok, _ := c.lookup(kid); ok {
		return k, nil
	}
	if err != nil {
		return jwksKey{}, fmt.Errorf("unknown key id %q (JWKS: %v)", kid, err)
	}
	if kid == "" {
		return jwksKey{}, errors.New("token has no kid and the JWKS holds more than one key")
	}
	return jwksKey{}, fmt.Errorf("unknown key id %q", kid)
}

// lookup finds kid in the cached set; stale reports a set past MaxAge.
func (c *jwksCache) lookup(kid string) (k jwksKey, ok, stale bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	stale = c.now().Sub(c.fetched) > c.maxAge
	if kid == "" {
		if len(c.keys) != 1 {
			return jwksKey{}, false, stale
		}
		for _, k := range c.keys {
			return k, true, stale
		}
	}
	k, ok = c.keys[kid]
	return k, ok, stale
}

// refetch fetches the set unless the last attempt was under MinRefetch
// ago; it returns the error of the fetch (or of the last one, when it was
// too soon). Called with fetchMu held.
func (c *jwksCache) refetch() error {
	c.mu.RLock()
	tried, lastErr := c.tried, c.lastErr
	c.mu.RUnlock()
	now := c.now()
	if !tried.IsZero() && now.Sub(tried) < c.minGap {
		return lastErr
	}
	keys, err := c.fetch()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tried, c.lastErr = now, err
	if err == nil {
		c.keys, c.fetched = keys, now
	}
	return err
}

func (c *jwksCache) fetch() (map[string]jwksKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", c.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: %s", c.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKS+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.url, err)
	}
	if len(body) > maxJWKS {
		return nil, fmt.Errorf("%s: JWKS over %d bytes", c.url, maxJWKS)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parse JWKS from %s: %w", c.url, err)
	}
	keys := make(map[string]jwksKey, set.Len())
	for i := range set.Len() {
		k, _ := set.Key(i)
		if u, ok := k.KeyUsage(); ok && u != "sig" {
			continue
		}
		var raw any
		if err := jwk.Export(k, &raw); err != nil {
			continue
		}
		pub, err := checkPublic(raw)
		if err != nil {
			continue // private, symmetric or unsupported keys never verify tokens
		}
		kid, _ := k.KeyID()
		var alg string
		if a, ok := k.Algorithm(); ok {
			alg = a.String()
		}
		keys[kid] = jwksKey{pub: pub, alg: alg}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: JWKS holds no usable public key", c.url)
	}
	return keys, nil
}
