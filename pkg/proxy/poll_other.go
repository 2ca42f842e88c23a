//go:build !linux

package proxy

import "net"

// poller is Linux only: elsewhere every relay runs a goroutine per direction.
type poller struct{}

func (*poller) stop() {}

func (p *Proxy) startPolled(clientID, nodeID string, client, node net.Conn) (bool, error) {
	return false, nil
}
