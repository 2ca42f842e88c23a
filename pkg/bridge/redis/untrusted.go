package redis

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

// What the subscriber reads is untrusted: anyone who can PUBLISH on the
// Redis server can put anything into a bridge channel. Each message is held
// to what this bridge itself publishes before a client sees it.

// Reasons a message read from Redis is dropped, the label of
// ringcast_node_bridge_dropped_total.
const (
	dropTooLarge = "too_large" // over MaxMessage plus the envelope
	dropSchema   = "schema"    // not JSON, or a field that does not match its channel or the wire rules
	dropPosition = "position"  // an epoch or offset this channel does not have
)

// envelope bounds the JSON around a message's data: channel name, sender
// id, epoch and offset.
const envelope = 1024

// maxPositions bounds the per-channel positions remembered; past it they
// are forgotten and re-read from Redis.
const maxPositions = 100_000

type untrusted struct {
	dropped *prometheus.CounterVec
	mu      sync.Mutex
	last    map[string]wire.Position // channel → the last position delivered
}

func newUntrusted(reg prometheus.Registerer) (*untrusted, error) {
	u := &untrusted{
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ringcast_node_bridge_dropped_total",
			Help: "Messages read from the bridge and dropped as untrusted input, by reason (too_large, schema, position).",
		}, []string{"reason"}),
		last: make(map[string]wire.Position),
	}
	for _, r := range []string{dropTooLarge, dropSchema, dropPosition} {
		u.dropped.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(u.dropped); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// channelMessage checks payload, read on the pub/sub channel of channel,
// and returns the message, or why it is dropped.
func (b *Bridge) channelMessage(channel, payload string) (bridge.Message, string) {
	var m bridge.Message
	if len(payload) > b.cfg.MaxMessage+envelope {
		return m, dropTooLarge
	}
	if json.Unmarshal([]byte(payload), &m) != nil || m.Channel != channel || wire.ValidateChannel(channel) != nil ||
		len(m.Data) == 0 || (m.From != "" && wire.ValidateClientID(m.From) != nil) {
		return m, dropSchema
	}
	switch {
	case m.Epoch == "" && m.Offset == 0:
		return m, "" // no position (history off): nothing a client would resume from
	case m.Epoch == "" || m.Offset == 0 || !b.plausible(channel, m.Epoch, m.Offset):
		return m, dropPosition
	}
	return m, ""
}

// plausible reports whether offset in epoch is a position channel has. The
// publish script sends every channel's messages in order with consecutive
// offsets, so the next one is taken on trust; anything else (the first
// message seen, a new epoch, a jump) is checked against the channel's epoch
// and offset keys, which only the scripts write.
func (b *Bridge) plausible(channel, epoch string, offset uint64) bool {
	u := b.untrusted
	u.mu.Lock()
	last, ok := u.last[channel]
	if ok && last.Epoch == epoch && (offset == last.Offset+1 || offset <= last.Offset) {
		if offset > last.Offset {
			u.last[channel] = wire.Position{Epoch: epoch, Offset: offset}
		}
		u.mu.Unlock()
		return true
	}
	u.mu.Unlock()

	keys := b.historyKeys(channel)
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.OpTimeout)
	defer cancel()
	vals, err := b.client.MGet(ctx, keys[1], keys[2]).Result()
	if err != nil || len(vals) != 2 {
		b.log.Warn("cannot check a message position, dropping it", zap.String("channel", channel), zap.Error(err))
		return false
	}
	top, _ := vals[0].(string)
	cur, _ := vals[1].(string)
	n, err := strconv.ParseUint(top, 10, 64)
	if err != nil || cur != epoch || offset > n {
		return false
	}
	u.mu.Lock()
	if len(u.last) >= maxPositions {
		clear(u.last)
	}
	if l, ok := u.last[channel]; !ok || l.Epoch != epoch || offset > l.Offset {
		u.last[channel] = wire.Position{Epoch: epoch, Offset: offset}
	}
	u.mu.Unlock()
	return true
}

// directMessage checks payload, read on the pub/sub channel of client to.
func (b *Bridge) directMessage(to, payload string) (bridge.Direct, string) {
	var d bridge.Direct
	if len(payload) > b.cfg.MaxMessage+envelope {
		return d, dropTooLarge
	}
	if json.Unmarshal([]byte(payload), &d) != nil || d.To != to || wire.ValidateClientID(to) != nil ||
		len(d.Data) == 0 || (d.From != "" && wire.ValidateClientID(d.From) != nil) {
		return d, dropSchema
	}
	return d, ""
}

// drop counts a dropped message and logs it at debug: a flood of them must
// not flood the log too.
func (b *Bridge) drop(channel, reason string) {
	b.untrusted.dropped.WithLabelValues(reason).Inc()
	if ce := b.log.Check(zap.DebugLevel, "drop untrusted bridge message"); ce != nil {
		ce.Write(zap.String("channel", channel), zap.String("reason", reason))
	}
}
