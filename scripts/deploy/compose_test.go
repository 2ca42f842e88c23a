package deploy

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
)

// composeProject is one docker compose project started by a test.
type composeProject struct {
	t    *testing.T
	cmd  []string // docker compose | docker-compose
	root string
	name string
	env  []string
}

// compose runs a compose subcommand on the project.
func (p *composeProject) compose(ctx context.Context, args ...string) (string, error) {
	full := append(append([]string(nil), p.cmd[1:]...),
		"-p", p.name, "-f", "docker-compose.yml", "-f", "scripts/deploy/compose.test.yml")
	return run(ctx, p.root, p.env, p.cmd[0], append(full, args...)...)
}

func (p *composeProject) must(ctx context.Context, args ...string) string {
	p.t.Helper()
	out, err := p.compose(ctx, args...)
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// containers maps each service to its container id. It asks the engine
// (one docker ps) rather than compose, which is slow to start.
func (p *composeProject) containers(ctx context.Context) (map[string]string, error) {
	out, err := run(ctx, "", nil, "docker", "ps", "-a", "--filter", "label=com.docker.compose.project="+p.name,
		"--format", `{{.Label "com.docker.compose.service"}} {{.ID}}`)
	if err != nil {
		return nil, err
	}
	ids := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			ids[f[0]] = f[1]
		}
	}
	return ids, nil
}

