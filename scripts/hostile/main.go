// Command hostile starts a local cluster with auth on (real binaries,
// loopback), connects a victim (alice) with a valid token, then tries what
// a hostile client would — no token, another user's token, forged and
// expired tokens, alg none, subscribing to her channels, publishing into
// them, the HTTP API without the key, a node without the balancer, her
// session, a connection flood — and prints what each attempt got. It
// exits non-zero if any attempt got more than it should, or if alice
// noticed (a reconnect, a message she should not get).
//
//	go run ./scripts/hostile
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

const (
	secret = "hostile-run-secret-0123456789"
	apiKey = "hostile-run-api-key"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}

func token(key, sub string, ttl time.Duration, extra ...any) string {
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix()}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i].(string)] = extra[i+1]
	}
	s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(key))
	return s
}

// victim is alice's real client and what reached her.
type victim struct {
	*client.Client
	mu       sync.Mutex
	directs  []client.Direct
	messages []client.Message
}

func run() error {
	ctx := context.Background()
	c, err := clustertest.Start(ctx, clustertest.Options{Nodes: 2,
		Args:     []string{"-token-hmac-secret", secret, "-api-key", apiKey},
		NodeArgs: []string{"-max-conns-per-client", "4"}})
	if err != nil {
		return err
	}
	defer c.Close()
	defer c.RemoveLogs()

	alice := &victim{}
	cfg := client.DefaultConfig()
	cfg.URL, cfg.ClientID = c.URL(), "alice"
	cfg.TokenFunc = func(context.Context) (string, error) {
		return token(secret, "alice", time.Hour, "channels", []string{"user:{sub}", "room:*"}), nil
	}
	cfg.OnDirect = func(d client.Direct) { alice.mu.Lock(); alice.directs = append(alice.directs, d); alice.mu.Unlock() }
	subscribed := make(chan struct{}, 1)
	cfg.OnSubscribed = func(wire.Frame) {
		select {
		case subscribed <- struct{}{}:
		default:
		}
	}
	if alice.Client, err = client.New(cfg); err != nil {
		return err
	}
	go alice.Run(ctx)
	defer alice.Close()
	if _, err := alice.Subscribe("user:alice", func(m client.Message) {
		alice.mu.Lock()
		alice.messages = append(alice.messages, m)
		alice.mu.Unlock()
	}); err != nil {
		return err
	}
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		return errors.New("alice never subscribed")
	}

	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "alice"}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	mallory := token(secret, "mallory", time.Hour, "channels", []string{"room:*"}, "send", false)
	node := "ws://" + c.Nodes[0].Addr + "/ws"

	type attempt struct {
		what, want string
		try        func() string
	}
	attempts := []attempt{
		{"connect as alice, no token", "401", func() string { return dial(c.URL() + "?client_id=alice") }},
		{"connect as alice with mallory's valid token", "401", func() string {
			return dial(c.URL() + "?client_id=alice&token=" + mallory)
		}},
		{"connect as alice, token signed with a guessed secret", "401", func() string {
			return dial(c.URL() + "?token=" + token("guessed-secret-0123456789", "alice", time.Hour))
		}},
		{"connect as alice, alg none", "401", func() string { return dial(c.URL() + "?token=" + none) }},
		{"connect as alice, her expired token", "401", func() string {
			return dial(c.URL() + "?token=" + token(secret, "alice", -time.Minute))
		}},
		{"connect to a node directly as alice, no token", "401", func() string { return dial(node + "?client_id=alice") }},
		{"mallory subscribes to user:alice", "forbidden", func() string {
			return request(c.URL()+"?token="+mallory, `{"op":"subscribe","channel":"user:alice","id":1}`)
		}},
		{"mallory subscribes to admin:all", "forbidden", func() string {
			return request(c.URL()+"?token="+mallory, `{"op":"subscribe","channel":"admin:all","id":1}`)
		}},
		{"mallory publishes into user:alice", "forbidden", func() string {
			return request(c.URL()+"?token="+mallory, `{"op":"publish","channel":"user:alice","data":"spoof","id":1}`)
		}},
		{"mallory (send:false) sends alice a direct", "forbidden", func() string {
			return request(c.URL()+"?token="+mallory, `{"op":"send","to":"alice","data":"spoof","id":1}`)
		}},
		{"mallory reuses alice's session (alice must stay)", "welcome as mallory", func() string {
			return dialKeep(c.URL() + "?token=" + mallory + "&session=" + alice.Session())
		}},
		{"POST /v1/publish user:alice, no API key", "401", func() string {
			return post(c.HTTP()+"/v1/publish", "", `{"channel":"user:alice","data":"spoof"}`)
		}},
		{"POST /v1/send to alice, wrong API key", "401", func() string {
			return post(c.HTTP()+"/v1/send", "guess", `{"client_id":"alice","data":"spoof"}`)
		}},
		{"POST /v1/send to a node directly, no API key", "401", func() string {
			return post("http://"+c.Nodes[0].Addr+"/v1/send", "", `{"client_id":"alice","data":"spoof"}`)
		}},
		{"trudy opens 6 connections (limit 4 per id per node)", "429 after 4", func() string {
			return flood(c.URL()+"?token="+token(secret, "trudy", time.Hour), 6)
		}},
	}
	fmt.Printf("%-56s %-30s %s\n", "attempt", "want", "got")
	failed := 0
	for _, a := range attempts {
		got := a.try()
		ok := strings.HasPrefix(got, a.want)
		mark := "ok"
		if !ok {
			mark, failed = "FAIL", failed+1
		}
		fmt.Printf("%-56s %-30s %s  %s\n", a.what, a.want, got, mark)
	}
	// A legitimate publish and direct (with the API key) behind the
	// attempts: once both arrived, anything an attempt let through would
	// have arrived before them.
	post(c.HTTP()+"/v1/publish", apiKey, `{"channel":"user:alice","data":"legit"}`)
	post(c.HTTP()+"/v1/send", apiKey, `{"client_id":"alice","data":"legit"}`)
	var directs, messages []string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		alice.mu.Lock()
		directs, messages = nil, nil
		for _, d := range alice.directs {
			directs = append(directs, string(d.Data))
		}
		for _, m := range alice.messages {
			messages = append(messages, string(m.Data))
		}
		alice.mu.Unlock()
		if len(directs) > 0 && len(messages) > 0 {
			break
		}
	}
	fmt.Printf("\nalice afterwards: state %s, reconnects %d, directs %v, messages on user:alice %v (want connected, 0, only the legit ones)\n",
		alice.State(), alice.Reconnects(), directs, messages)
	if alice.State() != client.StateConnected || alice.Reconnects() != 0 ||
		strings.Join(directs, ",") != `"legit"` || strings.Join(messages, ",") != `"legit"` {
		failed++
	}
	if failed > 0 {
		return fmt.Errorf("%d attempts got more than they should", failed)
	}
	return nil
}

