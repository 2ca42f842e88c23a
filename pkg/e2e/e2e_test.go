package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wstest"
)

func startCluster(t *testing.T, o clustertest.Options) *clustertest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts processes")
	}
	c, err := clustertest.Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.All() {
				t.Logf("--- %s log (tail)\n%s", p.Name, tail(p.Log(), 4000))
			}
		}
		c.Close()
		for _, p := range c.All() {
			if strings.Contains(p.Log(), "WARNING: DATA RACE") {
				t.Errorf("%s reported a data race:\n%s", p.Name, tail(p.Log(), 8000))
			}
		}
		if !t.Failed() {
			c.RemoveLogs()
		}
	})
	return c
}

// startNetCluster is startCluster with every process in a network
// namespace of its own (clustertest.NewNet); skipped without root,
// iproute2 and nftables.
func startNetCluster(t *testing.T, o clustertest.Options) (*clustertest.Net, *clustertest.Cluster) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts processes")
	}
	if err := clustertest.NetSupported(); err != nil {
		t.Skip(err)
	}
	n, err := clustertest.NewNet(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	c, err := n.Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.All() {
				t.Logf("--- %s log (tail)\n%s", p.Name, tail(p.Log(), 3000))
			}
		}
		c.Close()
		if !t.Failed() {
			c.RemoveLogs()
		}
	})
	return n, c
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func newFleet(t *testing.T, c *clustertest.Cluster, prefix string, n int, channels ...string) *clustertest.Fleet {
	t.Helper()
	f, err := clustertest.NewFleet(context.Background(), c.URL(), prefix, n, channels, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func TestCrossNodeDelivery(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 3})
	f := newFleet(t, c, "u", 30, "room")

	nodes := map[string]int{}
	for _, m := range f.Clients {
		owner, err := c.Owner(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.Node() != owner {
			t.Errorf("client %s is on %s, want its owner %s", m.ID, m.Node(), owner)
		}
		nodes[m.Node()]++
	}
	if len(nodes) != 3 {
		t.Fatalf("30 clients landed on %d nodes %v, want all 3", len(nodes), nodes)
	}

	// A WebSocket publish reaches every subscriber on every node, the
	// publisher included.
	if err := f.Clients[0].Client.Publish(ctx, "room", "hello"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, 5*time.Second, "given hello", func(m *clustertest.Member) bool { return m.HasData("room", "hello") }); err != nil {
		t.Fatal(err)
	}
	for _, msg := range f.Clients[1].Messages("room") {
		if msg.From != f.Clients[0].ID {
			t.Errorf("message from = %q, want %q", msg.From, f.Clients[0].ID)
		}
	}

	// So does an HTTP publish through the balancer.
	var ok struct{ OK bool }
	if code, err := clustertest.PostJSON(ctx, c.HTTP()+"/v1/publish", map[string]any{"channel": "room", "data": map[string]int{"n": 1}}, &ok); err != nil || code != 200 || !ok.OK {
		t.Fatalf("POST /v1/publish = %d %v %+v", code, err, ok)
	}
	if err := f.WaitAll(ctx, 5*time.Second, "given the HTTP publish", func(m *clustertest.Member) bool { return m.HasData("room", map[string]int{"n": 1}) }); err != nil {
		t.Fatal(err)
	}

	// Direct messages cross nodes, over the socket and over HTTP.
	from, to := f.Clients[0], f.Clients[0]
	for _, m := range f.Clients {
		if m.Node() != from.Node() {
			to = m
			break
		}
	}
	if err := from.Client.Send(ctx, to.ID, "psst"); err != nil {
		t.Fatal(err)
	}
	var sent struct {
		OK        bool `json:"ok"`
		Delivered bool `json:"delivered"`
	}
	if code, err := clustertest.PostJSON(ctx, c.HTTP()+"/v1/send", map[string]any{"client_id": to.ID, "data": "over http"}, &sent); err != nil || code != 200 || !sent.Delivered {
		t.Fatalf("POST /v1/send = %d %v %+v, want delivered", code, err, sent)
	}
	err := testkit.Wait(ctx, 5*time.Second, func() error {
		if d := to.Directs(); len(d) != 2 {
			return fmt.Errorf("%s got %d directs, want 2", to.ID, len(d))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Two senders on two paths: no order between them is promised.
	got := map[string]string{}
	for _, d := range to.Directs() {
		got[d.From] = string(d.Data)
	}
	if got[from.ID] != `"psst"` || got[""] != `"over http"` {
		t.Errorf("directs = %+v, want psst from %s and one from HTTP", to.Directs(), from.ID)
	}
	if code, _ := clustertest.PostJSON(ctx, c.HTTP()+"/v1/send", map[string]any{"client_id": "nobody", "data": 1}, &sent); code != 200 || sent.Delivered {
		t.Errorf("send to nobody = %d %+v, want 200 delivered:false", code, sent)
	}

	// Bad input gets clear errors.
	for _, tc := range []struct {
		url  string
		body any
		want int
	}{
		{"/v1/publish", map[string]any{"channel": "bad channel", "data": 1}, 400},
		{"/v1/publish", map[string]any{"channel": "ok"}, 400},
		{"/v1/send", map[string]any{"client_id": "", "data": 1}, 400},
	} {
		if code, _ := clustertest.PostJSON(ctx, c.HTTP()+tc.url, tc.body, nil); code != tc.want {
			t.Errorf("POST %s %v = %d, want %d", tc.url, tc.body, code, tc.want)
		}
	}
	if err := clustertest.GetJSON(ctx, c.HTTP()+"/v1/owner?client_id=a%20b", nil); err == nil {
		t.Error("GET /v1/owner with a bad id succeeded, want 400")
	}
}

// failoverClients is the fleet size of TestFailover; RINGCAST_FAILOVER_CLIENTS
// raises it for the README figure.
func failoverClients() int {
	if n, err := strconv.Atoi(os.Getenv("RINGCAST_FAILOVER_CLIENTS")); err == nil && n > 0 {
		return n
	}
	return 90
}

// splitFleet names the node of f's first client, the clients on it, and
// every client's reconnect count so far.
func splitFleet(f *clustertest.Fleet) (victim string, moved []*clustertest.Member, before map[string]int) {
	victim, before = f.Clients[0].Node(), map[string]int{}
	for _, m := range f.Clients {
		before[m.ID] = m.Client.Reconnects()
		if m.Node() == victim {
			moved = append(moved, m)
		}
	}
	return victim, moved, before
}

func TestFailover(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 3})
	// Clients from 20 source addresses, as real ones come from many: the
	// balancer's per-address rate limit (200/s) is not what is measured.
	steps := &stateLog{at: map[string][]stateAt{}}
	f, err := clustertest.NewFleet(ctx, c.URL(), "f", failoverClients(), []string{"room"}, func(cfg *client.Config) {
		var i int
		fmt.Sscanf(cfg.ClientID, "f%d", &i)
		cfg.NetDial = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%20))}}).DialContext
		steps.follow(cfg)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)

	victim, moved, before := splitFleet(f)
	t.Logf("killing %s, which holds %d of %d clients (load %s)", victim, len(moved), len(f.Clients), clustertest.LoadAvg())
	killed := time.Now()
	c.Node(victim).Kill()

	err = f.WaitAll(ctx, 15*time.Second, "resubscribed on a live node", func(m *clustertest.Member) bool {
		return m.Node() != victim && m.Client.State() == client.StateConnected &&
			(m.WelcomedAt().Before(killed) || m.SubscribedAt("room").After(m.WelcomedAt()))
	})
	if err != nil {
		t.Fatal(err)
	}
	var took, down, redial, welcome, sub []time.Duration
	attempts := 0
	for _, m := range moved {
		end, retry, n := steps.since(m.ID, killed)
		attempts += n
		took = append(took, m.SubscribedAt("room").Sub(killed))
		down = append(down, end.Sub(killed))
		redial = append(redial, retry.Sub(end))
		welcome = append(welcome, m.WelcomedAt().Sub(retry))
		sub = append(sub, m.SubscribedAt("room").Sub(m.WelcomedAt()))
	}
	p50, p99 := percentile(took, 50), percentile(took, 99)
	t.Logf("failover of %d clients: p50 %v p99 %v max %v (load %s)", len(took), p50, p99, percentile(took, 100), clustertest.LoadAvg())
	// Where a slow failover spends its time: the link's end reaching the
	// client, the client's backoff, the upgrade through the balancer to the
	// welcome (all attempts), the resubscribe.
	for _, q := range []int{50, 99} {
		t.Logf("p%d of its steps: link end seen %v after the kill, redial %v later, welcomed %v after that, subscribed %v after that",
			q, percentile(down, q), percentile(redial, q), percentile(welcome, q), percentile(sub, q))
	}
	t.Logf("connection attempts per moved client: %.2f", float64(attempts)/float64(max(1, len(moved))))
	refused, _ := testkit.Scrape(ctx, c.HTTP()+"/metrics", "ringcast_balancer_connections_refused_total")
	t.Logf("upgrades the balancer refused: %v", refused)
	// From the SIGKILL to the resubscribe on the new owner. The 1 s target
	// is the figure logged above. The bound asserted is 2 s: with the race
	// detector at load 3-14 the p99 was 87-258 ms in 7 runs (3.1-7.5 s
	// in 5 of 7 runs while every upgrade built the fallback ring itself),
	// and a timing bound must not fail CI at high load.
	if p99 > 2*time.Second {
		t.Errorf("failover p99 = %v, want at most 2 s (target 1 s)", p99)
	}

	// The next publish reaches everyone.
	if err := f.Clients[len(f.Clients)-1].Client.Publish(ctx, "room", "after"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, 5*time.Second, "given the publish after the kill", func(m *clustertest.Member) bool { return m.HasData("room", "after") }); err != nil {
		t.Fatal(err)
	}

	// Gossip confirms the death: nobody moves a second time.
	if err := c.WaitAlive(ctx, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, m := range f.Clients {
		owner, err := c.Owner(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.Node() != owner {
			t.Errorf("after the death was confirmed, %s sits on %s, want owner %s", m.ID, m.Node(), owner)
		}
	}
	// Two sweeps later: each client of the dead node reconnected once, the
	// others not at all.
	time.Sleep(7 * time.Second)
	for _, m := range f.Clients {
		want := 0
		if slices.Contains(moved, m) {
			want = 1
		}
		if got := m.Client.Reconnects() - before[m.ID]; got != want {
			t.Errorf("%s reconnected %d times, want %d", m.ID, got, want)
		}
	}
}

func TestRestartMovesBackOnlyItsClients(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 3})
	f := newFleet(t, c, "r", 60, "room")

	victim := c.Nodes[1]
	victim.Kill()
	if err := c.WaitConverged(ctx, 2); err != nil {
		t.Fatal(err)
	}
	err := f.WaitAll(ctx, 15*time.Second, "on their owner", func(m *clustertest.Member) bool {
		o, err := c.Owner(ctx, m.ID)
		return err == nil && m.Node() == o && m.Client.State() == client.StateConnected
	})
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	for _, m := range f.Clients {
		before[m.ID] = m.Client.Reconnects()
	}

	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(ctx, 3); err != nil {
		t.Fatal(err)
	}
	var back []string
	err = f.WaitAll(ctx, 20*time.Second, "on their owner after the restart", func(m *clustertest.Member) bool {
		o, err := c.Owner(ctx, m.ID)
		return err == nil && m.Node() == o && m.Client.State() == client.StateConnected
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range f.Clients {
		moved := m.Client.Reconnects() != before[m.ID]
		if m.Node() == victim.Name {
			back = append(back, m.ID)
			if n := m.Client.Reconnects() - before[m.ID]; n != 1 {
				t.Errorf("%s reconnected %d times to get back to %s, want once", m.ID, n, victim.Name)
			}
		} else if moved {
			t.Errorf("%s reconnected %d times but its owner %s did not change", m.ID, m.Client.Reconnects()-before[m.ID], m.Node())
		}
	}
	if len(back) == 0 {
		t.Fatalf("no client moved back to %s", victim.Name)
	}
	t.Logf("%d clients moved back to %s, the other %d stayed", len(back), victim.Name, len(f.Clients)-len(back))

	// Everyone still receives.
	if err := f.Clients[0].Client.Publish(ctx, "room", "together"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, 5*time.Second, "given the publish", func(m *clustertest.Member) bool { return m.HasData("room", "together") }); err != nil {
		t.Fatal(err)
	}
}

func TestGracefulDrain(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 3})
	f := newFleet(t, c, "d", 30, "room")
	victim := f.Clients[0].Node()
	if err := c.Node(victim).Term(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	err := f.WaitAll(ctx, 10*time.Second, "moved off the drained node", func(m *clustertest.Member) bool {
		return m.Node() != victim && m.Client.State() == client.StateConnected && !m.SubscribedAt("room").Before(m.WelcomedAt())
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Clients[0].Client.Publish(ctx, "room", "drained"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, 5*time.Second, "given the publish", func(m *clustertest.Member) bool { return m.HasData("room", "drained") }); err != nil {
		t.Fatal(err)
	}
}

// stateLog records every client's state changes, for the steps of a
// failover.
type stateLog struct {
	mu sync.Mutex
	at map[string][]stateAt
}

type stateAt struct {
	s  client.State
	at time.Time
}

// follow records cfg's client's state changes, after the hook already set.
func (l *stateLog) follow(cfg *client.Config) {
	id, next := cfg.ClientID, cfg.OnState
	cfg.OnState = func(s client.State, err error) {
		if next != nil {
			next(s, err)
		}
		l.mu.Lock()
		l.at[id] = append(l.at[id], stateAt{s, time.Now()})
		l.mu.Unlock()
	}
}

// since returns when client id first saw its link end after t, when it
// first dialled again after that, and how many connection attempts it made
// from then on.
func (l *stateLog) since(id string, t time.Time) (end, redial time.Time, attempts int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.at[id] {
		switch {
		case e.at.Before(t):
		case end.IsZero():
			if e.s == client.StateDisconnected {
				end = e.at
			}
		case e.s == client.StateConnecting:
			if redial.IsZero() {
				redial = e.at
			}
			attempts++
		}
	}
	return end, redial, attempts
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

// A node paused past failure detection comes back without keeping the
// sessions that were re-homed meanwhile: it fences itself, and every client
// ends on its owner, receiving.
func TestPausedNode(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 3})
	f := newFleet(t, c, "p", 45, "room")
	victim := c.Node(f.Clients[0].Node())
	if err := victim.Freeze(); err != nil {
		t.Fatal(err)
	}
	// The fault itself: a pause of 2.5 s, well past the ~1 s detection.
	resume := time.After(2500 * time.Millisecond)
	if err := c.WaitAlive(ctx, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	err := f.WaitAll(ctx, 10*time.Second, "moved off the paused node", func(m *clustertest.Member) bool {
		return m.Node() != victim.Name && m.Client.State() == client.StateConnected
	})
	if err != nil {
		t.Fatal(err)
	}
	<-resume
	if err := victim.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(ctx, 3); err != nil {
		t.Fatal(err)
	}
	err = f.WaitAll(ctx, 30*time.Second, "on their owner", func(m *clustertest.Member) bool {
		o, err := c.Owner(ctx, m.ID)
		return err == nil && m.Node() == o && m.Client.State() == client.StateConnected
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Clients[1].Client.Publish(ctx, "room", "resumed"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, 5*time.Second, "given the publish", func(m *clustertest.Member) bool { return m.HasData("room", "resumed") }); err != nil {
		t.Fatal(err)
	}
	if n, err := testkit.Scrape(ctx, "http://"+victim.Addr+"/metrics", "ringcast_node_pauses_total"); err != nil || n < 1 {
		t.Errorf("%s: ringcast_node_pauses_total = %v (%v), want at least 1: it did not fence itself after the pause", victim.Name, n, err)
	}
	// Its peers suspected it and declared it dead, and it heard of it once
	// it ran again (what fences a pause shorter than the latest detection).
	if n, err := testkit.Scrape(ctx, "http://"+victim.Addr+"/metrics", "ringcast_node_accused_total"); err != nil || n < 1 {
		t.Errorf("%s: ringcast_node_accused_total = %v (%v), want at least 1 after a 2.5 s pause", victim.Name, n, err)
	}
}

// TestStalledNode: a node that accepts TCP but never answers (SIGSTOP, with
// LAN detection so that gossip has not noticed yet) costs a new client of
// it one dial timeout of the balancer (1 s by default), then the client is
// welcomed by the next owner.
func TestStalledNode(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, clustertest.Options{Nodes: 3, Detect: "lan"})
	victim := c.Nodes[0]
	var ids []string
	for i := 0; len(ids) < 2 && i < 1000; i++ {
		id := fmt.Sprint("stall-", i)
		if o, err := c.Owner(ctx, id); err == nil && o == victim.Name {
			ids = append(ids, id)
		}
	}
	if len(ids) < 2 {
		t.Fatalf("no two client ids owned by %s", victim.Name)
	}
	if err := victim.Freeze(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Signal(syscall.SIGCONT) })
	var took []time.Duration
	for _, id := range ids {
		start := time.Now()
		r := wstest.Connect(t, c.Balancers[0].Addr, id) // reads the welcome
		took = append(took, time.Since(start))
		r.NC.Close()
	}
	// The target (dial timeout + 0.5 s) is a figure for the README; the
	// test only rules out waiting for gossip or the 5 s handshake timeout.
	if took[0] > 3*time.Second || took[1] > time.Second {
		t.Errorf("welcomed after %v and %v, want about the 1 s dial timeout, then at once", took[0], took[1])
	}
	t.Logf("stalled owner: first new client welcomed after %v, the next after %v", took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
}
