package relay

import (
	"bufio"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ioTimeout bounds every socket operation in tests.
const ioTimeout = 5 * time.Second

// startBackend echoes every byte it reads; with hold it keeps each
// connection without a goroutine and echoes nothing.
func startBackend(tb testing.TB, hold bool) *testkit.Server {
	tb.Helper()
	return testkit.Serve(tb, func(c net.Conn) {
		if !hold {
			testkit.Echo(c, c)
			c.Close()
		}
	})
}

// front accepts connections and relays each to the backend at to; it is
// the Owner of its links.
type front struct {
	ln    net.Listener
	to    string
	relay *Relay
	wg    sync.WaitGroup

	mu    sync.Mutex
	links map[Link]struct{}
}

func startFront(tb testing.TB, cfg Config, to string) *front {
	tb.Helper()
	var toB, toA prometheus.Counter = prometheus.NewCounter(prometheus.CounterOpts{Name: "to_b"}),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "to_a"})
	r, err := New(cfg, nil, toB, toA)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &front{ln: ln, to: to, relay: r, links: make(map[Link]struct{})}
	f.wg.Add(1)
	go f.accept()
	tb.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
		f.closeAll()
		r.Close()
	})
	return f
}

func (f *front) addr() string { return f.ln.Addr().String() }

func (f *front) accept() {
	defer f.wg.Done()
	for {
		a, err := f.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.DialTimeout("tcp", f.to, ioTimeout)
		if err != nil {
			a.Close()
			continue
		}
		_ = f.relay.Start(a, b, f) // a refused link is closed: its client sees the end
	}
}

func (f *front) Track(l Link) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[l] = struct{}{}
	return true
}

func (f *front) Untrack(l Link, _ error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, l)
}

// count returns the number of live links.
func (f *front) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.links)
}

// closeAll closes every live link and returns how many it closed.
func (f *front) closeAll() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for l := range f.links {
		l.Close()
	}
	return len(f.links)
}

// conn is a test client's connection.
type conn struct {
	net.Conn
	r *bufio.Reader
}

// dial connects to addr. It returns errors rather than failing so that it
// can run in benchmark goroutines.
func dial(addr string) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, r: bufio.NewReader(c)}, nil
}

func mustDial(tb testing.TB, addr string) *conn {
	tb.Helper()
	c, err := dial(addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// echo writes msg and checks it comes back (testkit.EchoOnce).
func (c *conn) echo(msg []byte) error { return testkit.EchoOnce(c, c.r, msg) }
