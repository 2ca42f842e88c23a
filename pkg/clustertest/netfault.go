//go:build linux

package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// NetHost is this process's address on the bridge of a StartNet cluster:
// clients connect from it, and a service the nodes use (redis-server) must
// listen on it.
const NetHost = "10.88.0.1"

// Net runs each process of a cluster in a network namespace of its own, all
// joined by a bridge on 10.88.0.0/24, so that links between processes can be
// cut and healed with nftables. It needs root, iproute2 and nftables. Its
// methods are not safe for concurrent use with Close.
type Net struct {
	id      string            // names the bridge, namespaces and links of this run
	ips     map[string]string // process name → address
	forward bool              // an iptables FORWARD rule lets the bridge through (removed by Close)
}

// NetSupported reports why NewNet cannot run here, or nil.
func NetSupported() error {
	if os.Geteuid() != 0 {
		return errors.New("network faults need root")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("network faults need %s (apt-get install iproute2 nftables): %w", bin, err)
		}
	}
	return nil
}

// NewNet builds the network for the processes of o (Options.Host is
// ignored): a bridge on 10.88.0.0/24 with NetHost on this side and a
// namespace per process. Start the cluster with Net.Start; Close the
// cluster, then the Net.
func NewNet(o Options) (*Net, error) {
	if err := NetSupported(); err != nil {
		return nil, err
	}
	removeStaleNets()
	o = o.withDefaults()
	if o.Nodes+o.Balancers > 200 {
		return nil, fmt.Errorf("%d processes do not fit one /24", o.Nodes+o.Balancers)
	}
	n := &Net{id: strconv.FormatInt(int64(os.Getpid()), 36), ips: map[string]string{}}
	var names []string
	for i := range o.Balancers {
		names = append(names, fmt.Sprintf("b%d", i+1))
	}
	for i := range o.Nodes {
		names = append(names, fmt.Sprintf("n%d", i+1))
	}
	for i, name := range names {
		n.ips[name] = NetHost[:len(NetHost)-1] + strconv.Itoa(2+i)
	}
	if err := n.setup(names); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Start is the package's Start with every process in its namespace; o must
// name as many processes as NewNet was given.
func (n *Net) Start(ctx context.Context, o Options) (*Cluster, error) {
	o = o.withDefaults()
	if o.Nodes+o.Balancers != len(n.ips) {
		return nil, fmt.Errorf("net built for %d processes, options name %d", len(n.ips), o.Nodes+o.Balancers)
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		return nil, err
	}
	if o.ClusterKey == "" {
		o.ClusterKey = "key-" + n.id // gossip leaves loopback here: closed by default
	}
	return start(ctx, o, func(p *Proc) ([]string, error) {
		ip := n.ips[p.Name]
		p.Addr, p.Gossip = ip+":8080", ip+":7946"
		return []string{ipBin, "netns", "exec", n.ns(p.Name)}, nil
	})
}

func (n *Net) bridge() string          { return "rc" + n.id + "br" }
func (n *Net) ns(proc string) string   { return "rc" + n.id + "-" + proc }
func (n *Net) veth(proc string) string { return "rc" + n.id + proc } // the bridge side is veth+"b"

// setup creates the bridge and, for each process, a namespace with a veth
// into the bridge and an empty nftables table for cuts.
func (n *Net) setup(procs []string) error {
	cmds := [][]string{
		{"ip", "link", "add", n.bridge(), "type", "bridge"},
		{"ip", "addr", "add", NetHost + "/24", "dev", n.bridge()},
		{"ip", "link", "set", n.bridge(), "up"},
	}
	for _, p := range procs {
		ns, v := n.ns(p), n.veth(p)
		cmds = append(cmds,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "link", "add", v, "type", "veth", "peer", "name", v + "b"},
			[]string{"ip", "link", "set", v, "netns", ns},
			[]string{"ip", "-n", ns, "addr", "add", n.ips[p] + "/24", "dev", v},
			[]string{"ip", "-n", ns, "link", "set", v, "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
			[]string{"ip", "link", "set", v + "b", "master", n.bridge()},
			[]string{"ip", "link", "set", v + "b", "up"},
		)
	}
	for _, c := range cmds {
		if err := run(nil, c...); err != nil {
			return err
		}
	}
	n.allowForward()
	for _, p := range procs {
		err := n.nft(p, "add table inet chaos\n"+
			"add chain inet chaos in { type filter hook input priority 0; policy accept; }\n"+
			"add chain inet chaos out { type filter hook output priority 0; policy accept; }\n")
		if err != nil {
			return err
		}
	}
	return nil
}

// Cut drops every packet between process a and each of others, both ways,
// until Heal(a). Neither side is told: connections hang until they time out.
func (n *Net) Cut(a string, others ...string) error {
	var ips []string
	for _, o := range others {
		ip, ok := n.ips[o]
		if !ok {
			return fmt.Errorf("cut %s from %s: no such process", a, o)
		}
		ips = append(ips, ip)
	}
	if _, ok := n.ips[a]; !ok || len(ips) == 0 {
		return fmt.Errorf("cut %s from %v: no such process", a, others)
	}
	set := "{ " + strings.Join(ips, ", ") + " }"
	return n.nft(a, "add rule inet chaos in ip saddr "+set+" drop\nadd rule inet chaos out ip daddr "+set+" drop\n")
}

// Heal removes every cut made on process a.
func (n *Net) Heal(a string) error { return n.nft(a, "flush table inet chaos\n") }

// Close deletes the namespaces, links and bridge. Stop the processes first.
func (n *Net) Close() {
	for name := range n.ips {
		run(nil, "ip", "netns", "del", n.ns(name))
		run(nil, "ip", "link", "del", n.veth(name)+"b")
	}
	run(nil, "ip", "link", "del", n.bridge())
	if n.forward {
		run(nil, forwardRule("-D", n.bridge())...)
	}
}

// allowForward lets frames cross the bridge where a firewall drops forwarded
// traffic by default: Docker sets the FORWARD policy to DROP and loads
// br_netfilter, which sends bridged frames through that chain too. Without
// iptables there is no such rule to get past.
func (n *Net) allowForward() {
	if _, err := exec.LookPath("iptables"); err != nil {
		return
	}
	n.forward = run(nil, forwardRule("-I", n.bridge())...) == nil
}

func forwardRule(op, bridge string) []string {
	return []string{"iptables", op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"}
}

func (n *Net) nft(proc, script string) error {
	return run(strings.NewReader(script), "ip", "netns", "exec", n.ns(proc), "nft", "-f", "-")
}

func run(stdin *strings.Reader, args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

var staleBridge = regexp.MustCompile(`^rc([0-9a-z]+)br$`)

// removeStaleNets deletes the bridges, links and namespaces of runs whose
// process is gone.
func removeStaleNets() {
	out, _ := exec.Command("ip", "-o", "link", "show", "type", "bridge").Output()
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		m := staleBridge.FindStringSubmatch(strings.TrimSuffix(f[1], ":"))
		if m == nil {
			continue
		}
		pid, err := strconv.ParseInt(m[1], 36, 64)
		if err != nil || syscall.Kill(int(pid), 0) != syscall.ESRCH {
			continue
		}
		nss, _ := exec.Command("ip", "netns", "list").Output()
		for l := range strings.Lines(string(nss)) {
			if name := strings.Fields(l); len(name) > 0 && strings.HasPrefix(name[0], "rc"+m[1]+"-") {
				run(nil, "ip", "netns", "del", name[0])
			}
		}
		links, _ := exec.Command("ip", "-o", "link", "show", "master", m[0]).Output()
		for l := range strings.Lines(string(links)) {
			if lf := strings.Fields(l); len(lf) > 1 {
				run(nil, "ip", "link", "del", strings.SplitN(strings.TrimSuffix(lf[1], ":"), "@", 2)[0])
			}
		}
		run(nil, "ip", "link", "del", m[0])
		run(nil, forwardRule("-D", m[0])...)
	}
}
