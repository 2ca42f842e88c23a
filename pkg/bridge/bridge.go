// Package bridge is the contract between the hub and the adapters (mesh, redis)
// that carry publishes and direct messages between nodes: Bridge and Receiver.
package bridge

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/ringcast/ringcast/pkg/wire"
)

// ErrUnavailable means the bridge cannot carry the request now (Redis down,
// no link): the caller must fail loudly, never drop silently.
var ErrUnavailable = errors.New("bridge unavailable")

// Message is one channel publish. Offset and Epoch are set when the channel
// keeps history.
type Message struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	From    string          `json:"from,omitempty"`
	Offset  uint64          `json:"offset,omitempty"`
	Epoch   string          `json:"epoch,omitempty"`
}

// Direct is one message to a client id.
type Direct struct {
	To   string          `json:"to"`
	From string          `json:"from,omitempty"`
	Data json.RawMessage `json:"data"`
}

// Receiver is the return leg, handed to an adapter by the wiring. Its funcs
// may be called concurrently from several goroutines and must not block.
type Receiver struct {
	// Deliver fans a message out to local subscribers.
	Deliver func(Message)
	// DeliverDirect hands a direct message to the local connection of d.To
	// and reports whether one existed.
	DeliverDirect func(Direct) bool
	// Lost is called when the bridge may have dropped messages for the
	// channels it had interest in (link or Redis outage), once it carries
	// traffic again. It may block: the bridge delivers no channel message
	// until it returns, so that what it refills from history and what
	// arrives live cannot cross. May be nil.
	Lost func()
}

// Bridge moves messages between nodes. All methods are safe for concurrent
// use; the blocking ones honour ctx.
type Bridge interface {
	// Run runs the adapter until ctx is done.
	Run(ctx context.Context) error
	// Publish delivers m to every node with subscribers on m.Channel, this
	// node included, and returns m with Offset and Epoch assigned when
	// history is on.
	Publish(ctx context.Context, m Message) (Message, error)
	// Send delivers d to the node holding d.To, this node included.
	Send(ctx context.Context, d Direct) (delivered bool, err error)
	// Subscribe registers this node's interest in channel and returns once
	// every publish that starts afterwards will reach it.
	Subscribe(ctx context.Context, channel string) error
	// Unsubscribe drops this node's interest in channel. Does not block.
	Unsubscribe(channel string)
	// Hold announces that clientID is connected here, returning once a
	// direct message sent afterwards will reach this node.
	Hold(ctx context.Context, clientID string) error
	// Release withdraws a Hold. Does not block.
	Release(clientID string)
	// History returns the messages of channel after since, in order.
	// recovered is false when the gap cannot be filled; top is the
	// channel's current position.
	History(ctx context.Context, channel string, since *wire.Position) (msgs []Message, top wire.Position, recovered bool, err error)
	// Ready reports nil when the bridge can carry traffic.
	Ready() error
}
