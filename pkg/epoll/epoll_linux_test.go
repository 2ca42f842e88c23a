package epoll

import (
	"syscall"
	"testing"
)

func TestWakeup(t *testing.T) {
	in, err := New(-1, syscall.EPOLLIN)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var ev [4]syscall.EpollEvent
	if n, err := syscall.EpollWait(in.FD, ev[:], 0); err != nil || n != 0 {
		t.Fatalf("before Wakeup: %d events (%v), want none", n, err)
	}
	in.Wakeup()
	in.Wakeup()
	if n, err := syscall.EpollWait(in.FD, ev[:], 1000); err != nil || n != 1 || ev[0].Fd != -1 {
		t.Fatalf("after Wakeup: %d events %+v (%v), want one with Fd -1", n, ev[:n], err)
	}
	in.Drain()
	if n, err := syscall.EpollWait(in.FD, ev[:], 0); err != nil || n != 0 {
		t.Fatalf("after Drain: %d events (%v), want none", n, err)
	}
}
