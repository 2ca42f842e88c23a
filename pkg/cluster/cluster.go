// Package cluster keeps the membership of a ringcast cluster over
// memberlist gossip and publishes it as immutable views holding the ring.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// leaveTimeout bounds the leave Run performs on shutdown.
const leaveTimeout = 2 * time.Second

// Cluster is this process's membership. Its methods are safe for concurrent use.
type Cluster struct {
	cfg     Config
	log     *zap.Logger
	ml      *memberlist.Memberlist
	gossip  string
	meta    atomic.Pointer[[2][]byte] // encoded metadata: [0] normally, [1] once leaving
	boot    string                    // random per process, in the metadata
	timing  timing                    // memberlist's failure detection settings
	accused atomic.Uint64             // times a peer's news declared this process dead

	metaMu    sync.Mutex    // serialises SetUnreachable
	metaDirty chan struct{} // 1-buffered: the metadata changed, gossip it

	running atomic.Bool
	joined  atomic.Bool // a join reached a peer

	mu      sync.Mutex        // guards records
	records map[string]record // by member id, written by the delegate
	dirty   chan struct{}     // 1-buffered: records changed since the last rebuild

	snap atomic.Pointer[snapshot]

	lifeMu sync.Mutex  // serialises Leave and shutdown: memberlist panics on Leave after Shutdown
	left   atomic.Bool // Leave was called
	down   atomic.Bool // memberlist is shut down
}

// New validates cfg, binds the gossip sockets and starts memberlist without
// joining anyone. Run must be called to join and, in the end, to release
// the sockets (Run with a cancelled context only shuts down).
func New(cfg Config) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg:       cfg,
		log:       cfg.Log.Named("cluster"),
		records:   make(map[string]record),
		dirty:     make(chan struct{}, 1),
		metaDirty: make(chan struct{}, 1),
		boot:      strconv.FormatUint(rand.Uint64(), 36),
	}
	if _, err := c.encodeMeta(nil); err != nil {
		return nil, err
	}
	c.snap.Store(&snapshot{view: &View{}, changed: make(chan struct{})})

	mc, err := cfg.memberlistConfig(c.noteRefute)
	if err != nil {
		return nil, err
	}
	c.timing = timingOf(mc)
	d := delegate{c}
	mc.Delegate, mc.Events = d, d
	if c.ml, err = memberlist.Create(mc); err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Bind, err)
	}
	c.gossip = c.ml.LocalNode().Address()
	return c, nil
}

// refuting is how memberlist says it refuted news that this process is
// suspect or dead; it has no other way to tell.
var refuting = []byte("memberlist: Refuting a ")

func (c *Cluster) noteRefute(text []byte) {
	if rest, ok := bytes.CutPrefix(text, refuting); ok &&
		(bytes.HasPrefix(rest, []byte("suspect message")) || bytes.HasPrefix(rest, []byte("dead message"))) {
		c.accused.Add(1)
	}
}

// Accused reports how many times gossip suspected this process or declared
// it dead, and it refuted the news. A process that was paused or starved
// past failure detection learns it this way once it runs again: whichever
// of a peer's suspect or dead messages reaches it first is refuted (the
// other is then stale), and peers keep gossiping to the dead for a while.
// Under the shortest suspicion a peer declares a silent member dead
// (Detection().Earliest), so a refute after a pause that long means the
// peers have likely taken this process off their ring meanwhile.
func (c *Cluster) Accused() uint64 { return c.accused.Load() }

// Run joins the seeds, retrying with backoff until a peer answers, re-joins
// them every RejoinInterval while a member is seen dead, joins the records
// of DNS seeds that are not members yet (resolved again every
// RejoinInterval), and rebuilds the view after membership churn. When ctx is done it leaves the cluster
// (bounded by 2 s), shuts gossip down and returns nil. Run may be called
// once; a process started before its seeds joins them when they come up.
func (c *Cluster) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("cluster already running")
	}
	c.rebuild()
	var wg sync.WaitGroup
	wg.Go(func() { c.coalesceLoop(ctx) })
	wg.Go(func() { c.joinLoop(ctx) })
	wg.Go(func() { c.metaLoop(ctx) })
	wg.Wait()
	if err := c.Leave(leaveTimeout); err != nil {
		c.log.Warn("leave cluster", zap.Error(err))
	}
	c.shutdown()
	return nil
}

