package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"
)

// TestListenNoKeepAlive: accepted client sockets carry no TCP keep-alive
// (Go's default listener turns it on with four setsockopt calls each).
func TestListenNoKeepAlive(t *testing.T) {
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := s.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	on, gerr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) { on, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if on != 0 {
		t.Fatalf("SO_KEEPALIVE = %d on an accepted socket, want 0", on)
	}
}
