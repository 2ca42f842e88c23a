package proxy

import (
	"context"
	"syscall"
	"testing"

	"github.com/ringcast/ringcast/pkg/testkit"
)

// TestListenNoKeepAlive: accepted client sockets carry no TCP keep-alive
// (Go's default listener turns it on with four setsockopt calls each).
func TestListenNoKeepAlive(t *testing.T) {
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, s := testkit.TCPPair(t, ln)
	raw, err := s.SyscallConn()
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
