package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

const (
	// connLifetime bounds every echo connection (a deadline on all its
	// socket operations); a benchmark row lasts seconds.
	connLifetime = 5 * time.Minute
	// maxFrame caps an echoed frame's payload.
	maxFrame = 1 << 20
)

// runEcho serves WebSocket echo on n loopback listeners, prints their
// addresses comma-separated on one line and serves until ctx ends.
func runEcho(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	n := fs.Int("n", 3, "listeners")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var (
		lns   []net.Listener
		addrs []string
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for range *n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns[c] = struct{}{}
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = echoConn(c)
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
			}
		}()
	}
	fmt.Println(strings.Join(addrs, ","))
	<-ctx.Done()
	return nil
}

// echoConn upgrades c and sends every data frame back unmasked, batching
// writes while more input is buffered.
func echoConn(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := (ws.Upgrader{}).Upgrade(c); err != nil {
		return err
	}
	if err := c.SetDeadline(time.Now().Add(connLifetime)); err != nil {
		return err
	}
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	var buf []byte
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return err
		}
		if h.Length > maxFrame {
			return errors.New("frame too large")
		}
		if int64(cap(buf)) < h.Length {
			buf = make([]byte, h.Length)
		}
		p := buf[:h.Length]
		if _, err := io.ReadFull(br, p); err != nil {
			return err
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		out := ws.Header{Fin: h.Fin, OpCode: h.OpCode, Length: h.Length}
		switch h.OpCode {
		case ws.OpPing:
			out.OpCode = ws.OpPong
		case ws.OpPong:
			continue
		}
		if err := ws.WriteHeader(bw, out); err != nil {
			return err
		}
		if _, err := bw.Write(p); err != nil {
			return err
		}
		if br.Buffered() == 0 || h.OpCode == ws.OpClose {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		if h.OpCode == ws.OpClose {
			return nil
		}
	}
}
