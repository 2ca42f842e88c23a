package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/proc"
	"github.com/ringcast/ringcast/pkg/wire"
)

// opTimeout bounds one publish or send: past it the outcome is unknown.
const opTimeout = 5 * time.Second

// oplog records operations from several goroutines.
type oplog struct {
	mu  sync.Mutex
	ops []op
}

func (l *oplog) add(o op) {
	l.mu.Lock()
	l.ops = append(l.ops, o)
	l.mu.Unlock()
}

func (l *oplog) snapshot() []op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]op(nil), l.ops...)
}

// publishFunc publishes data to channel once and returns the outcome.
type publishFunc func(ctx context.Context, channel string, data tag) string

// httpPublish publishes through POST /v1/publish on a balancer.
func httpPublish(base string) publishFunc {
	return func(ctx context.Context, channel string, data tag) string {
		var out struct {
			Code string `json:"code"`
		}
		code, err := clustertest.PostJSON(ctx, base+"/v1/publish", map[string]any{"channel": channel, "data": data}, &out)
		return httpStatus(err, code, out.Code, true)
	}
}

// wsPublish publishes over a client's WebSocket and waits for the ack.
func wsPublish(c *client.Client) publishFunc {
	return func(ctx context.Context, channel string, data tag) string {
		var we *wire.Error
		switch err := c.Publish(ctx, channel, data); {
		case err == nil:
			return statusOK
		case errors.Is(err, client.ErrNotConnected):
			return statusNotSent
		case errors.As(err, &we) && we.Code == wire.CodeBridgeUnavailable:
			return statusUnavailable
		}
		return statusFailed
	}
}

// httpStatus is the outcome of a POST answered code with error code
// errCode; delivered is a send's answer (true for a publish).
func httpStatus(err error, code int, errCode string, delivered bool) string {
	switch {
	case err == nil && code == http.StatusOK && delivered:
		return statusOK
	case err == nil && code == http.StatusOK:
		return statusNobody
	case err == nil && code == http.StatusServiceUnavailable && errCode == wire.CodeBridgeUnavailable:
		return statusUnavailable
	}
	return statusFailed
}

// publisher publishes one message per tick, one at a time, cycling through
// channels, until ctx is done. Ticks missed while a publish hangs are
// dropped, never caught up.
func publisher(ctx context.Context, clk clock, name string, every time.Duration, channels []string, pub publishFunc, log *oplog) {
	proc.Every(ctx, every, func(seq int64) {
		ch := channels[int(seq)%len(channels)]
		octx, cancel := context.WithTimeout(context.Background(), opTimeout)
		start := clk.now()
		status := pub(octx, ch, tag{P: name, S: seq})
		cancel()
		log.add(op{Pub: name, Seq: seq, Channel: ch, Start: start, End: clk.now(), Status: status})
	})
}

// sender sends direct messages over POST /v1/send to random members,
// alternating between the balancers, one at a time.
func sender(ctx context.Context, clk clock, name string, every time.Duration, bases, to []string, rng *rand.Rand, log *oplog) {
	proc.Every(ctx, every, func(seq int64) {
		id := to[rng.IntN(len(to))]
		var out struct {
			Delivered bool   `json:"delivered"`
			Code      string `json:"code"`
		}
		octx, cancel := context.WithTimeout(context.Background(), opTimeout)
		start := clk.now()
		code, err := clustertest.PostJSON(octx, bases[int(seq)%len(bases)]+"/v1/send", map[string]any{"client_id": id, "data": tag{P: name, S: seq}}, &out)
		cancel()
		log.add(op{Pub: name, Seq: seq, To: id, Start: start, End: clk.now(), Status: httpStatus(err, code, out.Code, out.Delivered)})
	})
}
