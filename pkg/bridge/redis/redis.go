// Package redis is the Redis bridge: pub/sub per channel and per client for
// delivery, Redis Streams for channel history with offsets and epochs.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/redis/topology"
)

// Bridge implements bridge.Bridge over one Redis server, a Sentinel-managed
// primary or a Redis Cluster. All methods are safe for concurrent use.
type Bridge struct {
	untrusted *untrusted // checks what the subscriber reads (untrusted.go)
	cfg       Config
	recv      bridge.Receiver
	log       *zap.Logger
	client    goredis.UniversalClient
	cluster   *goredis.ClusterClient // nil unless on a Redis Cluster
	parts     int                    // partitions on a cluster; 0 on one server
	tags      []string               // cluster: the hash tag of each partition
	conns     []*subConn             // subscriber connections: one per partition, or one

	ops     chan *op // publishes and sends for the writer
	started atomic.Bool
	stopped chan struct{} // closed when Run returns
	pingErr atomic.Pointer[error]

	lostMu    sync.Mutex   // serialises recv.Lost with the gap flags of conns
	deliverMu sync.RWMutex // read-held around each channel delivery; held while recv.Lost runs
}

var _ bridge.Bridge = (*Bridge)(nil)

// New returns a bridge for node cfg.NodeID delivering through recv. It does
// not contact Redis: Run connects, and keeps trying while Redis is down.
func New(cfg Config, recv bridge.Receiver) (*Bridge, error) {
	srv, err := cfg.server()
	if err != nil {
		return nil, err
	}
	if recv.Deliver == nil || recv.DeliverDirect == nil {
		return nil, errors.New("redis: receiver needs Deliver and DeliverDirect")
	}
	u, err := newUntrusted(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("redis: register metrics: %w", err)
	}
	b := &Bridge{
		untrusted: u,
		cfg:       cfg,
		recv:      recv,
		log:       cfg.Log.Named("redis"),
		ops:       make(chan *op, cfg.QueueLen),
		stopped:   make(chan struct{}),
	}
	n := 1
	switch {
	case srv.Single != nil:
		b.client = goredis.NewClient(srv.Single)
	case srv.Sentinel != nil:
		b.client = goredis.NewFailoverClient(srv.Sentinel)
	default:
		b.cluster = goredis.NewClusterClient(srv.Cluster)
		b.client, b.parts, n = b.cluster, srv.Partitions, srv.Partitions
		b.tags = topology.PartitionTags(b.parts)
	}
	for i := range n {
		b.conns = append(b.conns, b.newSubConn(i))
	}
	notYet := fmt.Errorf("%w: redis not reached yet", bridge.ErrUnavailable)
	b.pingErr.Store(&notYet)
	return b, nil
}

// Names of keys and pub/sub channels. On one server: "<prefix>c:<channel>",
// "<prefix>u:<client id>" and history keys "<prefix>{<channel>}:…". On a
// cluster every name starts with its partition's hash tag,
// "<prefix>{<partition>}c:<channel>" and so on, so that a channel's pub/sub
// channel and history keys share one slot (the publish script stays
// atomic) and one subscriber connection carries a whole partition.

// partition returns the partition of a channel name or client id.
func (b *Bridge) partition(key string) int {
	if b.parts == 0 {
		return 0
	}
	return topology.Partition(key, b.parts)
}

// tag returns the hash tag of a partition, "" on one server.
func (b *Bridge) tag(p int) string {
	if b.parts == 0 {
		return ""
	}
	return b.tags[p]
}

func (b *Bridge) channelTopic(channel string) string {
	return b.cfg.Prefix + b.tag(b.partition(channel)) + "c:" + channel
}

func (b *Bridge) clientTopic(clientID string) string {
	return b.cfg.Prefix + b.tag(b.partition(clientID)) + "u:" + clientID
}

// Run connects to Redis and runs the subscribers, the publish writer and the
// health check until ctx is done, then closes the connections.
func (b *Bridge) Run(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("redis: Run called twice")
	}
	defer close(b.stopped)
	var wg sync.WaitGroup
	loops := []func(context.Context){b.writeLoop, b.healthLoop}
	for _, c := range b.conns {
		c.open()
		loops = append(loops, c.receiveLoop, c.syncLoop)
	}
	for _, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	<-ctx.Done()
	for _, c := range b.conns {
		c.shut()
	}
	wg.Wait()
	if err := b.client.Close(); err != nil {
		b.log.Debug("close client", zap.Error(err))
	}
	return nil
}

// Ready implements bridge.Bridge: the last health ping succeeded (on a
// cluster: every primary answered) and every subscriber connection is up.
func (b *Bridge) Ready() error {
	if err := *b.pingErr.Load(); err != nil {
		return err
	}
	for _, c := range b.conns {
		if err := c.down(); err != nil {
			return err
		}
	}
	return nil
}

