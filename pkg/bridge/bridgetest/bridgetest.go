// Package bridgetest is an in-memory bridge for tests of one node: publishes
// and direct messages come straight back through the Receiver, synchronously.
package bridgetest

import (
	"context"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Loopback is a bridge.Bridge with no other node: Publish delivers to this
// node's subscribers before it returns, Send to this node's client. It keeps
// no history. Safe for concurrent use.
type Loopback struct{ recv bridge.Receiver }

var _ bridge.Bridge = (*Loopback)(nil)

// NewLoopback returns a loopback bridge delivering into recv.
func NewLoopback(recv bridge.Receiver) *Loopback { return &Loopback{recv: recv} }

// Run blocks until ctx is done.
func (b *Loopback) Run(ctx context.Context) error { <-ctx.Done(); return nil }

// Publish delivers m locally.
func (b *Loopback) Publish(_ context.Context, m bridge.Message) (bridge.Message, error) {
	b.recv.Deliver(m)
	return m, nil
}

// Send delivers d locally and reports whether d.To is connected here.
func (b *Loopback) Send(_ context.Context, d bridge.Direct) (bool, error) {
	return b.recv.DeliverDirect(d), nil
}

// Subscribe does nothing: every publish passes through this node.
func (b *Loopback) Subscribe(context.Context, string) error { return nil }

// Unsubscribe does nothing.
func (b *Loopback) Unsubscribe(string) {}

// Hold does nothing: every direct message passes through this node.
func (b *Loopback) Hold(context.Context, string) error { return nil }

// Release does nothing.
func (b *Loopback) Release(string) {}

// History has nothing to recover.
func (b *Loopback) History(context.Context, string, *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
	return nil, wire.Position{}, false, nil
}

// Ready is always nil.
func (b *Loopback) Ready() error { return nil }
