package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// dialTCP connects to ap (addr, as the picker gave it) by deadline without
// the net package: a non-blocking socket with TCP_NODELAY, handed to the
// runtime's poller as an *os.File. Unlike net.Dialer it resolves nothing
// and makes no context or timer of its own, asks for neither address
// (getsockname, getpeername), and, when the connection is made at once (as
// on loopback), checks that with a second connect instead of parking until
// the poller reports it. It returns errors.ErrUnsupported for an address it
// leaves to net.Dialer (an IPv6 zone).
func dialTCP(ctx context.Context, addr string, ap netip.AddrPort, deadline time.Time) (net.Conn, error) {
	a := ap.Addr().Unmap()
	if a.Zone() != "" {
		return nil, errors.ErrUnsupported
	}
	family, sa := syscall.AF_INET6, syscall.Sockaddr(&syscall.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()})
	if a.Is4() {
		family, sa = syscall.AF_INET, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	raddr := net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, ap.Port()))
	opErr := func(call string, err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: os.NewSyscallError(call, err)}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		return nil, opErr("socket", err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
		syscall.Close(fd)
		return nil, opErr("setsockopt", err)
	}
	switch err := syscall.Connect(fd, sa); err {
	case nil, syscall.EINPROGRESS, syscall.EINTR:
	default:
		syscall.Close(fd)
		return nil, opErr("connect", err)
	}
	c := &nodeConn{File: os.NewFile(uintptr(fd), addr), raddr: raddr}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, fmt.Errorf("set node deadline: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	var cerr error
	werr := rc.Write(func(s uintptr) bool {
		// A connect on a socket whose connect is under way tells its
		// state: EALREADY while it is, nil (or EISCONN) once made, the
		// failure otherwise. A false return waits until the socket is
		// writable, which it becomes when the connect ends either way.
		switch err := syscall.Connect(int(s), sa); err {
		case syscall.EALREADY, syscall.EINPROGRESS, syscall.EINTR:
			return false
		case nil, syscall.EISCONN:
		default:
			cerr = opErr("connect", err)
		}
		return true
	})
	cut := !stop() // ctx ended: the callback has set, or is setting, a past deadline
	if err := errors.Join(werr, cerr); err != nil {
		c.Close()
		if werr != nil {
			err = &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: werr}
		}
		return nil, err
	}
	if cut {
		c.Close()
		return nil, ctx.Err()
	}
	return c, nil
}

// nodeConn is a connection to a node made by dialTCP: the net.Conn the
// proxy and the relay need from the *os.File that holds the socket.
type nodeConn struct {
	*os.File
	raddr *net.TCPAddr
}

func (c *nodeConn) RemoteAddr() net.Addr { return c.raddr }

// LocalAddr asks the socket; nothing on the proxy's path needs it.
func (c *nodeConn) LocalAddr() net.Addr {
	var addr net.Addr
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			switch sa, _ := syscall.Getsockname(int(fd)); sa := sa.(type) {
			case *syscall.SockaddrInet4:
				addr = &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
			case *syscall.SockaddrInet6:
				addr = &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
			}
		})
	}
	if addr == nil {
		addr = &net.TCPAddr{}
	}
	return addr
}

// CloseWrite shuts the sending side down, as net.TCPConn's does: the
// relay passes a clean end on this way.
func (c *nodeConn) CloseWrite() error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_WR) }); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("shutdown", serr)
	}
	return nil
}
