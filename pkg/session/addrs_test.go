package session

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/ringcast/ringcast/pkg/testkit"
)

// TestForgetAddrs checks that forgetAddrs applies to this Go's net (it
// reads unexported fields): the addresses are gone, and unreachable, and
// the socket still works.
func TestForgetAddrs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, server := testkit.TCPPair(t, ln)
	raddr := weak.Make(server.RemoteAddr().(*net.TCPAddr))
	if !forgetAddrs(server) {
		t.Fatal("forgetAddrs does not apply to this Go's *net.TCPConn: its netFD has no laddr/raddr net.Addr fields")
	}
	if a, b := server.LocalAddr(), server.RemoteAddr(); a != nil || b != nil {
		t.Fatalf("after forgetAddrs LocalAddr() = %v, RemoteAddr() = %v, want nil, nil", a, b)
	}
	runtime.GC()
	if raddr.Value() != nil {
		t.Error("the remote TCPAddr is still reachable after forgetAddrs")
	}
	server.SetDeadline(time.Now().Add(5 * time.Second))
	client.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "ping" {
		t.Fatalf("read %q, %v after forgetAddrs, want \"ping\"", b, err)
	}
	if _, err := server.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, b); err != nil || string(b) != "pong" {
		t.Fatalf("peer read %q, %v, want \"pong\"", b, err)
	}
	if forgetAddrs(nil) || forgetAddrs(&net.UnixConn{}) {
		t.Error("forgetAddrs claims to apply to a nil or non-TCP conn")
	}
}
