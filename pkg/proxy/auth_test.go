package proxy

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func TestAuthBeforeDial(t *testing.T) {
	const secret = "proxy-test-secret-0123456789"
	v, err := auth.New(auth.Config{HMACSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	token := func(sub string, exp time.Duration) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(exp).Unix()}).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	b := startBackend(t, "n1", nil)
	pick := &idPicker{addr: b.addr()}
	_, addr, _ := startProxy(t, Config{Auth: v}, pick)

	for _, tt := range []struct {
		name, req string
	}{
		{"no token", wstest.UpgradeRequest("alice")},
		{"expired", wstest.UpgradeRequest("alice&token=" + token("alice", -time.Hour))},
		{"another user's id", wstest.UpgradeRequest("alice&token=" + token("mallory", time.Hour))},
		{"garbage", wstest.UpgradeRequest("alice&token=x.y.z")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := wstest.DialRaw(t, addr, tt.req)
			var body struct{ Code string }
			if c.Resp.StatusCode != http.StatusUnauthorized || json.Unmarshal([]byte(c.Body), &body) != nil || body.Code != "unauthorized" {
				t.Errorf("status %d body %q, want 401 with code unauthorized", c.Resp.StatusCode, c.Body)
			}
		})
	}
	if n := b.Accepted(); n != 0 {
		t.Errorf("backend accepted %d connections before a valid token, want 0", n)
	}
	if ids := pick.picked(); len(ids) != 0 {
		t.Errorf("Pick called for %q before a valid token, want no call", ids)
	}

	// A valid token in the header, without client_id: routed by its sub.
	req := strings.Replace(wstest.UpgradeRequest("x"), "?client_id=x", "", 1)
	req = strings.Replace(req, "\r\n\r\n", "\r\nAuthorization: Bearer "+token("bob", time.Hour)+"\r\n\r\n", 1)
	c := wstest.DialRaw(t, addr, req)
	if c.Resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("valid token: status %d, want 101", c.Resp.StatusCode)
	}
	if ids := pick.picked(); !slices.Equal(ids, []string{"bob"}) {
		t.Fatalf("Pick called for %q, want one call for bob", ids)
	}
}

// idPicker routes everything to addr and records the client ids it routed.
type idPicker struct {
	addr string
	mu   sync.Mutex
	ids  []string
}

func (p *idPicker) Pick(clientID string, _ []string) (string, string, error) {
	p.mu.Lock()
	p.ids = append(p.ids, clientID)
	p.mu.Unlock()
	return "n1", p.addr, nil
}

func (p *idPicker) picked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ids)
}
