//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// dialTCP is Linux only: elsewhere net.Dialer dials every node.
func dialTCP(context.Context, string, netip.AddrPort, time.Time) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}
