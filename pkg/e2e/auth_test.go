package e2e

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

const (
	e2eSecret = "e2e-secret-0123456789abcdef"
	e2eAPIKey = "e2e-api-key"
)

// hs256 mints a token for sub with exp after ttl and extra claims.
func hs256(t *testing.T, secret, sub string, ttl time.Duration, extra ...any) string {
	t.Helper()
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix()}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i].(string)] = extra[i+1]
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// upgradeStatus sends a WebSocket upgrade to the balancer and returns the
// refusal's status and body (101 for an accepted upgrade).
func upgradeStatus(t *testing.T, c *clustertest.Cluster, query string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.HTTP()+"/ws?"+query, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// dialAs opens a raw WebSocket through the balancer with query and reads
// the welcome.
func dialAs(t *testing.T, c *clustertest.Cluster, name, query string) *wstest.Conn {
	t.Helper()
	rc, err := wstest.Dial(t, c.URL()+"?"+query, name, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	rc.Expect(wire.OpWelcome)
	return rc
}

// authClient is a Go client whose TokenFunc mints tokens and counts calls.
type authClient struct {
	*client.Client
	tokens     atomic.Int32
	mu         sync.Mutex
	directs    []string
	subscribed map[string]time.Time
	node       string
}

func startAuthClient(t *testing.T, c *clustertest.Cluster, sub string, ttl time.Duration, channels ...string) *authClient {
	t.Helper()
	ac := &authClient{subscribed: map[string]time.Time{}}
	cfg := client.DefaultConfig()
	cfg.URL, cfg.ClientID = c.URL(), sub
	cfg.MinBackoff, cfg.DialTimeout = 50*time.Millisecond, 2*time.Second
	cfg.TokenFunc = func(context.Context) (string, error) {
		ac.tokens.Add(1)
		return hs256(t, e2eSecret, sub, ttl), nil
	}
	cfg.OnDirect = func(d client.Direct) {
		ac.mu.Lock()
		ac.directs = append(ac.directs, string(d.Data))
		ac.mu.Unlock()
	}
	cfg.OnWelcome = func(w wire.Frame) {
		ac.mu.Lock()
		ac.node = w.Node
		ac.mu.Unlock()
	}
	cfg.OnSubscribed = func(f wire.Frame) {
		ac.mu.Lock()
		ac.subscribed[f.Channel] = time.Now()
		ac.mu.Unlock()
	}
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ac.Client = cl
	done := make(chan struct{})
	go func() { cl.Run(context.Background()); close(done) }()
	t.Cleanup(func() { cl.Close(); <-done })
	for _, ch := range channels {
		if _, err := cl.Subscribe(ch, func(client.Message) {}); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, sub+" connected and subscribed", func() bool {
		ac.mu.Lock()
		defer ac.mu.Unlock()
		return cl.State() == client.StateConnected && len(ac.subscribed) == len(channels)
	})
	return ac
}

func (ac *authClient) gotDirects() []string {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	return append([]string(nil), ac.directs...)
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, timeout, cond, "%s", what)
}

// TestAuth runs the identity contract against real binaries with an HMAC
// secret and an API key on every process.
func TestAuth(t *testing.T) {
	c := startCluster(t, clustertest.Options{Nodes: 2, Args: []string{"-token-hmac-secret", e2eSecret, "-api-key", e2eAPIKey}})
	ctx := context.Background()
	alice := startAuthClient(t, c, "alice", time.Hour, "room")

	t.Run("401 before upgrade", func(t *testing.T) {
		none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "alice"})
		noneToken, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
		for _, tc := range []struct{ name, query string }{
			{"no token", "client_id=alice"},
			{"another user's token", "client_id=alice&token=" + hs256(t, e2eSecret, "mallory", time.Hour)},
			{"forged signature", "token=" + hs256(t, "not-the-cluster-secret-xx", "alice", time.Hour)},
			{"alg none", "token=" + noneToken},
			{"expired", "token=" + hs256(t, e2eSecret, "alice", -time.Minute)},
		} {
			code, body := upgradeStatus(t, c, tc.query)
			if code != http.StatusUnauthorized || !strings.Contains(body, `"code":"unauthorized"`) {
				t.Errorf("%s: %d %s, want 401 unauthorized", tc.name, code, body)
			}
		}
	})

	t.Run("takeover impossible", func(t *testing.T) {
		if n := alice.Reconnects(); n != 0 {
			t.Fatalf("alice reconnected %d times while others tried her id, want 0", n)
		}
		var out map[string]any
		if code, _ := clustertest.PostJSONKey(ctx, c.HTTP()+"/v1/send", "", map[string]any{"client_id": "alice", "data": "x"}, &out); code != 401 {
			t.Errorf("POST /v1/send without the API key = %d, want 401", code)
		}
		if code, err := clustertest.PostJSONKey(ctx, c.HTTP()+"/v1/send", e2eAPIKey, map[string]any{"client_id": "alice", "data": "for-alice"}, &out); code != 200 || err != nil || out["delivered"] != true {
			t.Fatalf("POST /v1/send = %d %v %v, want delivered", code, out, err)
		}
		waitUntil(t, 5*time.Second, "alice receives her direct", func() bool { return len(alice.gotDirects()) == 1 })
	})

	t.Run("two tabs both receive a send", func(t *testing.T) {
		tab2 := startAuthClient(t, c, "alice", time.Hour)
		if tab2.Session() == alice.Session() {
			t.Fatal("two Clients share a session")
		}
		bob := dialAs(t, c, "bob", "token="+hs256(t, e2eSecret, "bob", time.Hour))
		bob.Send(`{"op":"send","to":"alice","data":"both","id":1}`)
		bob.Expect(wire.OpAck)
		waitUntil(t, 5*time.Second, "both tabs receive the send", func() bool {
			return len(alice.gotDirects()) == 2 && len(tab2.gotDirects()) == 1
		})
		if alice.Reconnects() != 0 || tab2.Reconnects() != 0 {
			t.Errorf("reconnects: tab1 %d, tab2 %d; want 0: tabs of one id coexist", alice.Reconnects(), tab2.Reconnects())
		}
	})

	t.Run("forbidden subscribe keeps the socket", func(t *testing.T) {
		rc := dialAs(t, c, "carol", "token="+hs256(t, e2eSecret, "carol", time.Hour, "channels", []string{"room:*"}))
		rc.Send(`{"op":"subscribe","channel":"admin:all","id":1}`)
		if e := rc.Expect(wire.OpError); e.Code != wire.CodeForbidden {
			t.Fatalf("subscribe admin:all: %+v, want forbidden", e)
		}
		rc.Send(`{"op":"subscribe","channel":"room:1","id":2}`)
		rc.Expect(wire.OpSubscribed)
		rc.RoundTrip()
	})

	t.Run("4001 at exp", func(t *testing.T) {
		rc := dialAs(t, c, "dave", "token="+hs256(t, e2eSecret, "dave", 2*time.Second))
		start := time.Now()
		rc.ExpectClose(wire.CloseUnauthorized, 0, 12*time.Second)
		// exp (1 s resolution) plus the 5 s default leeway.
		if d := time.Since(start); d > 9*time.Second {
			t.Fatalf("closed 4001 after %v, want at exp + leeway", d)
		}
	})

	t.Run("refresh extends", func(t *testing.T) {
		// 3 s tokens (plus 5 s leeway): without the refreshes the link
		// would be closed 4001 within 8 s.
		start := time.Now()
		erin := startAuthClient(t, c, "erin", 3*time.Second)
		waitUntil(t, 20*time.Second, "five refreshes", func() bool { return erin.tokens.Load() >= 6 })
		if d := time.Since(start); d < 9*time.Second {
			t.Fatalf("six tokens within %v: refreshed too eagerly", d)
		}
		if n := erin.Reconnects(); n != 0 {
			t.Errorf("erin reconnected %d times past her first token's exp, want 0: refresh keeps the link", n)
		}
	})

	t.Run("failover with auth", func(t *testing.T) {
		alice.mu.Lock()
		owner := alice.node
		alice.mu.Unlock()
		before := alice.tokens.Load()
		killed := time.Now()
		c.Node(owner).Kill()
		waitUntil(t, 15*time.Second, "alice resubscribed on a live node with a new token", func() bool {
			alice.mu.Lock()
			defer alice.mu.Unlock()
			return alice.node != owner && alice.subscribed["room"].After(killed) && alice.tokens.Load() > before
		})
		t.Logf("alice back on %s in %v", alice.Node(), time.Since(killed).Round(time.Millisecond))
	})
}

