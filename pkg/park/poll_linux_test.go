package park

import (
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// conn is a parked server socket that reports its wake-ups on a channel.
type conn struct {
	spot  Spot
	nc    net.Conn
	raw   syscall.RawConn
	woken chan string
}

func (c *conn) Spot() *Spot          { return &c.spot }
func (c *conn) Conn() net.Conn       { return c.nc }
func (c *conn) Raw() syscall.RawConn { return c.raw }
func (c *conn) Readable()            { c.woken <- "readable" }
func (c *conn) Late()                { c.woken <- "late" }

// pair returns a server socket ready to park on set and its client end.
func pair(t *testing.T, set *Set) (*conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, nc := testkit.TCPPair(t, ln)
	c := &conn{nc: nc, woken: make(chan string, 1)}
	if c.raw, err = nc.SyscallConn(); err != nil {
		t.Fatal(err)
	}
	set.Assign(&c.spot)
	return c, client
}

func wake(t *testing.T, c *conn, want string) {
	t.Helper()
	select {
	case got := <-c.woken:
		if got != want {
			t.Fatalf("woken %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("not woken within 5 s, want %s", want)
	}
}

// TestPark parks a socket and sees each way it leaves its poller: bytes
// arrive, the deadline passes, or it is kicked; the pollers' goroutines
// are gone once nothing is parked.
func TestPark(t *testing.T) {
	var wg sync.WaitGroup
	defer wg.Wait()
	set := New(200*time.Millisecond, &wg, zap.NewNop())
	c, client := pair(t, set)

	if Park(&conn{}) {
		t.Fatal("a spot with no poller parked")
	}
	if !Park(c) {
		t.Fatal("Park failed")
	}
	client.Write([]byte("x"))
	wake(t, c, "readable")

	if !Park(c) { // re-armed: the byte is still unread, so at once readable
		t.Fatal("Park again failed")
	}
	wake(t, c, "readable")
	var b [1]byte
	c.nc.Read(b[:])

	start := time.Now()
	if !Park(c) {
		t.Fatal("Park after the read failed")
	}
	wake(t, c, "late")
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("late after %v, before the 200ms deadline", d)
	}

	if !Park(c) {
		t.Fatal("Park before Kick failed")
	}
	if !Kick(c) {
		t.Error("Kick of a parked connection reported false")
	}
	if Kick(c) {
		t.Error("second Kick reported true")
	}
	select {
	case w := <-c.woken:
		t.Errorf("kicked connection was woken %s too", w)
	default:
	}
}
