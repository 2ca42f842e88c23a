package auth

import (
	"flag"
	"net/http"
	"time"
)

// Config says which keys verify client tokens and which API key guards the
// HTTP publish and send endpoints. Every balancer and node of a cluster must
// use the same settings. A zero Config is "auth off": no identity, no API key.
type Config struct {
	HMACSecret    string // HS256/384/512 secret; empty = no HMAC tokens
	HMACPrevious  string // a second HMAC secret still accepted, while rotating; empty = none
	PublicKeyFile string // PEM public key (RSA, EC or Ed25519); empty = none
	JWKSURL       string // JWKS endpoint; keys are cached and refetched on an unknown kid
	Issuer        string // required iss claim; empty = not checked
	Audience      string // required aud value; empty = not checked
	APIKey        string // bearer key for POST /v1/publish and /v1/send; empty = open

	// Leeway is the clock skew tolerated on exp and nbf. Default 5s: enough
	// for NTP-synchronised hosts; more lets expired tokens in for longer.
	Leeway time.Duration
	// JWKSMinRefetch is the least time between two JWKS fetches, whatever
	// asks for them (unknown kid, stale set). Default 30s: a flood of tokens
	// with made-up kids costs the key server one request per interval.
	JWKSMinRefetch time.Duration
	// JWKSMaxAge is how old the cached set may get before a verification
	// refetches it (removed keys stop being accepted). Default 10m. The old
	// set keeps serving while the URL is down.
	JWKSMaxAge time.Duration
	// JWKSTimeout bounds one JWKS fetch. Default 5s.
	JWKSTimeout time.Duration
	// HTTPClient fetches the JWKS; nil = a client with JWKSTimeout.
	HTTPClient *http.Client
}

// DefaultConfig returns the defaults documented on Config (auth off).
func DefaultConfig() Config {
	return Config{
		Leeway:         5 * time.Second,
		JWKSMinRefetch: 30 * time.Second,
		JWKSMaxAge:     10 * time.Minute,
		JWKSTimeout:    5 * time.Second,
	}
}

// Enabled reports whether tokens are required (a token key is configured).
func (c Config) Enabled() bool {
	return c.HMACSecret != "" || c.PublicKeyFile != "" || c.JWKSURL != ""
}

// RegisterFlags adds the identity flags shared by the balancer and the node
// (DESIGN.md §8) to fs, storing into c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.HMACSecret, "token-hmac-secret", "", "HMAC secret that signs client tokens (HS256/384/512); turns auth on")
	fs.StringVar(&c.HMACPrevious, "token-hmac-secret-previous", "", "a second HMAC secret still accepted (key rotation: every process takes both, then tokens are signed with the new one)")
	fs.StringVar(&c.PublicKeyFile, "token-public-key", "", "PEM file with the public key (RSA, EC, Ed25519) that verifies client tokens; turns auth on")
	fs.StringVar(&c.JWKSURL, "token-jwks-url", "", "JWKS URL with the keys that verify client tokens (cached, refetched on an unknown kid at most every 30 s); turns auth on")
	fs.StringVar(&c.Issuer, "token-issuer", "", "required iss claim of client tokens (empty = not checked)")
	fs.StringVar(&c.Audience, "token-audience", "", "required aud claim of client tokens (empty = not checked)")
	fs.StringVar(&c.APIKey, "api-key", "", "key that POST /v1/publish and /v1/send need as Authorization: Bearer (empty = open)")
}