// container returns the id of service's container.
func (p *composeProject) container(ctx context.Context, service string) string {
	p.t.Helper()
	ids, err := p.containers(ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	if ids[service] == "" {
		p.t.Fatalf("no container for %s", service)
	}
	return ids[service]
}

// published returns the host address a service's container port is published on.
func (p *composeProject) published(ctx context.Context, service string, port int) string {
	p.t.Helper()
	out, err := run(ctx, "", nil, "docker", "port", p.container(ctx, service), fmt.Sprintf("%d/tcp", port))
	if err != nil {
		p.t.Fatal(err)
	}
	addr := strings.Fields(out)
	if len(addr) == 0 || strings.HasSuffix(addr[0], ":0") {
		p.t.Fatalf("%s:%d is not published (%q)", service, port, out)
	}
	return addr[0]
}

// leftovers lists the containers, networks and volumes the project left.
func (p *composeProject) leftovers(ctx context.Context) (string, error) {
	label := "label=com.docker.compose.project=" + p.name
	var all []string
	for _, args := range [][]string{
		{"ps", "-aq", "--filter", label},
		{"network", "ls", "-q", "--filter", label},
		{"volume", "ls", "-q", "--filter", label},
		{"network", "ls", "-q", "--filter", "name=" + p.name},
		{"volume", "ls", "-q", "--filter", "name=" + p.name},
	} {
		out, err := run(ctx, "", nil, "docker", args...)
		if err != nil {
			return "", err
		}
		if out != "" {
			all = append(all, args[0]+": "+strings.Join(strings.Fields(out), " "))
		}
	}
	return strings.Join(all, "; "), nil
}

// health returns each listed service's container health.
func (p *composeProject) health(ctx context.Context, services ...string) (map[string]string, error) {
	ids, err := p.containers(ctx)
	if err != nil {
		return nil, err
	}
	h := map[string]string{}
	for _, s := range services {
		if ids[s] == "" {
			h[s] = "absent"
			continue
		}
		st, err := run(ctx, "", nil, "docker", "inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}", ids[s])
		if err != nil {
			return nil, err
		}
		h[s] = st
	}
	return h, nil
}

func (p *composeProject) waitHealthy(ctx context.Context, timeout time.Duration, services ...string) {
	p.t.Helper()
	err := testkit.Wait(ctx, timeout, func() error {
		h, err := p.health(ctx, services...)
		if err != nil {
			return err
		}
		for _, s := range services {
			if h[s] != "running/healthy" {
				return fmt.Errorf("containers not all healthy: %v", h)
			}
		}
		return nil
	})
	if err != nil {
		logs, _ := p.compose(ctx, "logs", "--no-color", "--tail", "30")
		p.t.Fatalf("%v\n%s", err, logs)
	}
}

var allServices = []string{"redis", "balancer1", "balancer2", "node1", "node2", "node3"}

// service maps a node id (RINGCAST_ID in docker-compose.yml) to its service.
func service(nodeID string) string { return "node" + strings.TrimPrefix(nodeID, "n") }

// TestCompose runs docker-compose.yml as a user would (the images built
// FROM scratch, two balancers, three nodes, Redis with history, the
// cluster key from the environment, members found through DNS) and breaks
// it: a node killed and restarted, a node cut off the network and healed.
// Go clients connected through both published balancer ports must all
// resubscribe, lose nothing and end on their owners; `down -v` must leave
// nothing behind.
func TestCompose(t *testing.T) {
	cmd := needDocker(t)
	root := repoRoot(t)
	suffix := randomHex(4)
	img, redisImg := buildImages(t, root, suffix)
	p := &composeProject{t: t, cmd: cmd, root: root, name: "ringcast-test-" + suffix, env: []string{
		"RINGCAST_IMAGE=" + img,
		"RINGCAST_REDIS_IMAGE=" + redisImg,
		"RINGCAST_CLUSTER_KEY=" + randomHex(32),
		"RINGCAST_PUBLISH=127.0.0.1:", // a free port on loopback
		"RINGCAST_PUBLISH_2=127.0.0.1:",
	}}
	ctx := context.Background()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := p.compose(ctx, "down", "-v", "--remove-orphans", "-t", "2"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	start := time.Now()
	p.must(ctx, "up", "-d")
	p.waitHealthy(ctx, 60*time.Second, allServices...)
	t.Logf("compose up: every container healthy after %v", time.Since(start).Round(100*time.Millisecond))
	b1, b2 := "http://"+p.published(ctx, "balancer1", 8080), "http://"+p.published(ctx, "balancer2", 8080)
	waitNodes(t, ctx, 3, b1, b2)

	// Clients through both balancers, all on one channel with history.
	const channel = "feed"
	var fleet clustertest.Fleet
	for i, b := range []string{b1, b2} {
		f, err := clustertest.NewFleet(ctx, "ws"+strings.TrimPrefix(b, "http")+"/ws", fmt.Sprintf("b%d-", i+1), 20, []string{channel}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		fleet.Clients = append(fleet.Clients, f.Clients...)
	}
	waitOnOwners(t, ctx, &fleet, 30*time.Second, b1, b2)
	pub := clustertest.StartPublisher(b1, channel, 20*time.Millisecond)
	t.Cleanup(pub.Stop)
	if err := pub.WaitAcked(ctx, 20, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	// docker compose kill: every client of the node resubscribes elsewhere.
	victim := fleet.Clients[0].Node()
	affected := onNode(&fleet, victim)
	p.must(ctx, "kill", service(victim))
	t.Logf("docker compose kill %s: %d clients resubscribed on other nodes, %s",
		service(victim), len(affected), waitMoved(t, ctx, affected, victim, p.finishedAt(ctx, service(victim))))
	waitNodes(t, ctx, 2, b1, b2)
	checkNoLoss(t, ctx, &fleet, pub, channel, "after the kill")
	// The survivors timed those resubscriptions.
	var timed float64
	for _, n := range []string{"n1", "n2", "n3"} {
		if n == victim {
			continue
		}
		v, err := testkit.Scrape(ctx, "http://"+p.published(ctx, service(n), 9000)+"/metrics", "ringcast_node_failover_resubscribe_seconds")
		if err != nil {
			t.Fatal(err)
		}
		timed += v
	}
	if timed < float64(len(affected)) {
		t.Errorf("survivors timed %v failover resubscriptions, want at least the %d clients of %s", timed, len(affected), victim)
	}

	// Restarted: every client returns to its owner.
	p.must(ctx, "start", service(victim))
	p.waitHealthy(ctx, 30*time.Second, service(victim))
	waitNodes(t, ctx, 3, b1, b2)
	waitOnOwners(t, ctx, &fleet, 30*time.Second, b1, b2)
	checkNoLoss(t, ctx, &fleet, pub, channel, "after the restart")

	// Cut off the network: its clients move; healed: they come back.
	cut := fleet.Clients[len(fleet.Clients)-1].Node()
	affected = onNode(&fleet, cut)
	id := p.container(ctx, service(cut))
	net, ip := containerNetwork(t, ctx, id)
	cutAt := time.Now()
	if _, err := run(ctx, "", nil, "docker", "network", "disconnect", net, id); err != nil {
		t.Fatal(err)
	}
	t.Logf("docker network disconnect %s: %d clients resubscribed on other nodes, %s",
		service(cut), len(affected), waitMoved(t, ctx, affected, cut, cutAt))
	waitNodes(t, ctx, 2, b1, b2)
	// Reconnected under the same names (the service name balancers dial and
	// the alias DNS discovery resolves) and, as after a real partition, the
	// same address: gossip advertises it.
	if _, err := run(ctx, "", nil, "docker", "network", "connect", "--alias", service(cut), "--alias", "ringcast-gossip", net, id); err != nil {
		t.Fatal(err)
	}
	if _, ip2 := containerNetwork(t, ctx, id); ip2 != ip {
		t.Fatalf("reconnected %s got address %s, had %s", service(cut), ip2, ip)
	}
	waitNodes(t, ctx, 3, b1, b2)
	waitOnOwners(t, ctx, &fleet, 30*time.Second, b1, b2)
	checkNoLoss(t, ctx, &fleet, pub, channel, "after the heal")
	pub.Stop()
	for _, m := range fleet.Clients {
		m.Client.Close()
	}

	p.must(ctx, "down", "-v", "-t", "2")
	if left, err := p.leftovers(ctx); err != nil || left != "" {
		t.Errorf("after down -v: left %q (%v), want nothing", left, err)
	}
	t.Logf("whole scenario %v", time.Since(start).Round(100*time.Millisecond))
}

// waitNodes waits until every balancer sees exactly n alive nodes.
func waitNodes(t *testing.T, ctx context.Context, n int, balancers ...string) {
	t.Helper()
	err := testkit.Wait(ctx, 30*time.Second, func() error {
		for _, b := range balancers {
			var ci clustertest.ClusterInfo
			if err := clustertest.GetJSON(ctx, b+"/v1/cluster", &ci); err != nil {
				return err
			}
			if a := ci.Alive(); len(a) != n {
				return fmt.Errorf("%s sees alive nodes %v, want %d", b, a, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitOnOwners waits until every client sits on the node both balancers
// name as its owner.
func waitOnOwners(t *testing.T, ctx context.Context, f *clustertest.Fleet, timeout time.Duration, balancers ...string) {
	t.Helper()
	err := testkit.Wait(ctx, timeout, func() error {
		for _, m := range f.Clients {
			var owners []string
			for _, b := range balancers {
				var o struct{ Node string }
				if err := clustertest.GetJSON(ctx, b+"/v1/owner?client_id="+m.ID, &o); err != nil {
					return err
				}
				owners = append(owners, o.Node)
			}
			if owners[0] != owners[1] {
				return fmt.Errorf("balancers disagree on the owner of %s: %v", m.ID, owners)
			}
			if n := m.Node(); n != owners[0] {
				return fmt.Errorf("%s is on %s, its owner is %s", m.ID, n, owners[0])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func onNode(f *clustertest.Fleet, node string) []*clustertest.Member {
	var out []*clustertest.Member
	for _, m := range f.Clients {
		if m.Node() == node {
			out = append(out, m)
		}
	}
	return out
}

// waitMoved waits until every affected client is welcomed by another node
// and resubscribed there, and describes the times to each resubscription:
// from faulted (the fault's moment) and from the first link of theirs that
// dropped.
func waitMoved(t *testing.T, ctx context.Context, affected []*clustertest.Member, from string, faulted time.Time) string {
	t.Helper()
	if len(affected) == 0 {
		t.Fatalf("no client on %s", from)
	}
	err := testkit.Wait(ctx, 30*time.Second, func() error {
		for _, m := range affected {
			if n := m.Node(); n == from || !m.SubscribedAt("feed").After(m.WelcomedAt()) {
				return fmt.Errorf("%s still on %s or not resubscribed", m.ID, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("clients of %s: %v", from, err)
	}
	var first time.Time // the first link that dropped since the fault (less clock skew)
	for _, m := range affected {
		if d := m.DownAt(); d.After(faulted.Add(-time.Second)) && (first.IsZero() || d.Before(first)) {
			first = d
		}
	}
	return fmt.Sprintf("from the fault: %s; from the first dropped link: %s", spread(affected, faulted), spread(affected, first))
}

// spread describes the times from t0 to each member's last resubscription.
func spread(ms []*clustertest.Member, t0 time.Time) string {
	var ds []time.Duration
	for _, m := range ms {
		ds = append(ds, m.SubscribedAt("feed").Sub(t0))
	}
	slices.Sort(ds)
	pct := func(q float64) time.Duration { // nearest rank
		return ds[max(0, int(math.Ceil(q*float64(len(ds))))-1)].Round(time.Millisecond)
	}
	return fmt.Sprintf("p50 %v, p99 %v, max %v", pct(0.5), pct(0.99), pct(1))
}

// checkNoLoss lets the publisher run on, then checks that every client got
// every acknowledged message exactly once, in order.
func checkNoLoss(t *testing.T, ctx context.Context, f *clustertest.Fleet, pub *clustertest.Publisher, channel, when string) {
	t.Helper()
	if err := pub.WaitAcked(ctx, len(pub.Acked())+10, 20*time.Second); err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	want := pub.Acked()
	if err := f.WaitAll(ctx, 20*time.Second, "holding every acknowledged message", func(m *clustertest.Member) bool {
		return clustertest.HoldsAll(m, channel, want)
	}); err != nil {
		t.Errorf("%s: %v", when, err)
	}
	tally := f.Tally(channel, want)
	t.Logf("%s: %v", when, tally)
	if !tally.OK() {
		t.Errorf("%s: %v: want all 0", when, tally)
	}
}

// finishedAt returns when service's container exited, as the engine recorded it.
func (p *composeProject) finishedAt(ctx context.Context, service string) time.Time {
	p.t.Helper()
	out, err := run(ctx, "", nil, "docker", "inspect", "-f", "{{.State.FinishedAt}}", p.container(ctx, service))
	if err != nil {
		p.t.Fatal(err)
	}
	at, err := time.Parse(time.RFC3339Nano, out)
	if err != nil {
		p.t.Fatalf("%s finished at %q: %v", service, out, err)
	}
	return at
}

// containerNetwork returns the one network a container is attached to and
// its address there.
func containerNetwork(t *testing.T, ctx context.Context, id string) (network, ip string) {
	t.Helper()
	out, err := run(ctx, "", nil, "docker", "inspect", "-f", "{{range $n, $v := .NetworkSettings.Networks}}{{$n}} {{$v.IPAddress}}{{end}}", id)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("container %s networks: %q, want one", id, out)
	}
	return f[0], f[1]
}
