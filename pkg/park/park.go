// Package park keeps idle client connections on a few epoll pollers instead of
// a goroutine each, until their bytes arrive or their deadline passes (Linux).
package park

import (
	"net"
	"syscall"
)

// Conn is a connection that parks. Its methods are called from a poller's
// goroutine and must not block.
type Conn interface {
	Spot() *Spot          // its place on a poller, kept in the connection
	Conn() net.Conn       // its socket
	Raw() syscall.RawConn // the socket's descriptor
	// Readable hands the connection to a goroutine that reads it: bytes or
	// the peer's end arrived, or its poller stopped watching (the read then
	// waits under its read deadline).
	Readable()
	// Late hands the connection to a goroutine that ends it: its deadline
	// passed while it was parked (unless bytes came meanwhile).
	Late()
}
