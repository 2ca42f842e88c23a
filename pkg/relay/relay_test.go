package relay

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringcast/ringcast/pkg/testkit"
)

func countFDs(tb testing.TB) int {
	tb.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Skipf("cannot count file descriptors: %v", err)
	}
	return len(entries)
}

func TestFDsPerConnection(t *testing.T) {
	b := startBackend(t, false)
	f := startFront(t, Config{}, b.Addr())
	warm := mustDial(t, f.addr())
	if err := warm.echo([]byte("x")); err != nil {
		t.Fatal(err)
	}

	const n = 200
	before := countFDs(t)
	conns := make([]*conn, n)
	for i := range conns {
		conns[i] = mustDial(t, f.addr())
	}
	testkit.Eventually(t, ioTimeout, func() bool { return f.count() == n+1 }, "all relayed")
	// Move bytes both ways: a splicing copy would hold a pipe pair by now.
	for i, c := range conns {
		if err := c.echo([]byte("ping")); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	after := countFDs(t)
	// Each connection also costs this process the test client's socket and
	// the backend's accepted socket.
	perConn := float64(after-before-2*n) / n
	t.Logf("fds: before %d, after %d, relay's per connection %.2f", before, after, perConn)
	if perConn > 2.05 {
		t.Errorf("relay uses %.2f fds per connection, want at most 2", perConn)
	}
}

// TestShards relays over more shards than the default and refuses a
// negative count.
func TestShards(t *testing.T) {
	if _, err := New(Config{Shards: -1}, nil, prometheus.NewCounter(prometheus.CounterOpts{Name: "b"}),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "a"})); err == nil {
		t.Error("New(Config{Shards: -1}) = nil error, want one")
	}
	b := startBackend(t, false)
	f := startFront(t, Config{Shards: 3}, b.Addr())
	conns := make([]*conn, 7) // more than one link per shard
	for i := range conns {
		conns[i] = mustDial(t, f.addr())
	}
	for round := range 3 {
		for i, c := range conns {
			if err := c.echo([]byte(fmt.Sprintf("round %d client %d", round, i))); err != nil {
				t.Fatalf("round %d, client %d: %v", round, i, err)
			}
		}
	}
}

// fill writes a byte pattern to c in 64 KiB chunks until total bytes or an
// error, counting what was written.
func fill(c net.Conn, total int, written *atomic.Int64) error {
	chunk := make([]byte, 64<<10)
	for off := 0; off < total; off += len(chunk) {
		for i := range chunk {
			chunk[i] = byte((off + i) % 251)
		}
		if _, err := c.Write(chunk); err != nil {
			return err
		}
		written.Add(int64(len(chunk)))
	}
	return nil
}

// TestSlowReader covers a client that takes bytes slower than they come:
// the relay holds what a side did not take and reads on once it did,
// without losing or reordering bytes.
func TestSlowReader(t *testing.T) {
	b := startBackend(t, false)
	f := startFront(t, Config{BufferSize: 4096}, b.Addr())
	c := mustDial(t, f.addr())
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	const total = 16 << 20
	var written atomic.Int64
	errc := make(chan error, 1)
	go func() { errc <- fill(c, total, &written) }()
	// The echo backs up before the client reads any of it.
	testkit.Eventually(t, ioTimeout, func() bool { return written.Load() >= 4<<20 }, "4 MiB written")
	buf := make([]byte, 64<<10)
	for off := 0; off < total; {
		n, err := c.r.Read(buf)
		for i, got := range buf[:n] {
			if want := byte((off + i) % 251); got != want {
				t.Fatalf("byte %d of the echo = %d, want %d", off+i, got, want)
			}
		}
		off += n
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", off, total, err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestStalledClient covers a client that stops reading: the relay closes
// it after WriteTimeout without progress, or at once on Link.Close.
func TestStalledClient(t *testing.T) {
	for _, tc := range []struct {
		name      string
		timeout   time.Duration
		closeNode bool
	}{
		{"write timeout", 200 * time.Millisecond, false},
		{"close link", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBackend(t, false)
			f := startFront(t, Config{WriteTimeout: tc.timeout}, b.Addr())
			c := mustDial(t, f.addr())
			if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
				t.Fatal(err)
			}
			var written atomic.Int64
			errc := make(chan error, 1)
			go func() { errc <- fill(c, 1<<30, &written) }()
			if tc.closeNode {
				testkit.Eventually(t, ioTimeout, func() bool { return written.Load() >= 4<<20 }, "4 MiB written")
				if got := f.closeAll(); got != 1 {
					t.Errorf("closed %d links, want 1", got)
				}
			}
			if err := <-errc; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("client write error %v after %d bytes, want the relay to close the connection", err, written.Load())
			}
			testkit.Eventually(t, ioTimeout, func() bool { return f.count() == 0 }, "no connections")
		})
	}
}

// memInUse is heap and stack memory in use after garbage collection.
func memInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// TestIdleMemory measures heap plus stack bytes per idle relayed connection:
// the same clients and backend are measured once direct and once through the
// relay, and the difference is the relay's share.
func TestIdleMemory(t *testing.T) {
	if os.Getenv("RINGCAST_MEM") != "1" {
		t.Skip("set RINGCAST_MEM=1 to measure idle memory per relayed connection")
	}
	const n = 2000
	b := startBackend(t, true)
	f := startFront(t, Config{}, b.Addr())

	measure := func(target string, settled func() bool) float64 {
		base := memInUse()
		conns := make([]net.Conn, n)
		for i := range conns {
			c, err := dial(target)
			if err != nil {
				t.Fatal(err)
			}
			conns[i] = c.Conn // the client's read buffer is garbage from here
		}
		testkit.Eventually(t, ioTimeout, settled, "connections settled")
		used := float64(memInUse()-base) / n
		for _, c := range conns {
			c.Close()
		}
		return used
	}
	direct := measure(b.Addr(), func() bool { return b.Accepted() == n })
	relayed := measure(f.addr(), func() bool { return f.count() == n })
	t.Logf("heap+stack per idle connection (N=%d): direct %.0f B, relayed %.0f B, relay's share %.0f B",
		n, direct, relayed, relayed-direct)
}

// BenchmarkRelayEcho measures 64-byte echo round trips over 100 parallel
// connections, straight to the backend and through the relay.
func BenchmarkRelayEcho(b *testing.B) {
	be := startBackend(b, false)
	f := startFront(b, Config{}, be.Addr())
	for _, bc := range []struct{ name, addr string }{{"direct", be.Addr()}, {"relay", f.addr()}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetParallelism(100 / runtime.GOMAXPROCS(0))
			b.SetBytes(64)
			b.RunParallel(func(pb *testing.PB) {
				c, err := dial(bc.addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				msg := make([]byte, 64)
				for pb.Next() {
					if err := c.echo(msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
