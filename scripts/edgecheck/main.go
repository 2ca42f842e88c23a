// Command edgecheck replays what a careless or hostile client does against a
// running cluster and prints what each case got: close codes for bad frames,
// statuses for bad handshakes, admission answers from one source address,
// the bounds of slow and huge requests. It asserts nothing; it prints the
// table the hardening is judged by, so that two builds can be compared.
// Run from the module root (it builds and starts a local cluster):
//
//	go run ./scripts/edgecheck [-bin DIR]
//
// -bin names a directory with balancer and node binaries to check (another
// build); default: this tree's.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/gobwas/ws"

	"github.com/ringcast/ringcast/pkg/clustertest"
)

func main() {
	bin := flag.String("bin", "", "directory with the balancer and node binaries to check (default: build this tree)")
	flag.Parse()
	if *bin != "" {
		os.Setenv("RINGCAST_BIN", *bin)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "edgecheck:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	c, err := clustertest.Start(ctx, clustertest.Options{Nodes: 1, NodeArgs: []string{"-origins", "http://ok.test"}})
	if err != nil {
		return err
	}
	defer c.Close()
	defer c.RemoveLogs()
	bal, node := c.Balancers[0].Addr, c.Nodes[0].Addr
	row := func(what, where, got string) { fmt.Printf("| %s | %s | %s |\n", what, where, got) }
	fmt.Println("| case | target | answer |")
	fmt.Println("|---|---|---|")
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"reserved opcode 3", mframe(3, nil)},
		{"reserved opcode 11", mframe(11, nil)},
		{"close code 999", mframe(8, []byte{0x03, 0xe7})},
		{"close code 1005", mframe(8, []byte{0x03, 0xed})},
		{"close code 5000", mframe(8, []byte{0x13, 0x88})},
		{"close with a 1-byte payload", mframe(8, []byte{0x03})},
		{"close reason not UTF-8", mframe(8, []byte{0x03, 0xe8, 0xff})},
	} {
		for _, t := range []struct{ name, addr string }{{"node", node}, {"balancer", bal}} {
			row(tc.name, t.name, closeAnswer(t.addr, tc.frame, 3*time.Second))
		}
	}
	pings := make([]byte, 0, 1000*20)
	for range 1000 {
		pings = append(pings, mframe(1, []byte(`{"op":"ping"}`))...)
	}
	row("1,000 JSON pings in a row", "balancer", pingAnswer(bal, pings))
	var frag []byte
	frag = append(frag, rawFrame(false, 1, []byte(`{"op":`))...)
	row("unfinished fragmented message, no more bytes", "balancer", closeAnswer(bal, frag, 15*time.Second))

	up := "GET /ws?client_id=edge HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, t := range []struct{ name, addr string }{{"node", node}, {"balancer", bal}} {
		row("two Sec-WebSocket-Key headers", t.name, handshake(t.addr, up+"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"))
		row("refused upgrade (bad client id)", t.name, handshake(t.addr, strings.Replace(up, "client_id=edge", "client_id=a%2Fb", 1)+"\r\n"))
		row("1 MB of headers", t.name, handshake(t.addr, up+"X-Big: "+strings.Repeat("a", 1<<20)+"\r\n\r\n"))
	}
	row("Origin: evil, listed in Connection (node -origins ok.test)", "balancer",
		handshake(bal, strings.Replace(up, "Connection: Upgrade", "Connection: Upgrade, Origin", 1)+"Origin: http://evil.test\r\n\r\n"))
	row("POST /v1/publish body at 1 byte/s", "balancer", slowBody(bal, 20*time.Second))
	row("2,100 connections held from 127.0.0.1", "balancer", held(bal, 2100))
	row("800 connections opened in a row from 127.0.0.3", "balancer", churn(bal, 800))
	row("start with -gossip 0.0.0.0:0 and no -cluster-key", "node binary", openStart(c))
	return nil
}

// mframe is one final masked client frame.
func mframe(op byte, p []byte) []byte { return rawFrame(true, op, p) }

func rawFrame(fin bool, op byte, p []byte) []byte {
	var b strings.Builder
	f := ws.MaskFrame(ws.NewFrame(ws.OpCode(op), fin, p))
	ws.WriteFrame(&b, f)
	return []byte(b.String())
}

