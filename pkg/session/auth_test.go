package session

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

const testSecret = "node-test-secret-0123456789"

func mint(t *testing.T, c jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authServer(t *testing.T, edit func(*testConfig)) *testServer {
	v, err := auth.New(auth.Config{HMACSecret: testSecret, Leeway: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return start(t, func(c *testConfig) {
		c.Auth = v
		if edit != nil {
			edit(c)
		}
	})
}

func (n *testServer) dialQuery(t *testing.T, name, query string) (*wstest.Conn, error) {
	t.Helper()
	return wstest.Dial(t, "ws://"+n.addr()+"/ws?"+query, name, nil)
}

// connectAs dials with token (and a raw query suffix) and reads the welcome.
func (n *testServer) connectAs(t *testing.T, name, token, extra string) *wstest.Conn {
	t.Helper()
	c, err := n.dialQuery(t, name, "token="+token+extra)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	if w := c.Expect(wire.OpWelcome); w.ClientID != name {
		t.Fatalf("welcome client_id %q, want %q", w.ClientID, name)
	}
	return c
}

func TestAuthHandshake(t *testing.T) {
	t.Parallel()
	n := authServer(t, nil)
	hour := time.Now().Add(time.Hour).Unix()
	for _, tc := range []struct {
		name, query string
		status      int
	}{
		{"no token", "client_id=alice", 401},
		{"another user's id", "client_id=alice&token=" + mint(t, jwt.MapClaims{"sub": "mallory", "exp": hour}), 401},
		{"expired", "token=" + mint(t, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(-time.Minute).Unix()}), 401},
		{"bad session", "session=a%20b&token=" + mint(t, jwt.MapClaims{"sub": "alice", "exp": hour}), 400},
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+n.addr()+"/ws?"+tc.query, nil)
		for k, v := range map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="} {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d (%s), want %d", tc.name, resp.StatusCode, body, tc.status)
		}
		if tc.status == 401 && !strings.Contains(string(body), `"code":"unauthorized"`) {
			t.Errorf("%s: body %s, want the JSON error with code unauthorized", tc.name, body)
		}
	}
	n.connectAs(t, "alice", mint(t, jwt.MapClaims{"sub": "alice", "exp": hour}), "&client_id=alice")
}

func TestAuthPermissions(t *testing.T) {
	t.Parallel()
	n := authServer(t, nil)
	hour := time.Now().Add(time.Hour).Unix()
	c := n.connectAs(t, "alice", mint(t, jwt.MapClaims{"sub": "alice", "exp": hour,
		"channels": []string{"room:*", "user:{sub}"}, "publish": []string{"room:lobby"}, "send": false}), "")
	for _, req := range []string{
		`{"op":"subscribe","channel":"admin:all","id":1}`,
		`{"op":"subscribe","channel":"user:bob","id":2}`,
		`{"op":"publish","channel":"room:1","data":1,"id":3}`,
		`{"op":"send","to":"bob","data":1,"id":4}`,
	} {
		c.Send(req)
		e := c.Expect(wire.OpError)
		if e.Code != wire.CodeForbidden || len(e.ID) == 0 {
			t.Errorf("%s: error %+v, want forbidden with the id", req, e)
		}
	}
	c.RoundTrip() // the connection stays open
	c.Send(`{"op":"subscribe","channel":"user:alice","id":5}`)
	c.Expect(wire.OpSubscribed)
	c.Send(`{"op":"subscribe","channel":"room:lobby","id":6}`)
	c.Expect(wire.OpSubscribed)
	c.Send(`{"op":"publish","channel":"room:lobby","data":7,"id":7}`)
	for range 2 { // ack and own message, in either order
		e, err := c.Read(5 * time.Second)
		if err != nil || (e.Frame.Op != wire.OpAck && e.Frame.Op != wire.OpMessage) {
			t.Fatalf("after an allowed publish: %s %v, want ack and message", e.Raw, err)
		}
	}
}

func TestAuthExpiryAndRefresh(t *testing.T) {
	t.Parallel()
	n := authServer(t, nil)
	soon := func(d time.Duration) jwt.MapClaims {
		return jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(d).Unix()}
	}
	// exp has a one-second resolution: 2 s leaves at least 1 s.
	c := n.connectAs(t, "alice", mint(t, soon(2*time.Second)), "")
	start := time.Now()
	c.ExpectClose(wire.CloseUnauthorized, 0, 5*time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed 4001 after %v, want by exp", d)
	}

	r := n.connectAs(t, "alice", mint(t, soon(2*time.Second)), "")
	r.Send(`{"op":"refresh","token":"` + mint(t, jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(time.Hour).Unix()}) + `","id":1}`)
	if e := r.Expect(wire.OpError); e.Code != wire.CodeUnauthorized {
		t.Errorf("refresh with another sub: %+v, want unauthorized", e)
	}
	exp := time.Now().Add(time.Hour).Unix()
	r.Send(`{"op":"refresh","token":"` + mint(t, jwt.MapClaims{"sub": "alice", "exp": exp}) + `","id":2}`)
	if f := r.Expect(wire.OpRefreshed); f.Exp == nil || *f.Exp != exp || string(f.ID) != "2" {
		t.Errorf("refreshed = %+v, want exp %d and id 2", f, exp)
	}
	// Past the first token's exp the refreshed connection is still served.
	time.Sleep(3 * time.Second)
	r.RoundTrip()
}

func TestSeveralConnsPerClient(t *testing.T) {
	t.Parallel()
	n := authServer(t, func(c *testConfig) { c.MaxConnsPerClient = 2 })
	tok := mint(t, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()})
	tab1 := n.connectAs(t, "alice", tok, "&session=tab1")
	tab2 := n.connectAs(t, "alice", tok, "&session=tab2")
	// The limit counts attached connections; the welcome goes out first.
	testkit.Eventually(t, 5*time.Second, func() bool { return len(n.hub.Conns("alice")) == 2 },
		"alice's two connections not attached")
	_, err := n.dialQuery(t, "alice", "token="+tok+"&session=tab3")
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != http.StatusTooManyRequests {
		t.Fatalf("third connection: %v, want 429", err)
	}
	bob := n.connectAs(t, "bob", mint(t, jwt.MapClaims{"sub": "bob"}), "")
	bob.Send(`{"op":"send","to":"alice","data":"hi","id":1}`)
	bob.Expect(wire.OpAck)
	for _, c := range []*wstest.Conn{tab1, tab2} {
		if d := c.Expect(wire.OpDirect); string(d.Data) != `"hi"` {
			t.Errorf("direct %+v, want hi on both tabs", d)
		}
	}
	// A reload of tab2 replaces it (and is not counted against the limit).
	tab2b := n.connectAs(t, "alice", tok, "&session=tab2")
	tab2.ExpectClose(wire.CloseReplaced, 0, 5*time.Second)
	tab1.RoundTrip()
	tab2b.RoundTrip()
}
