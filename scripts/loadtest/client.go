package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// clientMode, as the first argument, runs this binary as a client process:
// it holds clients <from>…<to-1>, each subscribed to one channel, and prints
// a cumulative report line every reportEvery until its stdin closes.
const clientMode = "-client-child"

const (
	reportEvery      = 500 * time.Millisecond
	handshakeTimeout = 10 * time.Second
	maxFrame         = 1 << 20
)

// report is a client process's cumulative state, one JSON line.
type report struct {
	Held       int            `json:"held"`       // connections welcomed and subscribed now
	Deliveries uint64         `json:"deliveries"` // messages received, all phases
	Window     uint64         `json:"window"`     // messages published inside the window and received
	Lat        hist           `json:"lat"`        // delivery latency of the window's messages
	Dials      uint64         `json:"dials"`      // connection attempts
	Errors     uint64         `json:"errors"`     // dials, handshakes or reads that failed without a close frame
	FirstError string         `json:"first_error,omitempty"`
	Codes      map[string]int `json:"codes,omitempty"` // close codes received, and reconnect requests as "reconnect:<reason>"
}

// state is what a client process's connections share. Deliveries are
// counted per client (an uncontended lock) and summed when reported.
type state struct {
	mu      sync.Mutex
	r       report
	clients []*client
}

// snapshot returns the report with every client's deliveries summed.
func (s *state) snapshot() report {
	s.mu.Lock()
	r := s.r
	r.Codes = maps.Clone(s.r.Codes)
	s.mu.Unlock()
	r.Lat = hist{}
	for _, c := range s.clients {
		c.mu.Lock()
		r.Deliveries += c.deliveries
		r.Window += c.window
		r.Lat.merge(c.lat)
		c.mu.Unlock()
	}
	return r
}

func (s *state) fail(err error) {
	s.mu.Lock()
	s.r.Errors++
	if s.r.FirstError == "" {
		s.r.FirstError = err.Error()
	}
	s.mu.Unlock()
}

func (s *state) code(c string) {
	s.mu.Lock()
	s.r.Codes[c]++
	s.mu.Unlock()
}

func (s *state) held(d int) {
	s.mu.Lock()
	s.r.Held += d
	s.mu.Unlock()
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	urls := fs.String("urls", "", "comma-separated ws:// endpoints; client i uses urls[i % n]")
	prefix := fs.String("prefix", "lt", "client id prefix")
	from := fs.Int("from", 0, "first client number")
	to := fs.Int("to", 0, "last client number + 1")
	laddr := fs.String("laddr", "", "source address; a three-part loopback prefix (127.0.3) spreads the clients over -sources addresses of it; empty: the system's choice")
	sources := fs.Int("sources", 1, "with a prefix -laddr: how many source addresses (.10 up)")
	conc := fs.Int("conc", 100, "dials in flight")
	channels := fs.Int("channels", 1, "client i subscribes to channel <prefix>-c<i % channels>")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets := strings.Split(*urls, ",")
	if *urls == "" || *to < *from || *conc <= 0 || *channels <= 0 || *sources < 1 || *sources > 240 {
		return errors.New("need -urls, -from ≤ -to, -conc > 0, -channels > 0, 1 ≤ -sources ≤ 240")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &state{r: report{Codes: map[string]int{}}}
	// dialer i dials from source address i (a balancer limits connections
	// per address, as it would for users behind one NAT).
	var dialers []ws.Dialer
	for i := range *sources {
		nd := &net.Dialer{Timeout: handshakeTimeout}
		switch ip := *laddr; {
		case strings.Count(ip, ".") == 2:
			nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("%s.%d", ip, 10+i))}
		case ip != "":
			nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
		}
		dialers = append(dialers, ws.Dialer{Timeout: handshakeTimeout, NetDial: nd.DialContext})
	}
	sem := make(chan struct{}, *conc)
	var wg sync.WaitGroup
	var mu sync.Mutex
	live := map[net.Conn]struct{}{}
	for i := *from; i < *to; i++ {
		c := &client{st: st, dialer: dialers[i%len(dialers)], sem: sem,
			url:     fmt.Sprintf("%s?client_id=%s%d", targets[i%len(targets)], *prefix, i),
			channel: fmt.Sprintf("%s-c%d", *prefix, i%*channels)}
		st.clients = append(st.clients, c)
	}
	for _, c := range st.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, func(nc net.Conn, add bool) {
				mu.Lock()
				if add {
					live[nc] = struct{}{}
				} else {
					delete(live, nc)
				}
				mu.Unlock()
			})
		}()
	}
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	enc := json.NewEncoder(os.Stdout)
	t := time.NewTicker(reportEvery)
	defer t.Stop()
	emit := func() error {
		r := st.snapshot()
		return enc.Encode(&r)
	}
	for {
		select {
		case <-t.C:
			if err := emit(); err != nil {
				return err
			}
		case <-done:
			err := emit()
			cancel()
			mu.Lock()
			for nc := range live {
				nc.Close()
			}
			mu.Unlock()
			wg.Wait()
			return err
		}
	}
}

// client is one simulated user: connect, subscribe, read, and reconnect
// with jittered backoff (honouring reconnect requests) until ctx ends.
type client struct {
	st      *state
	dialer  ws.Dialer
	sem     chan struct{}
	url     string
	channel string

	mu         sync.Mutex
	deliveries uint64
	window     uint64
	lat        hist
}

