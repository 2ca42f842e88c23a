package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

const secret = "0123456789abcdef-test-secret"

// sign returns a token for claims signed with method and key, with kid in
// the header when non-empty.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

func writePEM(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mkClaims(sub string, extra ...any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i].(string)] = extra[i+1]
	}
	return c
}

func TestVerify(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaPEM := writePEM(t, &rsaKey.PublicKey)
	rsaPEMBytes, _ := os.ReadFile(rsaPEM)

	hmacV := mustNew(t, Config{HMACSecret: secret, Issuer: "https://issuer.example", Audience: "ringcast"})
	rsaV := mustNew(t, Config{PublicKeyFile: rsaPEM})
	ecV := mustNew(t, Config{PublicKeyFile: writePEM(t, &ecKey.PublicKey)})
	edV := mustNew(t, Config{PublicKeyFile: writePEM(t, edPub)})
	plainV := mustNew(t, Config{HMACSecret: secret})

	good := func(extra ...any) jwt.MapClaims {
		return mkClaims("alice", append([]any{"iss", "https://issuer.example", "aud", "ringcast"}, extra...)...)
	}
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", good())

	cases := []struct {
		name   string
		v      *Verifier
		token  string
		query  string // extra query, e.g. client_id
		status int    // 0 = accepted
		reason string // substring of the error
	}{
		{"good HS256", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good()), "", 0, ""},
		{"good HS512", hmacV, sign(t, jwt.SigningMethodHS512, []byte(secret), "", good()), "", 0, ""},
		{"good RS256", rsaV, sign(t, jwt.SigningMethodRS256, rsaKey, "", mkClaims("alice")), "", 0, ""},
		{"good PS256", rsaV, sign(t, jwt.SigningMethodPS256, rsaKey, "", mkClaims("alice")), "", 0, ""},
		{"good ES256", ecV, sign(t, jwt.SigningMethodES256, ecKey, "", mkClaims("alice")), "", 0, ""},
		{"good EdDSA", edV, sign(t, jwt.SigningMethodEdDSA, edKey, "", mkClaims("alice")), "", 0, ""},
		{"no exp is allowed", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"sub": "alice"}), "", 0, ""},
		{"client_id equal to sub", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice")), "client_id=alice", 0, ""},
		{"exp within leeway", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice", "exp", time.Now().Add(-2*time.Second).Unix())), "", 0, ""},

		{"missing token", hmacV, "", "", 401, "token required"},
		{"malformed", hmacV, "not.a.jwt", "", 401, "malformed"},
		{"expired", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good("exp", time.Now().Add(-time.Minute).Unix())), "", 401, "expired"},
		{"nbf in the future", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good("nbf", time.Now().Add(time.Minute).Unix())), "", 401, "not valid yet"},
		{"alg none", hmacV, none, "", 401, "signing method none is invalid"},
		{"wrong HMAC key", hmacV, sign(t, jwt.SigningMethodHS256, []byte("another-secret-of-16-bytes"), "", good()), "", 401, "signature"},
		{"wrong RSA key", rsaV, sign(t, jwt.SigningMethodRS256, otherRSA, "", mkClaims("alice")), "", 401, "signature"},
		{"HS256 signed with the RSA public key", rsaV, sign(t, jwt.SigningMethodHS256, rsaPEMBytes, "", mkClaims("alice")), "", 401, "signing method HS256 is invalid"},
		{"RS256 to an HMAC verifier", plainV, sign(t, jwt.SigningMethodRS256, rsaKey, "", mkClaims("alice")), "", 401, "signing method RS256 is invalid"},
		{"ES256 to an RSA verifier", rsaV, sign(t, jwt.SigningMethodES256, ecKey, "", mkClaims("alice")), "", 401, "signing method ES256 is invalid"},
		{"wrong issuer", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good("iss", "https://evil.example")), "", 401, "issuer"},
		{"no issuer", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice", "aud", "ringcast")), "", 401, "iss"},
		{"wrong audience", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good("aud", "other")), "", 401, "audience"},
		{"no sub", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}), "", 401, "no sub"},
		{"sub with bad characters", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("al ice/../x")), "", 401, "sub"},
		{"sub too long", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims(strings.Repeat("a", 129))), "", 401, "sub"},
		{"client_id mismatch", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice")), "client_id=bob", 401, "does not match"},
		{"bad client_id", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice")), "client_id=a%20b", 400, ""},
		{"channels of the wrong type", plainV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice", "channels", "room:*")), "", 401, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := tc.query
			if tc.token != "" {
				if q != "" {
					q += "&"
				}
				q += "token=" + tc.token
			}
			r := httptest.NewRequest(http.MethodGet, "/ws?"+q, nil)
			id, err := tc.v.Identify(r)
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("Identify = %v, want accepted", err)
			case tc.status == 0 && id.ClientID != "alice":
				t.Fatalf("ClientID = %q, want alice", id.ClientID)
			case tc.status == 0:
			case err == nil:
				t.Fatalf("Identify accepted %q, want %d", tc.name, tc.status)
			case Status(err) != tc.status:
				t.Fatalf("Status(%v) = %d, want %d", err, Status(err), tc.status)
			case !strings.Contains(err.Error(), tc.reason):
				t.Fatalf("error %q does not say %q", err, tc.reason)
			}
		})
	}
}

