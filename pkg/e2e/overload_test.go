package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
	"github.com/ringcast/ringcast/pkg/wstest"
)

// rss is a process's resident set in bytes (0 when it cannot be read).
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// memCgroup makes a memory cgroup limited to limit bytes (v2 memory.max,
// else v1 memory.limit_in_bytes) and returns its directory; it is removed
// when the test ends, after the processes in it (register it before them).
// The test is skipped where there is none to make.
func memCgroup(t *testing.T, limit int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("memory cgroup test: needs root to create a cgroup")
	}
	name := fmt.Sprintf("ringcast-test-%d", os.Getpid())
	var dir string
	var files []string
	ctl, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control")
	switch {
	case strings.Contains(string(ctl), "memory"):
		dir, files = filepath.Join("/sys/fs/cgroup", name), []string{"memory.max", "memory.swap.max"}
	case fileExists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
		dir, files = filepath.Join("/sys/fs/cgroup/memory", name), []string{"memory.limit_in_bytes", "memory.memsw.limit_in_bytes"}
	default:
		t.Skip("memory cgroup test: no cgroup v2 memory controller in /sys/fs/cgroup/cgroup.subtree_control and no v1 /sys/fs/cgroup/memory")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("memory cgroup test: cannot create %s: %v", dir, err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || os.IsNotExist(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(50 * time.Millisecond) // the killed node leaves the cgroup asynchronously
		}
	})
	if err := os.WriteFile(filepath.Join(dir, files[0]), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatalf("set %s: %v", files[0], err)
	}
	// No swap to hide in: memory+swap gets the same limit (where swap is accounted).
	swap := strconv.FormatInt(limit, 10)
	if strings.HasSuffix(files[1], "swap.max") {
		swap = "0"
	}
	os.WriteFile(filepath.Join(dir, files[1]), []byte(swap), 0o644)
	return dir
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// probe answers GETs of url every 100 ms until stop, recording the
// slowest answer and the failures (an error, a timeout of 1 s, not 200).
type probe struct {
	slowest  atomic.Int64 // nanoseconds
	failures atomic.Int64
	probes   atomic.Int64
	lastErr  atomic.Value
}

func (p *probe) run(url string, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	hc := &http.Client{Timeout: time.Second}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		start := time.Now()
		resp, err := hc.Get(url)
		d := time.Since(start)
		if resp != nil {
			resp.Body.Close()
		}
		p.probes.Add(1)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if err != nil {
			p.failures.Add(1)
			p.lastErr.Store(err.Error())
		}
		if int64(d) > p.slowest.Load() {
			p.slowest.Store(int64(d))
		}
	}
}

