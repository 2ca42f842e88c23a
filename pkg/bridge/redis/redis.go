// Package redis is the Redis bridge: per-channel pub/sub for channels with
// local interest, a per-client pub/sub channel for direct messages, and
// channel history in Redis Streams with offsets and epochs.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
)

// Bridge implements bridge.Bridge over one Redis server. All methods are
// safe for concurrent use.
type Bridge struct {
	cfg    Config
	recv   bridge.Receiver
	log    *zap.Logger
	client *goredis.Client

	ops     chan *op      // publishes and sends for the writer
	kick    chan struct{} // subscription changes for the syncer
	started atomic.Bool
	stopped chan struct{} // closed when Run returns
	pingErr atomic.Pointer[error]
	subUp   atomic.Bool // the subscriber connection answered since it was last lost
	gap     atomic.Bool // channel messages may have been missed: drop them until recv.Lost ran

	mu     sync.Mutex
	ps     *goredis.PubSub // the subscriber connection; nil once closed
	subs   map[string]*sub // pub/sub channel → state
	dirty  map[string]struct{}
	failed bool // the subscriber connection was lost and is not back
	lost   bool // call recv.Lost when it is back
	closed bool
}

var _ bridge.Bridge = (*Bridge)(nil)

// New returns a bridge for node cfg.NodeID delivering through recv. It does
// not contact Redis: Run connects, and keeps trying while Redis is down.
func New(cfg Config, recv bridge.Receiver) (*Bridge, error) {
	opt, err := cfg.options()
	if err != nil {
		return nil, err
	}
	if recv.Deliver == nil || recv.DeliverDirect == nil {
		return nil, errors.New("redis: receiver needs Deliver and DeliverDirect")
	}
	b := &Bridge{
		cfg:     cfg,
		recv:    recv,
		log:     cfg.Log.Named("redis"),
		client:  goredis.NewClient(opt),
		ops:     make(chan *op, cfg.QueueLen),
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		subs:    map[string]*sub{},
		dirty:   map[string]struct{}{},
	}
	notYet := fmt.Errorf("%w: redis not reached yet", bridge.ErrUnavailable)
	b.pingErr.Store(&notYet)
	return b, nil
}

// Run connects to Redis and runs the subscriber, the publish writer and the
// health check until ctx is done, then closes the connections.
func (b *Bridge) Run(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("redis: Run called twice")
	}
	defer close(b.stopped)
	b.mu.Lock()
	b.ps = b.client.Subscribe(context.Background())
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){b.receiveLoop, b.syncLoop, b.writeLoop, b.healthLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	<-ctx.Done()
	b.mu.Lock()
	b.closed = true
	b.subUp.Store(false)
	ps := b.ps
	b.ps = nil
	b.mu.Unlock()
	_ = ps.Close()
	wg.Wait()
	if err := b.client.Close(); err != nil {
		b.log.Debug("close client", zap.Error(err))
	}
	return nil
}

// Ready implements bridge.Bridge: the last health ping succeeded and the
// subscriber connection is up.
func (b *Bridge) Ready() error {
	if err := *b.pingErr.Load(); err != nil {
		return err
	}
	if !b.subUp.Load() {
		return fmt.Errorf("%w: redis subscriber connection down", bridge.ErrUnavailable)
	}
	return nil
}

