package epoll

import (
	"os"
	"syscall"
)

// Instance is an epoll descriptor with an eventfd registered in it.
type Instance struct {
	FD   int // the epoll descriptor: register, wait
	wake int // the eventfd
}

// New creates an instance whose eventfd is registered for events (EPOLLIN,
// with or without EPOLLET); its events carry wakeData as their Fd.
func New(wakeData int32, events uint32) (*Instance, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(fd)
		return nil, os.NewSyscallError("eventfd2", errno)
	}
	ev := syscall.EpollEvent{Events: events, Fd: wakeData}
	if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, int(wake), &ev); err != nil {
		syscall.Close(int(wake))
		syscall.Close(fd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	return &Instance{FD: fd, wake: int(wake)}, nil
}

// Wakeup makes a wait on the instance return with the eventfd's event.
func (in *Instance) Wakeup() {
	one := [8]byte{1}
	syscall.Write(in.wake, one[:]) // EAGAIN only when the counter is full: awake anyway
}

// Drain resets the eventfd once its event was seen.
func (in *Instance) Drain() {
	var b [8]byte
	syscall.Read(in.wake, b[:])
}

// Close closes both descriptors.
func (in *Instance) Close() {
	syscall.Close(in.wake)
	syscall.Close(in.FD)
}