// TestOverloadMemoryCgroup: a node in a 100 MiB memory cgroup, 128
// consumers that never read and 8 HTTP publishers of 32 KB messages. The
// node keeps answering /healthz within a second, sheds with 4008 and comes
// back near its idle memory once the load is gone.
func TestOverloadMemoryCgroup(t *testing.T) {
	const (
		limit     = 100 << 20
		consumers = 128
		load      = 15 * time.Second
	)
	cg := memCgroup(t, limit)
	// Plain: under -race the detector's shadow memory alone would fill
	// the cgroup.
	c := startCluster(t, clustertest.Options{Nodes: 1, Plain: true, NodeWrap: []string{
		"/bin/sh", "-c", `echo $$ > ` + cg + `/cgroup.procs && exec "$0" "$@"`,
	}})
	node := c.Nodes[0]
	pid := node.Pid()
	ctx := context.Background()
	metrics := "http://" + node.Addr + "/metrics"
	budget, _ := testkit.Scrape(ctx, metrics, "ringcast_node_outbound_budget_bytes")
	t.Logf("node budget %s (cgroup limit %s), load %s", mib(int64(budget)), mib(limit), clustertest.LoadAvg())

	conns := make([]*wstest.Conn, consumers)
	for i := range conns {
		conns[i] = wstest.Connect(t, node.Addr, fmt.Sprintf("reader%d", i))
		conns[i].Send(`{"op":"subscribe","channel":"flood"}`)
		conns[i].Expect(wire.OpSubscribed)
	}
	idle := rss(pid)
	idleHeap, _ := testkit.Scrape(ctx, metrics, "go_memstats_heap_inuse_bytes")
	t.Logf("idle with %d consumers: RSS %s, heap in use %s", consumers, mib(idle), mib(int64(idleHeap)))

	body, _ := json.Marshal(map[string]any{"channel": "flood", "data": strings.Repeat("x", 32<<10)})
	var ok, refused, failed atomic.Int64
	var health probe
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go health.run("http://"+node.Addr+"/healthz", stop, &wg)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if r := rss(pid); r > peak.Load() {
				peak.Store(r)
			}
		}
	}()
	// New connections meanwhile: 101 while the node has room, 503 while it sheds.
	var upgraded, turnedAway atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		d := ws.Dialer{Timeout: 2 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			nc, _, _, err := d.Dial(ctx, wstest.URL(node.Addr, fmt.Sprintf("late%d", i)))
			var se ws.StatusError
			switch {
			case err == nil:
				upgraded.Add(1)
				nc.Close()
			case errors.As(err, &se) && int(se) == http.StatusServiceUnavailable:
				turnedAway.Add(1)
			}
		}
	}()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 2 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := hc.Post("http://"+node.Addr+"/v1/publish", "application/json", bytes.NewReader(body))
				switch {
				case err != nil:
					failed.Add(1)
				case resp.StatusCode == http.StatusOK:
					ok.Add(1)
				case resp.StatusCode == http.StatusServiceUnavailable:
					refused.Add(1)
				default:
					failed.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	time.Sleep(load) // the load runs this long; every loop above ends on stop
	shed, _ := testkit.Scrape(ctx, metrics, "ringcast_node_slow_consumers_total")
	pauses, _ := testkit.Scrape(ctx, metrics, "ringcast_node_pauses_total")
	close(stop)
	wg.Wait()
	t.Logf("%v of load: %d publishes accepted, %d refused 503, %d failed; new connections %d upgraded, %d refused 503; "+
		"/healthz %d probes, %d failed (%v), slowest %v; RSS peak %s; %v consumers shed 4008; pause detector fired %v times; node running %v",
		load, ok.Load(), refused.Load(), failed.Load(), upgraded.Load(), turnedAway.Load(),
		health.probes.Load(), health.failures.Load(), health.lastErr.Load(),
		time.Duration(health.slowest.Load()), mib(peak.Load()), shed, pauses, node.Running())

	// The consumers read what reached them: the shed ones end with 4008
	// (or, when they read too late for the close frame, their socket is
	// gone); the rest are still open.
	codes := map[int]int{}
	var mu sync.Mutex
	for _, cn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := 0
			for range 1000 {
				e, err := cn.Read(2 * time.Second)
				if err != nil || e.Closed {
					code = e.CloseCode // 0: no close frame
					break
				}
			}
			cn.NC.Close()
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("consumers' ends: %v (close code: count; 0 = EOF or still open)", codes)

	var after, afterHeap int64
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = rss(pid)
		h, _ := testkit.Scrape(ctx, metrics, "go_memstats_heap_inuse_bytes")
		afterHeap = int64(h)
		if (after <= idle+16<<20 && afterHeap <= int64(idleHeap)+8<<20) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("after the load: RSS %s, heap in use %s (idle %s, %s)", mib(after), mib(afterHeap), mib(idle), mib(int64(idleHeap)))

	if !node.Running() {
		t.Fatal("the node died under the load")
	}
	if health.failures.Load() > 0 {
		t.Errorf("/healthz failed %d of %d times under the load (last: %v)", health.failures.Load(), health.probes.Load(), health.lastErr.Load())
	}
	if shed < 1 {
		t.Error("no consumer was closed 4008")
	}
	if ok.Load() == 0 || refused.Load() == 0 || turnedAway.Load() == 0 {
		t.Errorf("publishes: %d accepted, %d refused; new connections %d refused: want some of each (shedding refuses new work)",
			ok.Load(), refused.Load(), turnedAway.Load())
	}
	if after > idle+16<<20 || afterHeap > int64(idleHeap)+8<<20 {
		t.Errorf("30 s after the load: RSS %s, heap %s; idle was %s, %s", mib(after), mib(afterHeap), mib(idle), mib(int64(idleHeap)))
	}
}

