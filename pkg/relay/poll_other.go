//go:build !linux

package relay

import "net"

// poller is Linux only: elsewhere every link runs a goroutine per direction.
type poller struct{}

func (*poller) stop() {}

func (*Relay) startPolled(a, b net.Conn, o Owner) (bool, error) { return false, nil }