// encodeMeta sets the metadata this process advertises, with unreachable
// (sorted node ids) cut to what fits memberlist's limit, and returns how
// many ids it holds.
func (c *Cluster) encodeMeta(unreachable []string) (int, error) {
	for n := len(unreachable); ; n-- {
		var enc [2][]byte
		for i, leaving := range []bool{false, true} {
			// strings and a bool: Marshal cannot fail
			enc[i], _ = json.Marshal(meta{Role: c.cfg.Role, WSAddr: c.cfg.WSAddr, Leaving: leaving, Boot: c.boot, Unreachable: unreachable[:n]})
		}
		if len(enc[1]) <= memberlist.MetaMaxSize {
			c.meta.Store(&enc)
			return n, nil
		}
		if n == 0 {
			return 0, fmt.Errorf("metadata is %d bytes, over %d: shorten the websocket address", len(enc[1]), memberlist.MetaMaxSize)
		}
	}
}

// SetUnreachable publishes in this process's gossip metadata the nodes it
// cannot reach on its own path (a balancer's probes of the nodes it relays
// to); every process reads it with View.Unreachable. A list longer than the
// metadata holds (512 bytes) is cut, and a warning logged. It returns at
// once: the update spreads in the background, like any gossip.
func (c *Cluster) SetUnreachable(ids []string) {
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	ids = slices.Sorted(slices.Values(ids))
	if n, err := c.encodeMeta(ids); err == nil && n < len(ids) {
		c.log.Warn("unreachable nodes do not all fit the gossip metadata", zap.Int("listed", n), zap.Strings("nodes", ids))
	}
	select {
	case c.metaDirty <- struct{}{}:
	default:
	}
}

// metaLoop gossips this process's metadata after each change.
func (c *Cluster) metaLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.metaDirty:
		}
		if err := c.ml.UpdateNode(time.Second); err != nil {
			c.log.Debug("gossip metadata update", zap.Error(err))
		}
	}
}

// View returns the current view, never nil.
func (c *Cluster) View() *View { return c.snap.Load().view }

// Changes returns a channel that is closed once the current view has been
// replaced. Any number of consumers may wait on it; it never blocks the
// cluster, and a slow consumer simply sees the latest view. Take the channel
// before reading the view so no change is missed:
//
//	for {
//		ch := c.Changes()
//		use(c.View())
//		select {
//		case <-ch:
//		case <-ctx.Done():
//			return
//		}
//	}
func (c *Cluster) Changes() <-chan struct{} { return c.snap.Load().changed }

// Leave announces a graceful leave and waits up to timeout (≤ 0: 2 s) for
// it to spread: peers then report this member as left and drop it from the
// ring, as does this process's own view. Gossip keeps running until Run
// returns. Leave is idempotent and a no-op after Run has returned.
func (c *Cluster) Leave(timeout time.Duration) error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.left.Load() || c.down.Load() {
		return nil
	}
	if timeout <= 0 {
		timeout = leaveTimeout
	}
	deadline := time.Now().Add(timeout)
	// Advertise the leave in the metadata first (NodeMeta reads left):
	// memberlist does not tell peers' delegates whether a member left or failed.
	c.left.Store(true)
	if err := c.ml.UpdateNode(timeout / 2); err != nil {
		c.log.Debug("announce leave", zap.Error(err))
	}
	if err := c.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("leave gossip: %w", err)
	}
	return nil
}

// Joined reports whether this process is a member of the cluster it was
// told to join: it has no seeds (it is the first), a join reached a peer, or
// a peer joined it. A process whose seeds refuse it (a wrong -cluster-key)
// stays unjoined, in a cluster of its own.
func (c *Cluster) Joined() bool {
	return len(c.cfg.Join) == 0 || c.joined.Load() || c.ml.NumMembers() > 1
}

// GossipAddr returns the gossip host:port peers use to reach this process,
// with the actual port when Bind asked for port 0.
func (c *Cluster) GossipAddr() string { return c.gossip }

// LocalID returns this process's member id.
func (c *Cluster) LocalID() string { return c.cfg.ID }

func (c *Cluster) shutdown() {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	c.down.Store(true)
	if err := c.ml.Shutdown(); err != nil {
		c.log.Warn("shut down gossip", zap.Error(err))
	}
}

