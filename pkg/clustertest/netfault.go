//go:build linux

package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Net runs each process of a cluster in a network namespace of its own, all
// joined by a bridge on a /24 of 10.88.0.0/16 that no other interface or
// route of the machine uses (another Net's included), so that links between
// processes can be cut and healed with nftables. It needs root, iproute2 and
// nftables. Its methods are not safe for concurrent use with Close.
type Net struct {
	id      string            // names the bridge, namespaces and links of this Net
	host    netip.Addr        // this side's address on the bridge
	ips     map[string]string // process name → address
	forward bool              // an iptables FORWARD rule lets the bridge through (removed by Close)
}

// netSeq numbers the Nets of this process.
var netSeq atomic.Int64

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
// ignored): a bridge on a free /24 with Host on this side and a namespace
// per process. Start the cluster with Net.Start; Close the cluster, then the
// Net. The networks of runs whose process is gone are removed first.
func NewNet(o Options) (*Net, error) {
	if err := NetSupported(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	if o.Nodes+o.Balancers > 200 {
		return nil, fmt.Errorf("%d processes do not fit one /24", o.Nodes+o.Balancers)
	}
	// Held from reading the machine's subnets until this bridge has its own.
	unlock, err := lockNets()
	if err != nil {
		return nil, err
	}
	defer unlock()
	removeStaleNets()
	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	n := &Net{
		id:   strconv.FormatInt(int64(os.Getpid()), 36) + "_" + strconv.FormatInt(netSeq.Add(1), 36),
		host: subnet.Addr().Next(),
		ips:  map[string]string{},
	}
	var names []string
	for i := range o.Balancers {
		names = append(names, fmt.Sprintf("b%d", i+1))
	}
	for i := range o.Nodes {
		names = append(names, fmt.Sprintf("n%d", i+1))
	}
	ip := n.host
	for _, name := range names {
		ip = ip.Next()
		n.ips[name] = ip.String()
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

// Host is this process's address on the bridge: clients connect from it,
// and a service the nodes use (redis-server) must listen on it.
func (n *Net) Host() string { return n.host.String() }

func (n *Net) bridge() string          { return "rc" + n.id + "br" }
func (n *Net) ns(proc string) string   { return "rc" + n.id + "-" + proc }
func (n *Net) veth(proc string) string { return "rc" + n.id + proc } // the bridge side is veth+"b"

// setup creates the bridge and, for each process, a namespace with a veth
// into the bridge and an empty nftables table for cuts.
func (n *Net) setup(procs []string) error {
	cmds := [][]string{
		{"ip", "link", "add", n.bridge(), "type", "bridge"},
		{"ip", "addr", "add", netip.PrefixFrom(n.host, 24).String(), "dev", n.bridge()},
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

// Shape replaces the root queueing discipline of process proc's link with
// qdisc, e.g. "tbf rate 512kbit burst 32kbit latency 400ms": what proc
// sends is shaped. It goes with the namespace on Close.
func (n *Net) Shape(proc, qdisc string) error {
	if _, ok := n.ips[proc]; !ok {
		return fmt.Errorf("shape %s: no such process", proc)
	}
	args := append([]string{"ip", "netns", "exec", n.ns(proc), "tc", "qdisc", "replace", "dev", n.veth(proc), "root"}, strings.Fields(qdisc)...)
	return run(nil, args...)
}

// Addr is process proc's address on the bridge.
func (n *Net) Addr(proc string) string { return n.ips[proc] }

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

// netLock is the lock file that serialises choosing a subnet between the
// processes of one machine.
var netLock = filepath.Join(os.TempDir(), "ringcast-netns.lock")

// lockNets takes netLock, waiting for it; the kernel drops it if the
// process dies.
func lockNets() (unlock func(), err error) {
	f, err := os.OpenFile(netLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("network lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("network lock %s: %w", netLock, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// freeSubnet returns the first 10.88.X.0/24 that overlaps no IPv4 address
// or route of this machine; call it under lockNets.
func freeSubnet() (netip.Prefix, error) {
	var used []netip.Prefix
	for _, args := range [][]string{{"-o", "-4", "addr", "show"}, {"-4", "route", "show"}} {
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
		}
		for _, f := range strings.Fields(string(out)) {
			if p, err := netip.ParsePrefix(f); err == nil && p.Addr().Is4() {
				used = append(used, p.Masked())
			}
		}
	}
	for x := range 256 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 88, byte(x), 0}), 24)
		if !slices.ContainsFunc(used, p.Overlaps) {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("network faults: every /24 of 10.88.0.0/16 is in use on this machine")
}

// staleBridge matches a Net's bridge: the id is the process id in base 36,
// then the Net's number (absent in older runs).
var staleBridge = regexp.MustCompile(`^rc(([0-9a-z]+)(?:_[0-9a-z]+)?)br$`)

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
		pid, err := strconv.ParseInt(m[2], 36, 64)
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