func TestHMACRotation(t *testing.T) {
	const next = "the-next-secret-0123456789"
	v := mustNew(t, Config{HMACSecret: next, HMACPrevious: secret})
	for _, tc := range []struct {
		key string
		ok  bool
	}{{next, true}, {secret, true}, {"a-third-secret-0123456789", false}} {
		_, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(tc.key), "", mkClaims("alice")))
		if (err == nil) != tc.ok {
			t.Errorf("token signed with %q: %v, want ok=%v", tc.key, err, tc.ok)
		}
	}
	if _, err := New(Config{HMACPrevious: secret}); err == nil {
		t.Error("a previous secret without a current one was accepted")
	}
}

func TestBearerHeader(t *testing.T) {
	v := mustNew(t, Config{HMACSecret: secret})
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Authorization", "Bearer "+sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("bob")))
	id, err := v.Identify(r)
	if err != nil || id.ClientID != "bob" {
		t.Fatalf("Identify = %v, %v; want bob", id, err)
	}
}

func TestAuthOff(t *testing.T) {
	v := mustNew(t, Config{})
	id, err := v.Identify(httptest.NewRequest(http.MethodGet, "/ws?client_id=carol", nil))
	if err != nil || id.ClientID != "carol" || !id.CanSubscribe("admin:all") || !id.CanSend() {
		t.Fatalf("auth off: %+v, %v; want carol with every permission", id, err)
	}
	if _, err := v.Identify(httptest.NewRequest(http.MethodGet, "/ws", nil)); Status(err) != 400 {
		t.Fatalf("auth off, no client_id: %v, want 400", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	rsaSmall, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, cfg := range []Config{
		{HMACSecret: "short"},
		{PublicKeyFile: "/nonexistent.pem"},
		{PublicKeyFile: writePEM(t, &rsaSmall.PublicKey)},
		{JWKSURL: "ftp://x"},
		{HMACSecret: secret, Leeway: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
}

func TestPermissions(t *testing.T) {
	v := mustNew(t, Config{HMACSecret: secret})
	verify := func(c jwt.MapClaims) *Identity {
		id, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), "", c))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	all := verify(mkClaims("alice"))
	scoped := verify(mkClaims("alice", "channels", []string{"room:*", "user:{sub}", "news"}, "send", false))
	pub := verify(mkClaims("alice", "channels", []string{"room:*"}, "publish", []string{"room:lobby"}))
	nothing := verify(mkClaims("alice", "channels", []string{}))
	cases := []struct {
		id      *Identity
		name    string
		channel string
		sub     bool
		pub     bool
	}{
		{all, "all", "admin:all", true, true},
		{scoped, "scoped", "room:1", true, true},
		{scoped, "scoped", "room:", true, true},
		{scoped, "scoped", "roo", false, false},
		{scoped, "scoped", "user:alice", true, true},
		{scoped, "scoped", "user:bob", false, false},
		{scoped, "scoped", "user:alice2", false, false},
		{scoped, "scoped", "news", true, true},
		{scoped, "scoped", "newsroom", false, false},
		{pub, "publish", "room:1", true, false},
		{pub, "publish", "room:lobby", true, true},
		{nothing, "nothing", "room:1", false, false},
	}
	for _, tc := range cases {
		if got := tc.id.CanSubscribe(tc.channel); got != tc.sub {
			t.Errorf("%s.CanSubscribe(%q) = %v, want %v", tc.name, tc.channel, got, tc.sub)
		}
		if got := tc.id.CanPublish(tc.channel); got != tc.pub {
			t.Errorf("%s.CanPublish(%q) = %v, want %v", tc.name, tc.channel, got, tc.pub)
		}
	}
	if !all.CanSend() || scoped.CanSend() {
		t.Errorf("CanSend: default %v (want true), send:false %v (want false)", all.CanSend(), scoped.CanSend())
	}
}

func TestRefresh(t *testing.T) {
	v := mustNew(t, Config{HMACSecret: secret})
	old, _ := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice")))
	next, err := v.Refresh(old, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice", "exp", time.Now().Add(2*time.Hour).Unix())))
	if err != nil || !next.Expires.After(old.Expires) {
		t.Fatalf("Refresh = %v, %v; want a later expiry", next, err)
	}
	if _, err := v.Refresh(old, sign(t, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("bob"))); err == nil {
		t.Fatal("Refresh accepted another sub")
	}
}

func TestAPIKey(t *testing.T) {
	v := mustNew(t, Config{APIKey: "k3y"})
	for _, tc := range []struct {
		header string
		ok     bool
	}{{"Bearer k3y", true}, {"bearer k3y", true}, {"Bearer k3", false}, {"", false}, {"k3y", false}} {
		r := httptest.NewRequest(http.MethodPost, "/v1/publish", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		if got := v.APIKeyOK(r); got != tc.ok {
			t.Errorf("APIKeyOK(%q) = %v, want %v", tc.header, got, tc.ok)
		}
	}
	if !mustNew(t, Config{}).APIKeyOK(httptest.NewRequest(http.MethodPost, "/v1/publish", nil)) {
		t.Error("no API key configured: refused")
	}
}

// jwksServer serves a JWKS that the test can swap, and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	down    bool
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

// serve publishes the public halves of keys, by kid.
func (s *jwksServer) serve(t *testing.T, keys map[string]crypto.Signer) {
	set := jwk.NewSet()
	for kid, k := range keys {
		pk, err := jwk.PublicKeyOf(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		pk.Set(jwk.KeyIDKey, kid)
		set.AddKey(pk)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.body, s.down = b, false
	s.mu.Unlock()
}

func (s *jwksServer) setDown() {
	s.mu.Lock()
	s.down = true
	s.mu.Unlock()
}

func TestJWKSRotation(t *testing.T) {
	k1, _ := rsa.GenerateKey(rand.Reader, 2048)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, k3, _ := ed25519.GenerateKey(rand.Reader)
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.Signer{"k1": k1})
	v := mustNew(t, Config{JWKSURL: srv.URL})
	clock := time.Now()
	v.jwks.now = func() time.Time { return clock }

	check := func(step, token string, wantOK bool) {
		t.Helper()
		_, err := v.Verify(token)
		if (err == nil) != wantOK {
			t.Fatalf("%s: Verify = %v, want ok=%v", step, err, wantOK)
		}
	}
	wantFetches := func(step string, n int32) {
		t.Helper()
		if got := srv.fetches.Load(); got != n {
			t.Fatalf("%s: %d JWKS fetches, want %d", step, got, n)
		}
	}
	t1 := sign(t, jwt.SigningMethodRS256, k1, "k1", mkClaims("alice"))
	t2 := sign(t, jwt.SigningMethodES256, k2, "k2", mkClaims("alice"))
	t3 := sign(t, jwt.SigningMethodEdDSA, k3, "k3", mkClaims("alice"))

	check("first token", t1, true)
	check("cached key", t1, true)
	wantFetches("cached key", 1)
	check("kid unknown, signed with the right alg family but wrong key id", sign(t, jwt.SigningMethodRS256, k1, "nope", mkClaims("alice")), false)
	wantFetches("unknown kid within 30 s", 1)
	check("alg of another family than the key", sign(t, jwt.SigningMethodHS256, []byte(secret), "k1", mkClaims("alice")), false)
	check("no kid, one key in the set", sign(t, jwt.SigningMethodRS256, k1, "", mkClaims("alice")), true)

	// Rotation: k2 is added; within 30 s of the last fetch it is not seen.
	srv.serve(t, map[string]crypto.Signer{"k1": k1, "k2": k2})
	check("new kid before the refetch gap", t2, false)
	clock = clock.Add(31 * time.Second)
	check("new kid after the gap", t2, true)
	wantFetches("rotation", 2)
	check("old kid still in the set", t1, true)
	check("ES256 token under an RSA kid", sign(t, jwt.SigningMethodES256, k2, "k1", mkClaims("alice")), false)

	// The key server goes down: cached keys keep working, unknown kids fail.
	srv.setDown()
	clock = clock.Add(31 * time.Second)
	check("cached key while the URL is down", t1, true)
	check("unknown kid while the URL is down", t3, false)
	clock = clock.Add(11 * time.Minute) // past MaxAge: stale set, fetch fails, still served
	check("stale cached key while the URL is down", t2, true)

	// Back up with k1 retired: after MaxAge, k1 stops verifying.
	srv.serve(t, map[string]crypto.Signer{"k2": k2, "k3": k3})
	clock = clock.Add(31 * time.Second)
	check("k3 after the server came back", t3, true)
	clock = clock.Add(11 * time.Minute)
	check("k2 refreshes the stale set", t2, true)
	check("retired k1", t1, false)
}

func TestJWKSUnreachableAtStart(t *testing.T) {
	srv := newJWKSServer(t)
	srv.setDown()
	v := mustNew(t, Config{JWKSURL: srv.URL})
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, err := v.Verify(sign(t, jwt.SigningMethodRS256, k, "k", mkClaims("alice")))
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Verify with the JWKS down = %v, want a 401 naming the fetch failure", err)
	}
	if Status(err) != 401 {
		t.Fatalf("Status = %d, want 401", Status(err))
	}
}

func mustNew(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func BenchmarkVerify(b *testing.B) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, bc := range []struct {
		name  string
		v     *Verifier
		token string
	}{
		{"HS256", mustNew(b, Config{HMACSecret: secret}), sign(b, jwt.SigningMethodHS256, []byte(secret), "", mkClaims("alice", "channels", []string{"room:*"}))},
		{"RS256", mustNew(b, Config{PublicKeyFile: writePEM(b, &rsaKey.PublicKey)}), sign(b, jwt.SigningMethodRS256, rsaKey, "", mkClaims("alice"))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := bc.v.Verify(bc.token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
