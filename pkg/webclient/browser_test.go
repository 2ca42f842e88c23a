package webclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/bridge/redis/redistest"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const chromium = "/usr/bin/chromium"

// linked is true once the page is welcomed and has every channel subscribed
// again: the last timeline entry is complete.
const linked = `(() => {
	const r = window.ringcast, e = r && r.timeline.at(-1);
	return !!(e && r.client.state === 'connected' && e.to && e.subscribedMs != null);
})()`

// pageState summarises the page for failure messages.
const pageState = `JSON.stringify({state: ringcast.client.state, node: ringcast.client.node,
	states: ringcast.states.slice(-8), timeline: ringcast.timeline.slice(-4), received: ringcast.log.length})`

// TestBrowserFailover kills the node a page sits on, five times, and
// measures how long the page goes without messages.
func TestBrowserFailover(t *testing.T) {
	// The same node is killed and restarted five times in a row: with the
	// restart warm-up it would be damped as flapping (2, 4, 8, 16 s…). This
	// test measures the browser's failover, so the warm-up is off.
	c := startCluster(t, clustertest.Options{Nodes: 3, Args: []string{"-warmup", "-1s"}})
	ctx := newBrowser(t)
	const id = "browser-failover"
	navigate(t, ctx, "http://"+pageHost(t, c)+"/?client_id="+id)
	waitFor(t, ctx, 10*time.Second, "connected and subscribed to lobby", linked)

	var runs, page []time.Duration
	for run := range 5 {
		owner, err := c.Owner(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, 15*time.Second, "on its owner "+owner,
			fmt.Sprintf(`ringcast.client.node === %q && %s`, owner, linked))

		killed := time.Now()
		c.Node(owner).Kill()
		got := receiveAfter(t, ctx, c, run, 10*time.Second)
		runs = append(runs, got.Sub(killed).Round(time.Millisecond))
		if node := eval[string](t, ctx, `ringcast.client.node`); node == owner {
			t.Fatalf("run %d: page still on killed node %s", run, owner)
		}
		waitFor(t, ctx, 5*time.Second, "resubscribed", linked)
		page = append(page, time.Duration(eval[int](t, ctx, `ringcast.timeline.at(-1).subscribedMs`))*time.Millisecond)
		if runs[run] > time.Second {
			t.Logf("run %d took %v: %s", run, runs[run], eval[string](t, ctx, `JSON.stringify(ringcast.timeline.at(-1))`))
		}

		if run == 4 && os.Getenv("RINGCAST_SCREENSHOT") == "1" {
			waitFor(t, ctx, 5*time.Second, "cluster view showing "+owner+" down",
				fmt.Sprintf(`ringcast.cluster.nodes.some(n => n.id === %q && n.state !== 'alive')`, owner))
			screenshot(t, ctx, "/tmp/ringcast-demo.png")
		}
		// Restart it once the cluster has declared it dead: the ring changes
		// twice and the page is asked to move back to its owner.
		if err := c.WaitConverged(ctx, 2); err != nil {
			t.Fatal(err)
		}
		if err := c.Node(owner).Start(); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitConverged(ctx, 3); err != nil {
			t.Fatal(err)
		}
	}
	sorted := slices.Clone(runs)
	slices.Sort(sorted)
	t.Logf("browser failover: p50=%dms runs=%v (kill to next message received)", sorted[len(sorted)/2].Milliseconds(), runs)
	t.Logf("page timeline, disconnect to resubscribed: %v", page)
}