func dialWS(addr, id string, laddr string) (net.Conn, *bufio.Reader, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(nc, "GET /ws?client_id=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", id)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	if resp.StatusCode != 101 {
		nc.Close()
		return nil, nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	nc.SetDeadline(time.Time{})
	return nc, br, nil
}

// closeAnswer sends frame after the welcome and reports the close code the
// server answers with within wait (frames before it are skipped).
func closeAnswer(addr string, frame []byte, wait time.Duration) string {
	nc, br, err := dialWS(addr, "edge", "")
	if err != nil {
		return "dial: " + err.Error()
	}
	defer nc.Close()
	start := time.Now()
	nc.Write(frame)
	nc.SetReadDeadline(time.Now().Add(wait))
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return fmt.Sprintf("no close within %v (%v)", wait, shortErr(err))
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(br, p); err != nil {
			return "read: " + shortErr(err)
		}
		if h.OpCode == ws.OpClose {
			code := 1005
			if len(p) >= 2 {
				code = int(binary.BigEndian.Uint16(p))
			}
			return fmt.Sprintf("close %d after %v", code, time.Since(start).Round(100*time.Millisecond))
		}
	}
}

func pingAnswer(addr string, frames []byte) string {
	nc, br, err := dialWS(addr, "edge-ping", "")
	if err != nil {
		return "dial: " + err.Error()
	}
	defer nc.Close()
	go nc.Write(frames)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	pongs := -1 // the welcome
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return fmt.Sprintf("%d pongs, then %v", pongs, shortErr(err))
		}
		p := make([]byte, h.Length)
		io.ReadFull(br, p)
		if h.OpCode == ws.OpClose {
			return fmt.Sprintf("%d pongs, then close %d", pongs, binary.BigEndian.Uint16(p))
		}
		pongs++
		if pongs == 1000 {
			return "all 1,000 answered"
		}
	}
}

// handshake sends req and reports the status, whether it said Connection:
// close, and whether the server closed the connection after it.
func handshake(addr, req string) string {
	nc, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	go io.WriteString(nc, req)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "no answer: " + shortErr(err)
	}
	if resp.StatusCode == 101 {
		return "101"
	}
	io.Copy(io.Discard, resp.Body)
	_, err = br.ReadByte()
	return fmt.Sprintf("%d, Connection: close %v, socket closed %v", resp.StatusCode, resp.Close, err == io.EOF)
}

func slowBody(addr string, limit time.Duration) string {
	nc, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	start := time.Now()
	io.WriteString(nc, "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
	done := make(chan string, 1)
	go func() {
		nc.SetReadDeadline(time.Now().Add(limit))
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil {
			done <- fmt.Sprintf("still open after %v", limit)
			return
		}
		done <- fmt.Sprintf("%d after %v", resp.StatusCode, time.Since(start).Round(100*time.Millisecond))
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case s := <-done:
			return s
		case <-t.C:
			nc.Write([]byte(" "))
		}
	}
}

func held(addr string, n int) string {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	refused := map[string]int{}
	for i := range n {
		nc, _, err := dialWS(addr, fmt.Sprintf("held-%d", i), "127.0.0.1")
		if err != nil {
			refused[err.Error()]++
			continue
		}
		conns = append(conns, nc)
	}
	return fmt.Sprintf("%d upgraded, refused: %v", len(conns), refused)
}

func churn(addr string, n int) string {
	refused := map[string]int{}
	ok := 0
	start := time.Now()
	for i := range n {
		nc, _, err := dialWS(addr, fmt.Sprintf("churn-%d", i), "127.0.0.3")
		if err != nil {
			refused[err.Error()]++
			continue
		}
		ok++
		nc.Close()
	}
	return fmt.Sprintf("%d upgraded, refused: %v (%.0f/s)", ok, refused, float64(n)/time.Since(start).Seconds())
}

func openStart(c *clustertest.Cluster) string {
	dir, err := clustertest.Build()
	if err != nil {
		return err.Error()
	}
	cmd := exec.Command(dir+"/node", "-id", "open", "-addr", "127.0.0.1:0", "-gossip", "0.0.0.0:0", "-drain", "1ms")
	out := make(chan error, 1)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err.Error()
	}
	go func() { out <- cmd.Wait() }()
	select {
	case err := <-out:
		return fmt.Sprintf("exit: %v: %s", err, strings.TrimSpace(stderr.String()))
	case <-time.After(3 * time.Second):
		cmd.Process.Kill()
		<-out
		return "started (still running after 3 s)"
	}
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}