// refused returns why a publish or send to the pub/sub channel of key
// (a channel name or client id) is refused at once, or nil. On one server
// or a Sentinel primary it is refused exactly while Ready reports an
// error; on a cluster, while the subscriber connection of key's partition,
// which is on the primary of its slot, is down. A publish held until a
// replica takes over would otherwise succeed while /readyz says not ready.
func (b *Bridge) refused(key string) error {
	if b.cluster == nil {
		return b.Ready()
	}
	return b.conns[b.partition(key)].down()
}

// downPingEvery is the health check interval while Redis is unreachable
// (at most PingEvery): publishes are refused until a ping succeeds.
const downPingEvery = 100 * time.Millisecond

func (b *Bridge) healthLoop(ctx context.Context) {
	t := time.NewTimer(b.cfg.PingEvery)
	defer t.Stop()
	for {
		began := time.Now()
		pctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
		err := b.ping(pctx)
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
		every := b.cfg.PingEvery
		if err != nil {
			every = min(every, downPingEvery)
		}
		t.Reset(max(every-time.Since(began), 0))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ping checks the server, or on a cluster every primary, and that the
// cluster serves all its slots.
func (b *Bridge) ping(ctx context.Context) error {
	if b.cluster == nil {
		return b.client.Ping(ctx).Err()
	}
	return b.cluster.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
		info, err := c.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("%s: %w", c.Options().Addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster state is not ok", c.Options().Addr)
		}
		return nil
	})
}

// Publish implements bridge.Bridge. The message goes through Redis even when
// this node is the only subscriber, so local and remote fan-out share one
// path. With history on, it is appended to the channel's stream first.
// While Redis is known to be unreachable (see refused), it fails at once
// with an error wrapping bridge.ErrUnavailable.
func (b *Bridge) Publish(ctx context.Context, m bridge.Message) (bridge.Message, error) {
	if err := b.refused(m.Channel); err != nil {
		return m, fmt.Errorf("publish to %s: %w", m.Channel, err)
	}
	body, err := json.Marshal(bridge.Message{Channel: m.Channel, Data: m.Data, From: m.From})
	if err != nil {
		return m, fmt.Errorf("encode message: %w", err)
	}
	o := &op{target: b.channelTopic(m.Channel), body: body}
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
	if err := b.refused(d.To); err != nil {
		return false, fmt.Errorf("send to %s: %w", d.To, err)
	}
	body, err := json.Marshal(d)
	if err != nil {
		return false, fmt.Errorf("encode direct: %w", err)
	}
	o := &op{target: b.clientTopic(d.To), body: body}
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
	// Run again what did not run (Redis restarted or flushed its scripts)
	// or only adopted a migrated channel; once: a second adoption cannot
	// happen without another migration.
	var again []int
	noscript := false
	for i := range live {
		if goredis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			again, noscript = append(again, i), true
		} else if adopted(cmds[i]) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		if noscript {
			if err := publishScript.Load(ctx, b.client).Err(); err != nil {
				b.log.Warn("load publish script", zap.Error(err))
			}
		}
		ops := make([]*op, len(again))
		for j, i := range again {
			ops[j] = live[i]
		}
		for j, c := range b.exec(ctx, ops) {
			cmds[again[j]] = c
		}
	}
	for i, o := range live {
		b.result(o, cmds[i])
		close(o.done)
	}
}

// adopted reports whether c is a publish script run that only adopted a
// migrated channel's keys.
func adopted(c goredis.Cmder) bool {
	sc, ok := c.(*goredis.Cmd)
	if !ok || sc.Err() != nil {
		return false
	}
	res, _ := sc.Val().([]any)
	if len(res) != 2 {
		return false
	}
	off, ok := res[0].(int64)
	return ok && off == 0
}

func (b *Bridge) exec(ctx context.Context, ops []*op) []goredis.Cmder {
	pipe := b.client.Pipeline()
	cmds := make([]goredis.Cmder, len(ops))
	ttl := b.cfg.HistoryTTL.Milliseconds()
	pub := "publish"
	if b.cluster != nil {
		pub = "spublish"
	}
	for i, o := range ops {
		if o.keys == nil {
			c := goredis.NewIntCmd(ctx, pub, o.target, o.body)
			c.SetFirstKeyPos(1) // the channel decides the slot
			cmds[i] = c
		} else {
			args := []any{"evalsha", publishScript.Hash(), len(o.keys)}
			for _, k := range o.keys {
				args = append(args, k)
			}
			cmds[i] = goredis.NewCmd(ctx, append(args, o.body, newEpoch(), ttl, b.cfg.HistorySize, o.target, pub, b.clusterArg())...)
		}
		_ = pipe.Process(ctx, noRetry{cmds[i]})
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

// noRetry keeps a cluster pipeline from sending a command again after a
// network error, when it may have run already (a publish script would then
// apply twice). MOVED and ASK redirects, which say it did not run, are still
// followed.
type noRetry struct{ goredis.Cmder }

func (noRetry) NoRetry() bool { return true }

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