// coalesceLoop rebuilds the view once membership has been quiet for
// Coalesce, or after 5 × Coalesce of constant churn.
func (c *Cluster) coalesceLoop(ctx context.Context) {
	quiet := time.NewTimer(time.Hour)
	limit := time.NewTimer(time.Hour)
	warm := time.NewTimer(time.Hour) // the earliest end of a warm-up
	defer quiet.Stop()
	defer limit.Stop()
	defer warm.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-warm.C:
			c.rewarm(warm, c.rebuild())
			continue
		case <-c.dirty:
		}
		quiet.Reset(c.cfg.Coalesce)
		limit.Reset(5 * c.cfg.Coalesce)
	churn:
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.dirty:
				quiet.Reset(c.cfg.Coalesce)
			case <-quiet.C:
				break churn
			case <-limit.C:
				break churn
			}
		}
		c.rewarm(warm, c.rebuild())
	}
}

// rewarm sets t to fire at wake (zero: not before an hour).
func (c *Cluster) rewarm(t *time.Timer, wake time.Time) {
	d := time.Hour
	if !wake.IsZero() {
		d = max(time.Until(wake), time.Millisecond)
	}
	t.Reset(d)
}

// joinLoop joins the seeds until a peer answers, with backoff from 100 ms
// up to RejoinInterval, then every RejoinInterval re-joins them while
// needsRejoin says so, and joins the addresses of DNS seeds that are not
// members yet (DNS seeds are re-resolved on every attempt). A seed that
// answers but refuses the join (another cluster key, or none) is retried
// with backoff up to refusedBackoff, and logged once at warn until a join
// succeeds.
func (c *Cluster) joinLoop(ctx context.Context) {
	if len(c.cfg.Join) == 0 {
		return
	}
	const firstBackoff = 100 * time.Millisecond
	backoff, joined, warned, dns := firstBackoff, false, false, c.hasDNSSeeds()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := c.cfg.RejoinInterval
		if c.left.Load() {
			return
		}
		if all := !joined || c.needsRejoin(); all || dns {
			seeds := c.seeds(ctx, all)
			// A seed list may name this process: only a peer counts.
			err := c.join(ctx, seeds)
			switch {
			case err == nil && c.ml.NumMembers() > 1:
				if len(seeds) > 0 && (!joined || warned) {
					c.log.Info("joined cluster", zap.Strings("seeds", c.cfg.Join), zap.Strings("addrs", seeds))
				}
				joined, warned, backoff = true, false, firstBackoff
				c.joined.Store(true)
			case err != nil && refused(err):
				if !warned && ctx.Err() == nil {
					c.log.Warn("seeds refuse the join: check -cluster-key", zap.Strings("seeds", c.cfg.Join), zap.Error(err))
					warned = true
				}
				next, backoff = backoff, min(2*backoff, refusedBackoff)
			default:
				c.log.Debug("join seeds", zap.Strings("seeds", c.cfg.Join), zap.Strings("addrs", seeds), zap.Error(err))
				next, backoff = backoff, min(2*backoff, c.cfg.RejoinInterval)
			}
		}
		t.Reset(next)
	}
}

// refusedBackoff caps the retry interval of joins the seeds refused: each
// attempt makes every seed log an error, and a key mismatch needs an operator.
const refusedBackoff = time.Minute

// refused reports whether a seed answered but refused the join because
// the cluster keys differ (one side has another key, or none). memberlist
// flattens its errors to text, so they are recognised by its words; any
// other failure (a seed down, a reset mid-exchange) is retried as usual.
func refused(err error) bool {
	msg := strings.ToLower(err.Error())
	for _, keys := range []string{"no installed keys could decrypt", "encryption is not configured", "remote state is not encrypted"} {
		if strings.Contains(msg, keys) {
			return true
		}
	}
	return false
}

// join contacts every seed, one at a time so that a cancelled ctx waits for
// at most one (memberlist's TCPTimeout when a seed does not answer at all:
// 10 s lan, 0.5 s fast). It succeeds when any seed answered, or when there
// was none to contact.
func (c *Cluster) join(ctx context.Context, seeds []string) error {
	var errs []error
	for _, seed := range seeds {
		if ctx.Err() != nil {
			break
		}
		if _, err := c.ml.Join([]string{seed}); err != nil {
			errs = append(errs, err)
		}
	}
	if len(seeds) > 0 && len(errs) == len(seeds) {
		return errors.Join(errs...)
	}
	return nil
}

// needsRejoin reports whether a member is seen dead: it may sit behind a
// partition that has healed, which memberlist does not re-merge by itself.
// Members that left do not count.
func (c *Cluster) needsRejoin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.records {
		if r.dead && r.member("", time.Time{}).State == StateDead {
			return true
		}
	}
	return false
}