// dial tries an upgrade and says what came back: the status of a refusal,
// or "welcome as <id>".
func dial(url string) string {
	nc, r, err := open(url)
	if err != nil {
		return describe(err)
	}
	defer nc.Close()
	f, err := readFrame(nc, r)
	if err != nil {
		return "error " + err.Error()
	}
	return "welcome as " + f.ClientID
}

// dialKeep is dial, leaving the connection open until the process exits:
// a session takeover would close alice's link while it lives.
func dialKeep(url string) string {
	nc, r, err := open(url)
	if err != nil {
		return describe(err)
	}
	f, err := readFrame(nc, r)
	if err != nil {
		return "error " + err.Error()
	}
	return "welcome as " + f.ClientID
}

// request connects and sends frame; it returns the error code of the reply,
// or its op.
func request(url, frame string) string {
	nc, r, err := open(url)
	if err != nil {
		return describe(err)
	}
	defer nc.Close()
	if _, err := readFrame(nc, r); err != nil {
		return "error " + err.Error()
	}
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientText(nc, []byte(frame)); err != nil {
		return "error " + err.Error()
	}
	f, err := readFrame(nc, r)
	switch {
	case err != nil:
		return "error " + err.Error()
	case f.Op == wire.OpError:
		return f.Code + " (connection kept: " + pingPong(nc, r) + ")"
	}
	return f.Op
}

func pingPong(nc net.Conn, r io.Reader) string {
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientText(nc, []byte(`{"op":"ping"}`)); err != nil {
		return "write failed"
	}
	if f, err := readFrame(nc, r); err != nil || f.Op != wire.OpPong {
		return "no pong"
	}
	return "pong"
}

// flood opens n connections of one id and says how many were welcomed
// before the first refusal.
func flood(url string, n int) string {
	var open_ []net.Conn
	defer func() {
		for _, c := range open_ {
			c.Close()
		}
	}()
	for i := range n {
		nc, r, err := open(url + fmt.Sprintf("&session=s%d", i))
		if err != nil {
			return describe(err) + fmt.Sprintf(" after %d", i)
		}
		open_ = append(open_, nc)
		if _, err := readFrame(nc, r); err != nil {
			return "error " + err.Error()
		}
	}
	return fmt.Sprintf("%d welcomed", n)
}

func open(url string) (net.Conn, io.Reader, error) { return wstest.Open(url, nil) }

func describe(err error) string {
	var se ws.StatusError
	if errors.As(err, &se) {
		return fmt.Sprint(int(se))
	}
	return "error " + err.Error()
}

// readFrame reads one text frame, skipping pongs (a close frame is an
// error with its code).
func readFrame(nc net.Conn, r io.Reader) (wire.Frame, error) {
	for {
		e, err := wstest.ReadEvent(nc, r, wstest.Timeout)
		switch {
		case err != nil:
			return wire.Frame{}, err
		case e.Closed:
			return wire.Frame{}, fmt.Errorf("closed %d", e.CloseCode)
		case e.Pong == nil:
			return e.Frame, nil
		}
	}
}

func post(url, key, body string) string {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return "error " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	var e struct{ Code string }
	json.Unmarshal(b, &e)
	return fmt.Sprintf("%d %s", resp.StatusCode, e.Code)
}
