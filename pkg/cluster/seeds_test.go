package cluster

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// fakeResolver answers every name with the addresses it is given, and
// counts the lookups.
type fakeResolver struct {
	mu      sync.Mutex
	ips     []string
	lookups int
	names   []string
}

func (r *fakeResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lookups++
	if !slices.Contains(r.names, host) {
		r.names = append(r.names, host)
	}
	if len(r.ips) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	out := make([]net.IPAddr, len(r.ips))
	for i, ip := range r.ips {
		out[i] = net.IPAddr{IP: net.ParseIP(ip)}
	}
	return out, nil
}

func (r *fakeResolver) set(ips ...string) {
	r.mu.Lock()
	r.ips = ips
	r.mu.Unlock()
}

func (r *fakeResolver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookups
}

// dnsPort returns a port free on every one of hosts (a DNS seed names one
// port for all its records, so the members differ by address).
func dnsPort(t *testing.T, hosts ...string) string {
	t.Helper()
	for range 20 {
		hp, err := clustertest.FreePort(hosts[0])
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(hp)
		free := true
		for _, h := range hosts[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(h, port))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on every address")
	return ""
}

// Members found through a DNS name: every record is joined, the process's
// own record is skipped, a name that resolves to nobody else yet is looked
// up again until it does, and a record that appears after the join (a
// process that started later, alone) is joined too.
func TestJoinDNS(t *testing.T) {
	hosts := []string{"127.0.0.31", "127.0.0.32", "127.0.0.33", "127.0.0.34"}
	port := dnsPort(t, hosts...)
	res := &fakeResolver{}
	seed := []string{"dns:ringcast-gossip.test:" + port}
	startAt := func(i int, id string, join []string) *Cluster {
		return start(t, Config{ID: id, Bind: net.JoinHostPort(hosts[i], port), Join: join, Resolver: res})
	}

	// The first process resolves only itself: it keeps looking.
	res.set(hosts[0])
	a := startAt(0, "a", seed)
	testkit.Eventually(t, 20*time.Second, func() bool { return res.count() >= 3 }, "lookups = %d, want ≥ 3 while alone", res.count())
	if n := a.ml.NumMembers(); n != 1 {
		t.Fatalf("a alone sees %d members, want 1", n)
	}

	// b appears in DNS: a finds it.
	b := startAt(1, "b", seed)
	res.set(hosts[0], hosts[1])
	testkit.Eventually(t, 20*time.Second, func() bool { return converged([]*Cluster{a, b}, "a", "b") }, "a and b did not meet: %v", dump{a, b})

	// c starts on its own (no seeds) and only then gets a record: the
	// joined members re-resolve and pull it in.
	c := startAt(2, "c", nil)
	res.set(hosts[0], hosts[1], hosts[2])
	cs := []*Cluster{a, b, c}
	testkit.Eventually(t, 20*time.Second, func() bool { return converged(cs, "a", "b", "c") }, "c was not joined: %v", dump(cs))

	res.mu.Lock()
	if !slices.Equal(res.names, []string{"ringcast-gossip.test"}) {
		t.Errorf("looked up %q, want only ringcast-gossip.test", res.names)
	}
	res.mu.Unlock()

	// A member dies and comes back on the same address without seeds of its
	// own: the survivors see it dead, resolve again and re-merge.
	c.shutdown()
	testkit.Eventually(t, 20*time.Second, func() bool { return state(a, "c") == StateDead }, "c not dead for a: %v", dump{a})
	d := startAt(2, "c", nil)
	cs = []*Cluster{a, b, d}
	testkit.Eventually(t, 20*time.Second, func() bool { return converged(cs, "a", "b", "c") }, "c did not come back: %v", dump(cs))
}

func TestSeeds(t *testing.T) {
	res := &fakeResolver{}
	res.set("10.0.0.1", "10.0.0.2", "fd00::3")
	c := &Cluster{
		cfg:     Config{Join: []string{"static:7000", "dns:ringcast:7946"}, Resolver: res}.withDefaults(),
		records: map[string]record{"old": {gossip: "10.0.0.1:7946"}, "gone": {gossip: "[fd00::3]:7946", dead: true}},
		gossip:  "10.0.0.2:7946",
	}
	c.log = c.cfg.Log
	for _, tc := range []struct {
		all  bool
		want []string
	}{
		{true, []string{"static:7000", "10.0.0.1:7946", "[fd00::3]:7946"}},
		{false, []string{"[fd00::3]:7946"}},
	} {
		if got := c.seeds(context.Background(), tc.all); !slices.Equal(got, tc.want) {
			t.Errorf("seeds(all=%v) = %q, want %q", tc.all, got, tc.want)
		}
	}
}
