// Package auth says who a client is and what it may do: client tokens (JWT:
// HMAC, PEM key or JWKS) verified once per connection, API keys on HTTP writes.
package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Errors callers branch on. Every verification failure wraps
// ErrUnauthorized (HTTP 401); a malformed client id wraps ErrBadClientID
// (HTTP 400).
var (
	ErrUnauthorized = errors.New("unauthorized")
	ErrBadClientID  = errors.New("bad client id")
)

// Methods pinned to each key type: a token is verified only with a key of
// the family its alg names, so an RSA public key can never serve as an HMAC
// secret, and "none" is never accepted.
var (
	hmacMethods    = []string{"HS256", "HS384", "HS512"}
	rsaMethods     = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	ecdsaMethods   = []string{"ES256", "ES384", "ES512"}
	ed25519Methods = []string{"EdDSA"}
)

// Verifier verifies client tokens. It is safe for concurrent use.
type Verifier struct {
	cfg    Config
	hmac   any // []byte, or a jwt.VerificationKeySet of the secret and the previous one
	pub    any // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey; nil = none
	jwks   *jwksCache
	parser *jwt.Parser
}

// New builds the Verifier cfg describes. A cfg with no token key yields a
// Verifier that trusts the client_id parameter (auth off).
func New(cfg Config) (*Verifier, error) {
	d := DefaultConfig()
	if err := errors.Join(
		defaults.Set("Leeway", &cfg.Leeway, d.Leeway),
		defaults.Set("JWKSMinRefetch", &cfg.JWKSMinRefetch, d.JWKSMinRefetch),
		defaults.Set("JWKSMaxAge", &cfg.JWKSMaxAge, d.JWKSMaxAge),
		defaults.Set("JWKSTimeout", &cfg.JWKSTimeout, d.JWKSTimeout),
	); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	v := &Verifier{cfg: cfg}
	methods := []string{}
	if cfg.HMACSecret != "" {
		if len(cfg.HMACSecret) < 16 {
			return nil, errors.New("auth: -token-hmac-secret must be at least 16 bytes")
		}
		v.hmac = []byte(cfg.HMACSecret)
		if cfg.HMACPrevious != "" {
			if len(cfg.HMACPrevious) < 16 {
				return nil, errors.New("auth: -token-hmac-secret-previous must be at least 16 bytes")
			}
			v.hmac = jwt.VerificationKeySet{Keys: []jwt.VerificationKey{[]byte(cfg.HMACSecret), []byte(cfg.HMACPrevious)}}
		}
		methods = append(methods, hmacMethods...)
	} else if cfg.HMACPrevious != "" {
		return nil, errors.New("auth: -token-hmac-secret-previous needs -token-hmac-secret")
	}
	if cfg.PublicKeyFile != "" {
		pem, err := os.ReadFile(cfg.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("auth: read -token-public-key: %w", err)
		}
		if v.pub, err = parsePublicKey(pem); err != nil {
			return nil, fmt.Errorf("auth: -token-public-key %s: %w", cfg.PublicKeyFile, err)
		}
		methods = append(methods, methodsFor(v.pub)...)
	}
	if cfg.JWKSURL != "" {
		if !strings.HasPrefix(cfg.JWKSURL, "https://") && !strings.HasPrefix(cfg.JWKSURL, "http://") {
			return nil, fmt.Errorf("auth: -token-jwks-url %q: want http:// or https://", cfg.JWKSURL)
		}
		v.jwks = newJWKSCache(cfg)
		methods = append(methods, rsaMethods...)
		methods = append(methods, ecdsaMethods...)
		methods = append(methods, ed25519Methods...)
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(cfg.Leeway)}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Enabled reports whether tokens are required.
func (v *Verifier) Enabled() bool { return v != nil && v.cfg.Enabled() }

// claims is a token's payload as ringcast reads it.
type claims struct {
	jwt.RegisteredClaims
	Channels []string `json:"channels"`
	Publish  []string `json:"publish"`
	Send     *bool    `json:"send"`
}

// Verify checks token and returns the identity it grants. Every failure
// wraps ErrUnauthorized and says why.
func (v *Verifier) Verify(token string) (*Identity, error) {
	if !v.Enabled() {
		return nil, fmt.Errorf("%w: tokens are not configured", ErrUnauthorized)
	}
	if token == "" {
		return nil, fmt.Errorf("%w: token required", ErrUnauthorized)
	}
	var c claims
	if _, err := v.parser.ParseWithClaims(token, &c, v.key); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrUnauthorized, tokenReason(err))
	}
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: token has no sub", ErrUnauthorized)
	}
	if err := wire.ValidateClientID(c.Subject); err != nil {
		return nil, fmt.Errorf("%w: sub: %s", ErrUnauthorized, err.(*wire.Error).Message)
	}
	id := &Identity{ClientID: c.Subject, Token: true, leeway: v.cfg.Leeway, send: c.Send == nil || *c.Send}
	if c.ExpiresAt != nil {
		id.Expires = c.ExpiresAt.Time
	}
	id.subscribe = compile(c.Channels, c.Subject)
	id.publish = id.subscribe
	if c.Publish != nil {
		id.publish = compile(c.Publish, c.Subject)
	}
	return id, nil
}

