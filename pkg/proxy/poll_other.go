//go:build !linux

package proxy

import (
	"net"
	"net/netip"
)

// poller is Linux only: elsewhere every relay runs a goroutine per direction.
type poller struct{}

func (*poller) stop() {}

func (p *Proxy) startPolled(_ netip.Addr, clientID, nodeID string, client, node net.Conn) (bool, error) {
	return false, nil
}