// receiveAfter publishes {run, seq} to lobby every 20 ms until the page has
// received one of this run, and returns when it did (the page's clock).
func receiveAfter(t *testing.T, ctx context.Context, c *clustertest.Cluster, run int, timeout time.Duration) time.Time {
	t.Helper()
	var at int64
	seq := 0
	err := testkit.Wait(ctx, timeout, func() error {
		seq++
		publish(ctx, c, map[string]int{"run": run, "seq": seq}) // fails while the cluster re-routes; the next try follows
		at = eval[int64](t, ctx, fmt.Sprintf(`ringcast.log.find(m => m.data && m.data.run === %d)?.at ?? 0`, run))
		if at == 0 {
			return errors.New("no message of this run yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("run %d: %v after %d publishes; page: %s", run, err, seq, eval[string](t, ctx, pageState))
	}
	return time.UnixMilli(at)
}

// TestBrowserHalfOpen blackholes the path between the browser and the
// balancer: no FIN, no RST, so only the page's heartbeat can notice.
func TestBrowserHalfOpen(t *testing.T) {
	c := startCluster(t, clustertest.Options{Nodes: 2, Heartbeat: "1s"})
	hole := newBlackhole(t, pageHost(t, c))
	ctx := newBrowser(t)
	navigate(t, ctx, "http://"+hole.addr()+"/?client_id=browser-halfopen")
	waitFor(t, ctx, 10*time.Second, "connected", linked)

	start := time.Now().UnixMilli()
	hole.set(true)
	waitFor(t, ctx, 8*time.Second, "disconnected by the heartbeat",
		fmt.Sprintf(`ringcast.states.some(s => s.state === 'disconnected' && s.at >= %d)`, start))
	reason := eval[string](t, ctx, `ringcast.states.findLast(s => s.state === 'disconnected').reason`)
	detected := eval[int64](t, ctx, `ringcast.states.findLast(s => s.state === 'disconnected').at`) - start
	if !strings.Contains(reason, "heartbeat") {
		t.Errorf("disconnect reason %q, want a heartbeat timeout", reason)
	}
	t.Logf("blackhole noticed after %d ms (heartbeat 1 s): %s", detected, reason)

	healed := time.Now().UnixMilli()
	hole.set(false)
	waitFor(t, ctx, 15*time.Second, "connected again",
		fmt.Sprintf(`ringcast.states.some(s => s.state === 'connected' && s.at >= %d) && %s`, healed, linked))
	receiveAfter(t, ctx, c, 1, 5*time.Second)
}

// TestBrowserHistoryReload leaves the page, publishes while it is gone and
// comes back: the page resumes from sessionStorage and gets exactly what it
// missed, once each, in order.
func TestBrowserHistoryReload(t *testing.T) {
	bridge := redistest.Start(t).URL()
	if ok, why := nodeAccepts(t, bridge); !ok {
		t.Skipf("node binary rejects -bridge %s (%s): history needs the Redis bridge", bridge, why)
	}
	c := startCluster(t, clustertest.Options{Nodes: 2, Bridge: bridge, HistorySize: 100})
	ctx := newBrowser(t)
	page := "http://" + pageHost(t, c) + "/?client_id=browser-history"
	navigate(t, ctx, page)
	waitFor(t, ctx, 10*time.Second, "connected", linked)

	publishN := func(phase string, n int) {
		for i := range n {
			if err := publish(ctx, c, map[string]any{"phase": phase, "seq": i}); err != nil {
				t.Fatalf("publish %s %d: %v", phase, i, err)
			}
		}
	}
	publishN("before", 3)
	waitFor(t, ctx, 5*time.Second, "3 messages before leaving", `ringcast.log.filter(m => m.data.phase === 'before').length === 3`)

	navigate(t, ctx, "about:blank")
	const n = 10
	publishN("away", n)
	navigate(t, ctx, page)
	waitFor(t, ctx, 10*time.Second, "the missed messages", fmt.Sprintf(`ringcast.log.length >= %d`, n))
	publishN("live", 1) // arrives after anything recovery could still deliver
	waitFor(t, ctx, 5*time.Second, "a live message", `ringcast.log.some(m => m.data.phase === 'live')`)

	type msg struct {
		Channel string `json:"channel"`
		Offset  int64  `json:"offset"`
		Data    struct {
			Phase string `json:"phase"`
			Seq   int    `json:"seq"`
		} `json:"data"`
	}
	got := eval[[]msg](t, ctx, `ringcast.log`)
	if len(got) != n+1 {
		t.Fatalf("after reload the page received %d messages, want %d missed + 1 live: %+v", len(got), n, got)
	}
	for i, m := range got[:n] {
		if m.Data.Phase != "away" || m.Data.Seq != i || m.Channel != "lobby" {
			t.Errorf("message %d = %s %+v, want away seq %d on lobby", i, m.Channel, m.Data, i)
		}
		if i > 0 && m.Offset != got[i-1].Offset+1 {
			t.Errorf("message %d offset %d follows %d, want consecutive", i, m.Offset, got[i-1].Offset)
		}
	}
	if last := got[n].Data; last.Phase != "live" {
		t.Errorf("last message %+v, want the live one", last)
	}
	if rec := eval[any](t, ctx, `ringcast.timeline[0].recovered.lobby ?? null`); rec != true {
		t.Errorf("subscribed after reload: recovered = %v, want true", rec)
	}
}

// TestBrowserTLS: the demo page served over HTTPS by a balancer with a
// certificate from a test CA the browser trusts connects with wss:// and
// receives what is published.
func TestBrowserTLS(t *testing.T) {
	ca := testkit.NewCA(t)
	certFile, keyFile := ca.WritePair(t, t.TempDir(), 1)
	c := startCluster(t, clustertest.Options{Nodes: 1, TLSCert: certFile, TLSKey: keyFile, TLSRoots: ca.Pool()})
	ctx := newBrowser(t, chromedp.Flag("ignore-certificate-errors-spki-list", ca.SPKIHash()))
	navigate(t, ctx, "https://"+c.Balancers[0].Addr+"/?client_id=browser-tls")
	waitFor(t, ctx, 15*time.Second, "connected over wss:// and subscribed", `location.protocol === 'https:' && `+linked)
	resp, err := c.Client().Post(c.HTTP()+"/v1/publish", "application/json",
		strings.NewReader(`{"channel":"lobby","data":"over-tls"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/publish: %s", resp.Status)
	}
	waitFor(t, ctx, 10*time.Second, "the message published over HTTPS", `JSON.stringify(ringcast.log).includes('over-tls')`)
}

// ---- helpers ---------------------------------------------------------------

func startCluster(t *testing.T, o clustertest.Options) *clustertest.Cluster {
	t.Helper()
	if o.LogDir == "" {
		o.LogDir = t.TempDir()
	}
	c, err := clustertest.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// pageHost returns the host:port that serves the demo page, the client and
// the cluster API: the balancer.
func pageHost(t *testing.T, c *clustertest.Cluster) string {
	t.Helper()
	resp, err := http.Get(c.HTTP() + "/client.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("balancer: GET /client.js: %s: webclient.Handler is not mounted", resp.Status)
	}
	return c.Balancers[0].Addr
}

func publish(ctx context.Context, c *clustertest.Cluster, data any) error {
	code, err := clustertest.PostJSON(ctx, c.HTTP()+"/v1/publish", map[string]any{"channel": "lobby", "data": data}, nil)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("POST /v1/publish: status %d", code)
	}
	return err
}

// newBrowser starts a headless chromium with a fresh profile and returns a
// context for one tab. Uncaught exceptions in the page fail the test.
func newBrowser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium: %v", err)
		}
		t.Skipf("no chromium at %s: apt-get install chromium", chromium)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
	)
	opts = append(opts, extra...)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil { // start the browser and the tab
		t.Fatal(err)
	}
	var mu sync.Mutex
	var exceptions []string
	err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			mu.Lock()
			defer mu.Unlock()
			d := e.ExceptionDetails
			text := d.Text
			if d.Exception != nil {
				text += " " + d.Exception.Description
			}
			exceptions = append(exceptions, text)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range exceptions {
			t.Errorf("page threw: %s", e)
		}
	})
	return ctx
}

func navigate(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("navigate %s: %v", url, err)
	}
}

// eval evaluates expr in the page and decodes its value.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor polls the predicate in the page every 20 ms until it is true.
func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what, predicate string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](predicate,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](pageState))
		t.Fatalf("page: %s: %v\npage state: %s", what, err, state)
	}
}

func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(path, png, 0o644)
	}
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	t.Logf("screenshot: %s", path)
}

// blackhole forwards TCP to a target and can stop moving bytes in both
// directions without closing anything: a half-open path. Held bytes (and
// closes) go through once it opens again, as after a transient outage.
type blackhole struct {
	ln   net.Listener
	to   string
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	open  chan struct{} // closed while bytes flow
	conns map[net.Conn]bool
}

func newBlackhole(t *testing.T, to string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, to: to, done: make(chan struct{}), open: make(chan struct{}), conns: map[net.Conn]bool{}}
	close(b.open)
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(b.close)
	return b
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }

// set starts (true) or ends (false) the blackhole.
func (b *blackhole) set(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.open:
		if on {
			b.open = make(chan struct{})
		}
	default:
		if !on {
			close(b.open)
		}
	}
}

// wait blocks while the hole is on; false when the forwarder is closing.
func (b *blackhole) wait() bool {
	b.mu.Lock()
	open := b.open
	b.mu.Unlock()
	select {
	case <-open:
		return true
	case <-b.done:
		return false
	}
}

func (b *blackhole) accept() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", b.to, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		b.conns[c], b.conns[up] = true, true
		b.mu.Unlock()
		b.wg.Add(2)
		go b.pipe(up, c)
		go b.pipe(c, up)
	}
}

func (b *blackhole) pipe(dst, src net.Conn) {
	defer b.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !b.wait() {
			return
		}
		if n > 0 {
			dst.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (b *blackhole) close() {
	close(b.done)
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// nodeAccepts runs a lone node with -bridge bridge and reports whether it
// comes up (answers /healthz) rather than exiting.
func nodeAccepts(t *testing.T, bridge string) (bool, string) {
	t.Helper()
	dir, err := clustertest.Build()
	if err != nil {
		t.Fatal(err)
	}
	addr, err := clustertest.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	gossip, err := clustertest.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd := exec.Command(filepath.Join(dir, "node"), "-id", "probe", "-addr", addr, "-gossip", gossip, "-bridge", bridge, "-log", "json")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	err = testkit.Wait(t.Context(), 10*time.Second, func() error {
		select {
		case <-exited:
			return nil
		default:
		}
		return clustertest.GetJSON(t.Context(), "http://"+addr+"/healthz", nil)
	})
	cmd.Process.Kill()
	<-exited
	if err != nil {
		t.Fatalf("probe node with -bridge %s neither came up nor exited: %v", bridge, err)
	}
	if !cmd.ProcessState.Exited() { // still up when killed
		return true, ""
	}
	log := strings.TrimSpace(out.String())
	if !strings.Contains(log, "bridge") {
		t.Fatalf("probe node with -bridge %s exited: %s", bridge, log)
	}
	return false, log[strings.LastIndexByte(log, '\n')+1:]
}

// TestBrowserGetToken: with auth on, the page's getToken is asked before
// the first connect, shortly before each exp (a refresh, no reconnect),
// and again when the node it sits on dies.
func TestBrowserGetToken(t *testing.T) {
	const secret = "browser-secret-0123456789abcdef"
	const id = "browser-token"
	var minted atomic.Int32
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		minted.Add(1)
		// 4 s tokens: the client must refresh before exp to stay connected.
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": id, "exp": time.Now().Add(4 * time.Second).Unix(), "channels": []string{"lobby"},
		}).SignedString([]byte(secret))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", "*")
		fmt.Fprint(w, tok)
	}))
	t.Cleanup(tokens.Close)
	c := startCluster(t, clustertest.Options{Nodes: 2, Args: []string{"-token-hmac-secret", secret}})
	ctx := newBrowser(t)
	navigate(t, ctx, "http://"+pageHost(t, c)+"/healthz") // any page of the balancer's origin
	eval[bool](t, ctx, fmt.Sprintf(`(() => {
		window.tk = { calls: 0, welcomes: [], errors: [] };
		import('/client.js').then(({ RingcastClient }) => {
			const c = new RingcastClient('/ws', { clientId: %q, getToken: async () => {
				tk.calls++;
				return (await fetch(%q)).text();
			} });
			c.on('welcome', (w) => tk.welcomes.push(w.node));
			c.on('error', (e) => tk.errors.push(e.code));
			c.subscribe('lobby', () => {});
			window.tk.client = c;
		});
		return true;
	})()`, id, tokens.URL))
	waitFor(t, ctx, 10*time.Second, "welcomed after one getToken", `tk.welcomes.length === 1 && tk.calls === 1`)
	waitFor(t, ctx, 15*time.Second, "two refreshes without a reconnect", `tk.calls >= 3`)
	if w := eval[int](t, ctx, `tk.welcomes.length`); w != 1 {
		t.Fatalf("%d welcomes while refreshing, want 1: the token was refreshed in place", w)
	}
	owner, err := c.Owner(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	before := eval[int](t, ctx, `tk.calls`)
	c.Node(owner).Kill()
	waitFor(t, ctx, 15*time.Second, "reconnected elsewhere with a new token",
		fmt.Sprintf(`tk.welcomes.length === 2 && tk.client.node !== %q && tk.calls > %d`, owner, before))
	if errs := eval[[]string](t, ctx, `tk.errors`); len(errs) > 0 {
		t.Errorf("page errors %q, want none", errs)
	}
	if n := minted.Load(); int(n) != eval[int](t, ctx, `tk.calls`) {
		t.Errorf("token server minted %d, the page asked %d times", n, eval[int](t, ctx, `tk.calls`))
	}
}

// TestBrowserDemoToken: the demo page takes ?token=, connects as its sub and
// shows what the token grants; a subscribe the token forbids is reported
// and the page stays connected.
func TestBrowserDemoToken(t *testing.T) {
	const secret = "browser-secret-0123456789abcdef"
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "demo-alice", "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"lobby", "room:*"},
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clustertest.Options{Nodes: 1, Args: []string{"-token-hmac-secret", secret}})
	ctx := newBrowser(t)
	navigate(t, ctx, "http://"+pageHost(t, c)+"/?token="+tok)
	waitFor(t, ctx, 10*time.Second, "connected as the token's sub", linked+` && ringcast.client.clientId === 'demo-alice'`)
	if g := eval[string](t, ctx, `document.getElementById('grants').textContent`); !strings.Contains(g, "lobby, room:*") {
		t.Errorf("grants shown %q, want the token's channels", g)
	}
	eval[bool](t, ctx, `(ringcast.subscribe('admin:all'), true)`)
	waitFor(t, ctx, 5*time.Second, "the forbidden subscribe reported", `document.getElementById('result').textContent.includes('forbidden')`)
	if s := eval[string](t, ctx, `ringcast.client.state`); s != "connected" {
		t.Errorf("state %q after a forbidden subscribe, want connected", s)
	}
}