func (b *Bridge) healthLoop(ctx context.Context) {
	t := time.NewTicker(b.cfg.PingEvery)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
		err := b.client.Ping(pctx).Err()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			err = fmt.Errorf("%w: ping redis: %w", bridge.ErrUnavailable, err)
		}
		if prev := *b.pingErr.Swap(&err); (prev == nil) != (err == nil) {
			if err != nil {
				b.log.Warn("redis unreachable", zap.Error(err))
			} else {
				b.log.Info("redis reachable")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Publish implements bridge.Bridge. The message goes through Redis even when
// this node is the only subscriber, so local and remote fan-out share one
// path. With history on, it is appended to the channel's stream first.
func (b *Bridge) Publish(ctx context.Context, m bridge.Message) (bridge.Message, error) {
	body, err := json.Marshal(bridge.Message{Channel: m.Channel, Data: m.Data, From: m.From})
	if err != nil {
		return m, fmt.Errorf("encode message: %w", err)
	}
	o := &op{target: b.cfg.Prefix + "c:" + m.Channel, body: body}
	if b.cfg.HistorySize > 0 {
		o.keys = b.historyKeys(m.Channel)
	}
	if err := b.do(ctx, o); err != nil {
		return m, fmt.Errorf("publish to %s: %w", m.Channel, err)
	}
	m.Offset, m.Epoch = o.offset, o.epoch
	return m, nil
}

// Send implements bridge.Bridge: a local client gets d directly, any other
// through the pub/sub channel of its id, which only the node holding it
// subscribes to.
func (b *Bridge) Send(ctx context.Context, d bridge.Direct) (bool, error) {
	if b.recv.DeliverDirect(d) {
		return true, nil
	}
	body, err := json.Marshal(d)
	if err != nil {
		return false, fmt.Errorf("encode direct: %w", err)
	}
	o := &op{target: b.cfg.Prefix + "u:" + d.To, body: body}
	if err := b.do(ctx, o); err != nil {
		return false, fmt.Errorf("send to %s: %w", d.To, err)
	}
	return o.receivers > 0, nil
}

// op is one PUBLISH (or, with keys, one publish script run) for the writer.
type op struct {
	target   string   // pub/sub channel
	body     []byte   // payload
	keys     []string // history keys; nil = plain PUBLISH
	deadline time.Time
	state    atomic.Int32 // opQueued → opTaken by the writer, or → opAbandoned by the caller
	done     chan struct{}

	receivers int64
	offset    uint64
	epoch     string
	err       error
}

const (
	opQueued int32 = iota
	opTaken
	opAbandoned
)

// maxBatch bounds the commands in one pipeline.
const maxBatch = 512

// do queues o for the writer and waits for its result. Once the writer took
// o, do waits for it (the writer's pipeline ends by o's deadline), so an
// error means the command was not sent or its outcome is unknown.
func (b *Bridge) do(ctx context.Context, o *op) error {
	o.deadline = time.Now().Add(b.cfg.OpTimeout)
	o.done = make(chan struct{})
	t := time.NewTimer(b.cfg.OpTimeout)
	defer t.Stop()
	select {
	case b.ops <- o:
	case <-b.stopped:
		return fmt.Errorf("%w: bridge stopped", bridge.ErrUnavailable)
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: redis write queue full", bridge.ErrUnavailable)
	}
	var err error
	select {
	case <-o.done:
		return o.err
	case <-b.stopped:
		err = fmt.Errorf("%w: bridge stopped", bridge.ErrUnavailable)
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = fmt.Errorf("%w: redis did not answer within %v", bridge.ErrUnavailable, b.cfg.OpTimeout)
	}
	if o.state.CompareAndSwap(opQueued, opAbandoned) {
		return err
	}
	<-o.done
	return o.err
}

// writeLoop sends queued ops in pipelines: whatever queued up while the
// previous pipeline ran goes out in the next one, in queue order.
func (b *Bridge) writeLoop(ctx context.Context) {
	batch := make([]*op, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case o := <-b.ops:
			batch = append(batch, o)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case o := <-b.ops:
				batch = append(batch, o)
			default:
				break more
			}
		}
		b.flush(ctx, batch)
	}
}

func (b *Bridge) flush(ctx context.Context, batch []*op) {
	live := batch[:0]
	for _, o := range batch {
		if o.state.CompareAndSwap(opQueued, opTaken) {
			live = append(live, o)
		}
	}
	if len(live) == 0 {
		return
	}
	// The first op has the earliest deadline: its caller waits no longer.
	ctx, cancel := context.WithDeadline(ctx, live[0].deadline)
	defer cancel()
	cmds := b.exec(ctx, live)
	var again []*op
	for i, o := range live {
		if goredis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			again = append(again, o)
		}
	}
	if len(again) > 0 { // Redis restarted or flushed its scripts
		if err := publishScript.Load(ctx, b.client).Err(); err != nil {
			b.log.Warn("load publish script", zap.Error(err))
		}
		retried := b.exec(ctx, again)
		for i, j := 0, 0; i < len(live) && j < len(again); i++ {
			if live[i] == again[j] {
				cmds[i] = retried[j]
				j++
			}
		}
	}
	for i, o := range live {
		b.result(o, cmds[i])
		close(o.done)
	}
}

func (b *Bridge) exec(ctx context.Context, ops []*op) []goredis.Cmder {
	pipe := b.client.Pipeline()
	cmds := make([]goredis.Cmder, len(ops))
	ttl := b.cfg.HistoryTTL.Milliseconds()
	for i, o := range ops {
		if o.keys == nil {
			cmds[i] = pipe.Publish(ctx, o.target, o.body)
		} else {
			cmds[i] = publishScript.EvalSha(ctx, pipe, o.keys, o.body, newEpoch(), ttl, b.cfg.HistorySize, o.target)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		// Commands carry their own errors, except when no connection was
		// had at all.
		if !slices.ContainsFunc(cmds, func(c goredis.Cmder) bool { return c.Err() != nil }) {
			for _, c := range cmds {
				c.SetErr(err)
			}
		}
	}
	return cmds
}

func (b *Bridge) result(o *op, c goredis.Cmder) {
	if err := c.Err(); err != nil {
		o.err = fmt.Errorf("%w: %w", bridge.ErrUnavailable, err)
		return
	}
	switch c := c.(type) {
	case *goredis.IntCmd:
		o.receivers = c.Val()
	case *goredis.Cmd:
		res, _ := c.Val().([]any)
		var off int64
		if len(res) == 2 {
			off, _ = res[0].(int64)
			o.epoch, _ = res[1].(string)
		}
		if off <= 0 || o.epoch == "" {
			o.err = fmt.Errorf("malformed publish reply %v", c.Val())
		}
		o.offset = uint64(off)
	}
}