func (c *client) run(ctx context.Context, track func(net.Conn, bool)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		wait, ok := c.session(ctx, track)
		if ok {
			backoff = 100 * time.Millisecond
		} else {
			backoff = min(2*backoff, 5*time.Second)
		}
		if wait < 0 {
			wait = rand.N(backoff) + time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// session runs one connection. It returns how long to wait before the next
// (negative: back off) and whether the connection got as far as subscribed.
func (c *client) session(ctx context.Context, track func(net.Conn, bool)) (time.Duration, bool) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, false
	}
	c.st.mu.Lock()
	c.st.r.Dials++
	c.st.mu.Unlock()
	nc, br, _, err := c.dialer.Dial(ctx, c.url)
	<-c.sem
	if err != nil {
		if ctx.Err() == nil {
			c.st.fail(fmt.Errorf("dial: %w", err))
		}
		return -1, false
	}
	track(nc, true)
	defer func() {
		track(nc, false)
		nc.Close()
	}()
	if br == nil {
		br = bufio.NewReaderSize(nc, 32<<10)
	}
	var wmu sync.Mutex
	write := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		nc.SetWriteDeadline(time.Now().Add(handshakeTimeout))
		return wsutil.WriteClientText(nc, b)
	}
	nc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if err := write(fmt.Appendf(nil, `{"op":"subscribe","channel":%q}`, c.channel)); err != nil {
		c.st.fail(fmt.Errorf("send subscribe: %w", err))
		return -1, false
	}
	subscribed := false
	heartbeat := 10 * time.Second
	stopPing := func() {}
	defer func() {
		stopPing()
		if subscribed {
			c.st.held(-1)
		}
	}()
	var buf []byte
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			if ctx.Err() == nil {
				c.st.fail(fmt.Errorf("read: %w", err))
			}
			return -1, subscribed
		}
		if h.Length > maxFrame {
			c.st.fail(fmt.Errorf("frame of %d bytes", h.Length))
			return -1, subscribed
		}
		if int64(cap(buf)) < h.Length {
			buf = make([]byte, h.Length)
		}
		p := buf[:h.Length]
		if _, err := io.ReadFull(br, p); err != nil {
			if ctx.Err() == nil {
				c.st.fail(fmt.Errorf("read: %w", err))
			}
			return -1, subscribed
		}
		now := time.Now()
		switch h.OpCode {
		case ws.OpClose:
			code, _ := ws.ParseCloseFrameData(p)
			c.st.code(strconv.Itoa(int(code)))
			return -1, subscribed
		case ws.OpPing:
			wmu.Lock()
			ws.WriteFrame(nc, ws.MaskFrame(ws.NewPongFrame(p)))
			wmu.Unlock()
			continue
		case ws.OpText:
		default:
			continue
		}
		if bytes.HasPrefix(p, []byte(`{"op":"message"`)) {
			c.delivered(p, now)
			continue
		}
		var f struct {
			Op          string `json:"op"`
			Code        string `json:"code"`
			Message     string `json:"message"`
			Reason      string `json:"reason"`
			AfterMS     int    `json:"after_ms"`
			HeartbeatMS int    `json:"heartbeat_ms"`
		}
		if err := json.Unmarshal(p, &f); err != nil {
			c.st.fail(fmt.Errorf("decode %.80q: %w", p, err))
			return -1, subscribed
		}
		switch f.Op {
		case "welcome":
			if f.HeartbeatMS > 0 {
				heartbeat = time.Duration(f.HeartbeatMS) * time.Millisecond
			}
		case "subscribed":
			subscribed = true
			c.st.held(1)
			nc.SetReadDeadline(time.Time{})
			// The node closes a connection silent for 3 heartbeats.
			pings := make(chan struct{})
			go func() {
				t := time.NewTicker(heartbeat)
				defer t.Stop()
				for {
					select {
					case <-pings:
						return
					case <-t.C:
						write([]byte(`{"op":"ping"}`))
					}
				}
			}()
			stopPing = func() { close(pings) }
		case "error":
			c.st.fail(fmt.Errorf("error frame: %s: %s", f.Code, f.Message))
			if !subscribed {
				return -1, false
			}
		case "reconnect":
			c.st.code("reconnect:" + f.Reason)
			return time.Duration(f.AfterMS) * time.Millisecond, subscribed
		}
	}
}

// delivered counts a message frame and, when it was published inside the
// window, its latency (the publisher's clock is this machine's).
func (c *client) delivered(p []byte, now time.Time) {
	inWindow := bytes.Contains(p, []byte(`"lt_w":1`))
	var sent int64
	if inWindow {
		if i := bytes.Index(p, []byte(`"lt_t":`)); i >= 0 {
			rest := p[i+len(`"lt_t":`):]
			j := 0
			for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
				j++
			}
			sent, _ = strconv.ParseInt(string(rest[:j]), 10, 64)
		}
	}
	c.mu.Lock()
	c.deliveries++
	if inWindow {
		c.window++
		if sent > 0 {
			c.lat.add(now.Sub(time.Unix(0, sent)))
		}
	}
	c.mu.Unlock()
}