// TestOverloadSlowLink: a consumer behind a 512 kbit/s link (tbf on its
// node's link, each process in a network namespace; the messages are
// published on the other node, whose link is not shaped). 50 messages of 1 KB a second (about
// 430 kbit/s of frames) the link carries: the consumer keeps up. At 100 a
// second it falls behind, and is closed 4008 before it is more than
// -max-lag (5 s) plus what the bounded buffers ahead of it hold behind.
func TestOverloadSlowLink(t *testing.T) {
	if _, err := exec.LookPath("tc"); err != nil {
		t.Skip("needs tc (iproute2)")
	}
	const (
		maxLag = 5 * time.Second
		// Ahead of the close frame: a writer's take (64 KiB) and the socket
		// buffer (2 × 64 KiB) at 64 kB/s, and tbf's 400 ms queue.
		slack = 3*time.Second + 400*time.Millisecond
	)
	// Fast detection probes every 200 ms: a full 400 ms tbf queue would flap n1.
	n, c := startNetCluster(t, clustertest.Options{Nodes: 2, Detect: "lan"})
	if err := n.Shape("n1", "tbf rate 512kbit burst 32kbit latency 400ms"); err != nil {
		t.Fatal(err)
	}
	id := ""
	for i := 0; id == ""; i++ {
		if i == 100 {
			t.Fatal("no client id of 100 is owned by n1")
		}
		if owner, err := c.Owner(context.Background(), fmt.Sprintf("slow%d", i)); err == nil && owner == "n1" {
			id = fmt.Sprintf("slow%d", i)
		}
	}
	node := c.Nodes[1].Addr // the publishers' node
	slow := wstest.Connect(t, c.Nodes[0].Addr, id)
	slow.Send(`{"op":"subscribe","channel":"feed"}`)
	slow.Expect(wire.OpSubscribed)

	pad := strings.Repeat("p", 1000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rate, published atomic.Int64
	rate.Store(50)
	const pubs = 4
	for range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 2 * time.Second}
			next := time.Now()
			for {
				next = next.Add(time.Second * pubs / time.Duration(rate.Load()))
				select {
				case <-stop:
					return
				case <-time.After(time.Until(next)):
				}
				data := fmt.Sprintf(`{"t":%d,"pad":%q}`, time.Now().UnixNano(), pad)
				b, _ := json.Marshal(map[string]any{"channel": "feed", "data": json.RawMessage(data)})
				if resp, err := hc.Post("http://"+node+"/v1/publish", "application/json", bytes.NewReader(b)); err == nil {
					resp.Body.Close()
					published.Add(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	// read reads until the close or for d, returning the close code (0 =
	// open), the messages read and the worst lag among them.
	read := func(d time.Duration) (code, got int, worst time.Duration) {
		began, pinged := time.Now(), time.Now()
		for time.Since(began) < d {
			if time.Since(pinged) > 5*time.Second {
				slow.Send(`{"op":"ping"}`) // the heartbeat: a silent client is closed 1001 after 30 s
				pinged = time.Now()
			}
			e, err := slow.Read(10 * time.Second)
			if err != nil {
				t.Fatalf("after %v, %d messages, worst lag %v: %v", time.Since(began), got, worst, err)
			}
			if e.Closed {
				return e.CloseCode, got, worst
			}
			var m struct{ T int64 }
			if e.Frame.Op == wire.OpMessage && json.Unmarshal(e.Frame.Data, &m) == nil {
				got++
				worst = max(worst, time.Since(time.Unix(0, m.T)))
			}
		}
		return 0, got, worst
	}
	code, got, worst := read(10 * time.Second)
	t.Logf("512 kbit/s, 50 msg/s of 1 KB for 10 s: %d published, %d received, worst lag %v, close code %d (0 = open), load %s",
		published.Load(), got, worst, code, clustertest.LoadAvg())
	if code != 0 || worst > time.Second {
		t.Fatalf("a consumer the link keeps up with: close code %d, worst lag %v", code, worst)
	}
	rate.Store(100)
	began := time.Now()
	code, got, worst = read(40 * time.Second)
	t.Logf("512 kbit/s, 100 msg/s of 1 KB: after %v %d received, worst lag %v, close code %d (0 = open), load %s",
		time.Since(began).Round(time.Millisecond), got, worst, code, clustertest.LoadAvg())
	if code != wire.CloseSlowConsumer {
		t.Errorf("closed %d, want 4008", code)
	}
	if worst > maxLag+slack {
		t.Errorf("worst lag %v, want at most -max-lag %v + %v of bounded buffers", worst, maxLag, slack)
	}
}

// TestTrickledMessagesWithinBudget: 400 connections each trickle an
// unfinished fragmented message of 65,000 bytes (26 MB in all); the bytes
// charged stay within -max-unfinished (the frames past it close their
// connections 1013) and the node's RSS grows by no more than the budget:
// with 8 MiB, a third of what the messages would hold, and with 32 MiB,
// which holds them all.
func TestTrickledMessagesWithinBudget(t *testing.T) {
	t.Run("8 MiB", func(t *testing.T) { testTrickled(t, 8<<20, false) })
	t.Run("32 MiB", func(t *testing.T) { testTrickled(t, 32<<20, true) })
}

// testTrickled runs the trickle under budget; holdsAll: it is large enough
// for every message (26 MB of pages and 400 readers' allowances).
func testTrickled(t *testing.T, budget int64, holdsAll bool) {
	const (
		conns  = 400
		frag   = 1000
		frames = 65 // 65,000 bytes per message, 26 MB in all
	)
	// Plain: RSS under -race is the detector's shadow memory, not ours.
	c := startCluster(t, clustertest.Options{Nodes: 1, Plain: true, NodeArgs: []string{
		"-max-unfinished", strconv.FormatInt(budget, 10), "-assembly-timeout", "60s", "-max-pending", "1024",
	}})
	node := c.Nodes[0]
	pid := node.Pid()
	ctx := context.Background()
	metrics := "http://" + node.Addr + "/metrics"
	cs := make([]*wstest.Conn, conns)
	for i := range cs {
		cs[i] = wstest.Connect(t, node.Addr, fmt.Sprintf("t%d", i))
	}
	// The idle figure is measured as the peak is, the metrics scraped at
	// the same pace: it includes what scraping costs the node (garbage,
	// and the collector's headroom for it).
	cold := rss(pid)
	var idle int64
	for range 40 {
		time.Sleep(50 * time.Millisecond)
		testkit.Scrape(ctx, metrics, "ringcast_node_unfinished_message_bytes")
		idle = max(idle, rss(pid))
	}
	var peakRSS int64
	var peakHeld float64
	open := conns
	p := make([]byte, frag)
	for f := range frames {
		for i, cn := range cs {
			if cn == nil {
				continue
			}
			op := ws.OpContinuation
			if f == 0 {
				op = ws.OpText
			}
			if cn.WriteFrame(op, false, p) != nil {
				open--
				cs[i] = nil // closed by the node (1013 past the budget)
			}
		}
		time.Sleep(50 * time.Millisecond) // the trickle's pace: a fragment per connection every 50 ms
		held, _ := testkit.Scrape(ctx, metrics, "ringcast_node_unfinished_message_bytes")
		peakHeld = max(peakHeld, held)
		peakRSS = max(peakRSS, rss(pid))
	}
	t.Logf("%d connections trickling %d-byte messages (-max-unfinished %s): held at most %s, RSS %s idle (%s before scraping) → %s peak (+%s); writes failed on %d connections; load %s",
		conns, frag*frames, mib(budget), mib(int64(peakHeld)), mib(idle), mib(cold), mib(peakRSS), mib(peakRSS-idle), conns-open, clustertest.LoadAvg())
	if peakHeld > float64(budget) {
		t.Errorf("held %v bytes, over the budget %d", peakHeld, budget)
	}
	// The frames are read into the node's region of -max-unfinished
	// bytes, outside the Go heap, and each connection in the middle of a
	// message is charged its reader's state: what they cost in RSS is
	// within the budget.
	if peakRSS-idle > budget {
		t.Errorf("RSS grew by %s under a budget of %s", mib(peakRSS-idle), mib(budget))
	}
	if holdsAll && open != conns {
		t.Errorf("%d connections refused under a budget that holds every message", conns-open)
	}
}
