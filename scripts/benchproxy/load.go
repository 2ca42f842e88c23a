package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/proc"
)

// result is what the load generator reports on its last stdout line.
type result struct {
	Msgs       int64         // round trips completed inside the window
	Seconds    float64       // window length
	P50, P99   time.Duration // round-trip latency inside the window
	Errors     int           // connections that failed
	FirstError string        `json:",omitempty"`
}

// Load phases.
const (
	warming int32 = iota
	measuring
	stopping
)

// runLoad opens -conns WebSockets (connection i to urls[i % len], client id
// c<i>), runs a closed echo loop on each, prints "measuring" when the window
// opens and the result as JSON when it closes.
func runLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	urls := fs.String("urls", "", "comma-separated ws:// URLs")
	conns := fs.Int("conns", 100, "connections")
	size := fs.Int("size", 64, "message bytes")
	warmup := fs.Duration("warmup", 2*time.Second, "load before the window")
	duration := fs.Duration("duration", 10*time.Second, "window")
	mode := fs.String("mode", "echo", "echo (round trips on open connections) or connect (connections opened, echoed once, closed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets := strings.Split(*urls, ",")
	if *urls == "" || *conns < 1 || *size < 1 || *duration <= 0 {
		return errors.New("need -urls, -conns ≥ 1, -size ≥ 1, -duration > 0")
	}
	// One deadline covers every socket operation of the run.
	deadline := time.Now().Add(*warmup + *duration + 30*time.Second)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	payload := bytes.Repeat([]byte("x"), *size)
	switch *mode {
	case "echo":
	case "connect":
		return runConnect(ctx, targets, *conns, payload, *warmup, *duration)
	default:
		return fmt.Errorf("-mode %q: want echo or connect", *mode)
	}
	ls := make([]*loop, *conns)
	defer func() {
		for _, l := range ls {
			if l != nil {
				l.conn.Close()
			}
		}
	}()
	dialer := ws.Dialer{Timeout: 5 * time.Second, TLSConfig: benchTLS}
	for i := range ls {
		u := fmt.Sprintf("%s?client_id=c%05d", targets[i%len(targets)], i)
		conn, br, _, err := dialer.Dial(ctx, u)
		if err != nil {
			return fmt.Errorf("dial %s: %w", u, err)
		}
		if br == nil {
			br = bufio.NewReader(conn)
		}
		if err := conn.SetDeadline(deadline); err != nil {
			conn.Close()
			return err
		}
		var frame bytes.Buffer
		if err := ws.WriteFrame(&frame, ws.MaskFrame(ws.NewTextFrame(payload))); err != nil {
			conn.Close()
			return err
		}
		ls[i] = &loop{conn: conn, br: br, frame: frame.Bytes(), want: payload}
	}

	// Ctrl-C: unblock every loop at once instead of at its deadline.
	defer context.AfterFunc(ctx, func() {
		for _, l := range ls {
			l.conn.Close()
		}
	})()
	var phase atomic.Int32
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.err = l.run(&phase)
		}()
	}
	window := window(ctx, &phase, *warmup, *duration)
	wg.Wait()
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	lats := make([][]time.Duration, len(ls))
	errs := make([]error, len(ls))
	for i, l := range ls {
		lats[i], errs[i] = l.lat, l.err
	}
	return report(window, lats, errs)
}

// window runs the warm-up, opens the measured window (printing
// "measuring"), closes it and returns its length.
func window(ctx context.Context, phase *atomic.Int32, warmup, duration time.Duration) time.Duration {
	proc.Sleep(ctx, warmup)
	phase.Store(measuring)
	start := time.Now()
	fmt.Println("measuring")
	proc.Sleep(ctx, duration)
	phase.Store(stopping)
	return time.Since(start)
}

