package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"golang.org/x/sync/errgroup"
)

const (
	// clientFlag, as the first argument, runs this binary as a client
	// process that holds connections for the parent.
	clientFlag = "-client"
	// readyLine is what a client prints once all its connections are
	// subscribed.
	readyLine = "ready"

	dialAttempts     = 5
	handshakeTimeout = 10 * time.Second
)

// runClient opens connections m<from>…m<to-1>, subscribes each to one of
// -channels channels, prints readyLine and then holds them until its stdin
// closes: silent, or sending a ping every -ping and reading its pong.
func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	url := fs.String("url", "", "WebSocket endpoint")
	from := fs.Int("from", 0, "first client number")
	to := fs.Int("to", 0, "last client number + 1")
	laddr := fs.String("laddr", "127.0.0.1", "source address")
	conc := fs.Int("conc", 100, "dials in flight")
	channels := fs.Int("channels", 100, "channels to spread over")
	ping := fs.Duration("ping", 0, "send a ping this often per connection (0 = silent)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to < *from || *conc <= 0 || *channels <= 0 || *ping < 0 {
		return fmt.Errorf("bad client range m%d…m%d, -conc %d, -channels %d or -ping %v", *from, *to, *conc, *channels, *ping)
	}
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(*laddr)}, Timeout: handshakeTimeout}
	d := ws.Dialer{Timeout: handshakeTimeout, NetDial: nd.DialContext}
	if strings.HasPrefix(*url, "wss://") {
		d.TLSConfig = &tls.Config{InsecureSkipVerify: true} // a loopback benchmark against a self-signed pair
	}
	conns := make([]net.Conn, *to-*from)
	done := make(chan struct{})
	defer close(done)
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(*conc)
	for i := *from; i < *to; i++ {
		g.Go(func() (err error) {
			c, err := connect(ctx, d, *url, i, *channels)
			if err == nil && *ping > 0 {
				go pinger(c, *ping, done) // from now on: the node's heartbeat runs
			}
			conns[i-*from] = c
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	fmt.Println(readyLine)
	io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive(conns) // unreachable sockets would be closed by their finalizers
	return nil
}

// pingFailed reports the first failed ping of the process (the rest are
// alike; the parent sees the lost connections in the node's fds).
var pingFailed sync.Once

// pinger sends c a ping every interval, the first at a random point of the
// first interval (clients connect in a burst, but their heartbeats drift
// apart), and reads the pong, until done. A failure ends this connection's
// pings.
func pinger(c net.Conn, interval time.Duration, done <-chan struct{}) {
	fail := func(what string, err error) {
		pingFailed.Do(func() { fmt.Fprintf(os.Stderr, "benchmem client: %s: %v (first failure of this process)\n", what, err) })
	}
	t := time.NewTimer(rand.N(interval))
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		t.Reset(interval)
		c.SetDeadline(time.Now().Add(handshakeTimeout))
		if err := wsutil.WriteClientText(c, []byte(`{"op":"ping"}`)); err != nil {
			fail("ping", err)
			return
		}
		if _, err := wsutil.ReadServerText(c); err != nil {
			fail("pong", err)
			return
		}
	}
}

// connect subscribes client m<i>, retrying a few times with a growing pause.
func connect(ctx context.Context, d ws.Dialer, url string, i, channels int) (net.Conn, error) {
	var err error
	for attempt := range dialAttempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		var c net.Conn
		if c, err = subscribe(ctx, d, url, i, channels); err == nil {
			return c, nil
		}
	}
	return nil, fmt.Errorf("client m%d: %w", i, err)
}

// subscribe dials, sends one subscribe and reads until its reply.
func subscribe(ctx context.Context, d ws.Dialer, url string, i, channels int) (net.Conn, error) {
	c, br, _, err := d.Dial(ctx, fmt.Sprintf("%s?client_id=m%d", url, i))
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	var r io.Reader = c
	if br != nil { // frames that came with the handshake response
		r = br
		defer ws.PutReader(br)
	}
	rw := struct {
		io.Reader
		io.Writer
	}{r, c}
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := wsutil.WriteClientText(c, fmt.Appendf(nil, `{"op":"subscribe","channel":"c%d"}`, i%channels)); err != nil {
		return nil, fmt.Errorf("send subscribe: %w", err)
	}
	for {
		b, err := wsutil.ReadServerText(rw)
		if err != nil {
			return nil, fmt.Errorf("await subscribed: %w", err)
		}
		var f struct{ Op, Code, Message string }
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("decode %q: %w", b, err)
		}
		switch f.Op {
		case "subscribed":
			if err := c.SetDeadline(time.Time{}); err != nil {
				return nil, err
			}
			ok = true
			return c, nil
		case "error":
			return nil, fmt.Errorf("subscribe: %s: %s", f.Code, f.Message)
		}
	}
}