// tokenReason turns a jwt error into a short reason for the 401 body.
func tokenReason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong token issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong token audience"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid) && strings.Contains(err.Error(), "signing method"):
		return "token algorithm not accepted: " + err.Error()
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad token signature"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	}
	return err.Error()
}

// key is the jwt key function: it picks the key for the token's alg and
// kid, refusing an alg that does not match the key's type.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	switch {
	case contains(hmacMethods, alg):
		if v.hmac == nil {
			return nil, errors.New("HMAC tokens are not accepted")
		}
		return v.hmac, nil
	case v.jwks != nil && (kid != "" || v.pub == nil):
		k, err := v.jwks.key(kid)
		if err != nil {
			return nil, err
		}
		if k.alg != "" && k.alg != alg {
			return nil, fmt.Errorf("key %q is for %s, token is %s", kid, k.alg, alg)
		}
		if !contains(methodsFor(k.pub), alg) {
			return nil, fmt.Errorf("key %q does not fit %s", kid, alg)
		}
		return k.pub, nil
	case v.pub != nil:
		if !contains(methodsFor(v.pub), alg) {
			return nil, fmt.Errorf("the public key does not fit %s", alg)
		}
		return v.pub, nil
	}
	return nil, fmt.Errorf("no key for %s", alg)
}

func methodsFor(pub any) []string {
	switch pub.(type) {
	case *rsa.PublicKey:
		return rsaMethods
	case *ecdsa.PublicKey:
		return ecdsaMethods
	case ed25519.PublicKey:
		return ed25519Methods
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Identify says who the upgrade request r is from. With auth off the
// client_id parameter is taken as given, with every permission. With auth
// on the token (?token= or Authorization: Bearer) must verify, and a
// client_id parameter, when present, must equal its sub.
func (v *Verifier) Identify(r *http.Request) (*Identity, error) {
	q := r.URL.Query()
	claimed := q.Get("client_id")
	if claimed != "" || !v.Enabled() {
		if err := wire.ValidateClientID(claimed); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrBadClientID, err.(*wire.Error).Message)
		}
	}
	if !v.Enabled() {
		return Open(claimed), nil
	}
	token := q.Get("token")
	if token == "" {
		token = bearer(r)
	}
	id, err := v.Verify(token)
	if err != nil {
		return nil, err
	}
	if claimed != "" && claimed != id.ClientID {
		return nil, fmt.Errorf("%w: client_id %q does not match the token's sub", ErrUnauthorized, claimed)
	}
	return id, nil
}

// Refresh verifies token as the replacement of id's token: it must verify
// and carry the same sub.
func (v *Verifier) Refresh(id *Identity, token string) (*Identity, error) {
	next, err := v.Verify(token)
	if err != nil {
		return nil, err
	}
	if next.ClientID != id.ClientID {
		return nil, fmt.Errorf("%w: refresh token is for %q, the connection is %q", ErrUnauthorized, next.ClientID, id.ClientID)
	}
	return next, nil
}

// bearer returns the token of an Authorization: Bearer header, or "".
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// APIKeyOK reports whether r may use the HTTP publish and send endpoints:
// no API key is configured, or r carries it as Authorization: Bearer.
func (v *Verifier) APIKeyOK(r *http.Request) bool {
	if v == nil || v.cfg.APIKey == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(bearer(r)), []byte(v.cfg.APIKey)) == 1
}

// RequireAPIKey wraps an HTTP API handler: without the configured API key
// the request gets 401 unauthorized.
func (v *Verifier) RequireAPIKey(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !v.APIKeyOK(r) {
			Refuse(w, fmt.Errorf("%w: %s %s needs Authorization: Bearer <api key>", ErrUnauthorized, r.Method, r.URL.Path))
			return
		}
		h(w, r)
	}
}

// Refuse answers a request that Identify refused: 400 bad_client_id or
// 401 unauthorized, with the HTTP API's JSON error body.
func Refuse(w http.ResponseWriter, err error) {
	code := Code(err)
	if code == wire.CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ringcast"`)
	}
	httpapi.WriteError(w, code, err.Error())
}

// Status is the HTTP status Refuse answers err with.
func Status(err error) int { return httpapi.Status(Code(err)) }

// Code is the error code Refuse answers err with: bad_client_id or
// unauthorized.
func Code(err error) string {
	if errors.Is(err, ErrBadClientID) {
		return wire.CodeBadClientID
	}
	return wire.CodeUnauthorized
}