// TestAuthJWKS: tokens signed with a key the processes fetch from a JWKS URL.
func TestAuthJWKS(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Write(jwksOf(t, map[string]crypto.Signer{"k1": key}))
	}))
	t.Cleanup(srv.Close)
	c := startCluster(t, clustertest.Options{Nodes: 2, Args: []string{"-token-jwks-url", srv.URL, "-token-issuer", "https://auth.example"}})
	mint := func(kid, iss string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"sub": "alice", "iss": iss, "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	rc := dialAs(t, c, "alice", "token="+mint("k1", "https://auth.example"))
	rc.RoundTrip()
	for _, tc := range []struct{ name, token string }{
		{"wrong issuer", mint("k1", "https://evil.example")},
		{"unknown kid", mint("k9", "https://auth.example")},
		{"HMAC with the JWKS kid", hs256(t, e2eSecret, "alice", time.Hour)},
	} {
		if code, body := upgradeStatus(t, c, "token="+tc.token); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", tc.name, code, body)
		}
	}
	// The balancer and the node the connection landed on fetched once each;
	// the unknown kid within 30 s fetched nothing more.
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d JWKS fetches, want 2 (the balancer and the owner node, once each)", n)
	}
}

func jwksOf(t *testing.T, keys map[string]crypto.Signer) []byte {
	set := jwk.NewSet()
	for kid, k := range keys {
		pk, err := jwk.PublicKeyOf(k.Public())
		if err != nil {
			t.Error(err)
			return nil
		}
		pk.Set(jwk.KeyIDKey, kid)
		set.AddKey(pk)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Error(err)
	}
	return b
}