// report prints the result line: what completed inside the window and the
// loops that failed.
func report(window time.Duration, lats [][]time.Duration, errs []error) error {
	res := result{Seconds: window.Seconds()}
	var lat []time.Duration
	for i := range lats {
		lat = append(lat, lats[i]...)
		if errs[i] != nil {
			if res.Errors++; res.FirstError == "" {
				res.FirstError = errs[i].Error()
			}
		}
	}
	res.Msgs = int64(len(lat))
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50 = lat[len(lat)*50/100]
		res.P99 = lat[len(lat)*99/100]
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

// runConnect runs conns loops that each open a WebSocket (from one of
// several 127.0.0.x source addresses, so that no address runs out of
// ports), echo one message and close, over and over.
func runConnect(ctx context.Context, targets []string, conns int, payload []byte, warmup, duration time.Duration) error {
	var frame bytes.Buffer
	if err := ws.WriteFrame(&frame, ws.MaskFrame(ws.NewTextFrame(payload))); err != nil {
		return err
	}
	closeFrame := ws.MustCompileFrame(ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
	var phase atomic.Int32
	lats := make([][]time.Duration, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%200))}
			d := ws.Dialer{Timeout: 5 * time.Second, TLSConfig: benchTLS, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return (&net.Dialer{LocalAddr: src}).DialContext(ctx, network, addr)
			}}
			got := make([]byte, len(payload))
			for n := 0; ; n++ {
				p := phase.Load()
				if p == stopping || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				u := fmt.Sprintf("%s?client_id=k%05d_%d", targets[(i+n)%len(targets)], i, n)
				if err := connectOnce(ctx, d, u, frame.Bytes(), closeFrame, got); err != nil {
					errs[i] = err
					return
				}
				if p == measuring && phase.Load() == measuring {
					lats[i] = append(lats[i], time.Since(t0))
				}
			}
		}()
	}
	w := window(ctx, &phase, warmup, duration)
	wg.Wait()
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return report(w, lats, errs)
}

// connectOnce opens u, echoes frame once, sends a close frame and closes.
func connectOnce(ctx context.Context, d ws.Dialer, u string, frame, closeFrame, got []byte) error {
	conn, br, _, err := d.Dial(ctx, u)
	if err != nil {
		return fmt.Errorf("dial %s: %w", u, err)
	}
	defer conn.Close()
	if br == nil {
		br = bufio.NewReader(conn)
	}
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write(frame); err != nil {
		return err
	}
	h, err := ws.ReadHeader(br)
	if err != nil {
		return err
	}
	if h.OpCode != ws.OpText || h.Length != int64(len(got)) {
		return fmt.Errorf("got frame op %d length %d, want a %d-byte text frame", h.OpCode, h.Length, len(got))
	}
	if _, err := io.ReadFull(br, got); err != nil {
		return err
	}
	_, err = conn.Write(closeFrame)
	return err
}

// loop is one connection's closed loop.
type loop struct {
	conn  net.Conn
	br    *bufio.Reader
	frame []byte // the masked text frame sent every time
	want  []byte
	lat   []time.Duration // round trips completed inside the window
	err   error
}

func (l *loop) run(phase *atomic.Int32) error {
	got := make([]byte, len(l.want))
	for {
		p := phase.Load()
		if p == stopping {
			return nil
		}
		t0 := time.Now()
		if _, err := l.conn.Write(l.frame); err != nil {
			return err
		}
		h, err := ws.ReadHeader(l.br)
		if err != nil {
			return err
		}
		if h.OpCode != ws.OpText || !h.Fin || h.Length != int64(len(got)) {
			return fmt.Errorf("got frame op %d fin %v length %d, want a %d-byte text frame", h.OpCode, h.Fin, h.Length, len(got))
		}
		if _, err := io.ReadFull(l.br, got); err != nil {
			return err
		}
		if !bytes.Equal(got, l.want) {
			return errors.New("echo differs from what was sent")
		}
		if p == measuring && phase.Load() == measuring {
			l.lat = append(l.lat, time.Since(t0))
		}
	}
}

// benchTLS is what the load generator trusts on a wss:// path: the relay's
// throwaway self-signed certificate, on loopback.
var benchTLS = &tls.Config{InsecureSkipVerify: true}
