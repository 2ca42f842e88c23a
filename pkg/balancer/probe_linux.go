package balancer

import (
	"net"

	"golang.org/x/sys/unix"
)

// acknowledged reports whether the peer's kernel acknowledged every byte
// written to c (TCP_INFO: nothing sent and unacknowledged, nothing still
// unsent: a packet filter dropping the output leaves it unsent).
func acknowledged(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	var info *unix.TCPInfo
	cerr := rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	return cerr == nil && err == nil && info.Unacked == 0 && info.Notsent_bytes == 0
}
