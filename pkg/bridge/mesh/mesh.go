// Package mesh is the built-in bridge: one TCP link per pair of nodes, over
// which each side forwards only what the other asked for; at-most-once.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/defaults"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Config configures a Mesh.
type Config struct {
	ID           string        // this node's id; required
	Key          []byte        // shared secret authenticating links; empty = no auth, links from loopback only (unless Insecure)
	Insecure     bool          // without Key, accept links from any address, not only loopback
	DialTimeout  time.Duration // connect + upgrade of a link; default 2s
	WriteTimeout time.Duration // a link write that takes longer kills the link; default 5s
	Ping         time.Duration // idle links send a ping this often; a link silent for 3× is dead; default 1s
	QueueLen     int           // frames queued per link before it is declared stuck and closed; default 8192
	QueueBytes   int           // bytes queued per link before it is declared stuck and closed; default 64 MiB
	MaxFrame     int           // largest frame accepted, bytes; default 1 MiB
	AckTimeout   time.Duration // Subscribe/Hold wait this long for peers to confirm; default 2s
	Redial       time.Duration // first delay before dialling a peer again after a failed dial; default 200ms
	RedialMax    time.Duration // the delay doubles per failed dial up to this, with jitter; default 1s
	Log          *zap.Logger
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		DialTimeout:  2 * time.Second,
		WriteTimeout: 5 * time.Second,
		Ping:         time.Second,
		QueueLen:     8192,
		QueueBytes:   64 << 20,
		MaxFrame:     1 << 20,
		AckTimeout:   2 * time.Second,
		Redial:       200 * time.Millisecond, // a peer that restarted is linked again this soon
		RedialMax:    time.Second,            // a dead peer costs one dial per 0.5–1 s until gossip drops it; messages to a peer without a link are lost (at-most-once), so keep it short
	}
}

// validate fills zero fields with their defaults and rejects negative ones.
func (c *Config) validate() error {
	d := DefaultConfig()
	if c.ID == "" {
		return errors.New("mesh: ID is required")
	}
	if err := errors.Join(
		defaults.Set("DialTimeout", &c.DialTimeout, d.DialTimeout),
		defaults.Set("WriteTimeout", &c.WriteTimeout, d.WriteTimeout),
		defaults.Set("Ping", &c.Ping, d.Ping),
		defaults.Set("AckTimeout", &c.AckTimeout, d.AckTimeout),
		defaults.Set("Redial", &c.Redial, d.Redial),
		defaults.Set("QueueLen", &c.QueueLen, d.QueueLen),
		defaults.Set("QueueBytes", &c.QueueBytes, d.QueueBytes),
		defaults.Set("MaxFrame", &c.MaxFrame, d.MaxFrame),
	); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if err := defaults.Set("RedialMax", &c.RedialMax, max(d.RedialMax, c.Redial)); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if c.RedialMax < c.Redial {
		return fmt.Errorf("mesh: RedialMax %v < Redial %v", c.RedialMax, c.Redial)
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return nil
}

// Mesh implements bridge.Bridge over node-to-node links.
type Mesh struct {
	cfg  Config
	recv bridge.Receiver
	log  *zap.Logger

	// len(peers) and len(links), stored under mu and read without it:
	// Ready (/readyz, every publish) never waits behind the lock.
	npeers, nlinks atomic.Int64

	mu    sync.Mutex
	peers map[string]string // id → addr, from membership
	links map[string]*link  // id → live link
	// interest is our keys by kind: channel and client names, without
	// the prefix their link keys carry ("c:<channel>", "u:<client>"), so
	// an entry shares the caller's string instead of holding a copy.
	interest [2]map[string]struct{}
	kick     chan struct{}       // peers changed
	linkc    chan struct{}       // closed and replaced whenever a link starts
	linked   map[string]bool     // peers that had a link since they joined the peer set
	retry    map[string]*backoff // peers whose last dial failed; cleared by SetPeers

	wg      sync.WaitGroup // link goroutines
	stopped chan struct{}  // closed when Run returns
}

var _ bridge.Bridge = (*Mesh)(nil)

// New returns a mesh for node cfg.ID delivering through recv.
func New(cfg Config, recv bridge.Receiver) (*Mesh, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if recv.Deliver == nil || recv.DeliverDirect == nil {
		return nil, errors.New("mesh: receiver needs Deliver and DeliverDirect")
	}
	return &Mesh{
		cfg:      cfg,
		recv:     recv,
		log:      cfg.Log.Named("mesh"),
		peers:    map[string]string{},
		links:    map[string]*link{},
		interest: [2]map[string]struct{}{{}, {}},
		kick:     make(chan struct{}, 1),
		linkc:    make(chan struct{}),
		linked:   map[string]bool{},
		retry:    map[string]*backoff{},
		stopped:  make(chan struct{}),
	}, nil
}

// SetPeers replaces the set of peer nodes (id → HTTP address). This node's
// own id is ignored. Links to peers that left are closed. Does not block.
func (m *Mesh) SetPeers(peers map[string]string) {
	m.mu.Lock()
	m.peers = make(map[string]string, len(peers))
	for id, addr := range peers {
		if id != m.cfg.ID {
			m.peers[id] = addr
		}
	}
	m.npeers.Store(int64(len(m.peers)))
	// Membership changed: a peer that failed to answer may be back (a
	// restart, a resumed process), so the next dial goes out at once.
	clear(m.retry)
	for id, l := range m.links {
		if addr, ok := m.peers[id]; !ok || (l.dialed && addr != l.addr) {
			l.close()
		}
	}
	for id := range m.linked {
		if _, ok := m.peers[id]; !ok {
			delete(m.linked, id) // when it comes back, wait for its link again
		}
	}
	m.mu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Links returns the number of live links.
func (m *Mesh) Links() int { return int(m.nlinks.Load()) }

// Run dials the peers this node is responsible for (those with a greater id)
// and keeps the links up until ctx is done.
func (m *Mesh) Run(ctx context.Context) error {
	defer func() {
		// stopped closes under m.mu: start checks it there, so no link is
		// registered after this sweep.
		m.mu.Lock()
		close(m.stopped)
		for _, l := range m.links {
			l.close()
		}
		m.mu.Unlock()
		m.wg.Wait()
	}()
	dialing := map[string]bool{}
	done := make(chan dialResult)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		now := time.Now()
		wake := time.Duration(-1) // until the earliest retry; -1: none due
		m.mu.Lock()
		for id, b := range m.retry {
			if addr, ok := m.peers[id]; !ok || addr != b.addr {
				delete(m.retry, id) // left or moved: a fresh start
			}
		}
		for id, addr := range m.peers {
			if id <= m.cfg.ID || m.links[id] != nil || dialing[id] {
				continue
			}
			if b := m.retry[id]; b != nil && now.Before(b.next) {
				if d := b.next.Sub(now); wake < 0 || d < wake {
					wake = d
				}
				continue
			}
			dialing[id] = true
			m.wg.Add(1)
			go m.dialPeer(ctx, id, addr, done)
		}
		m.mu.Unlock()
		t.Stop()
		if wake >= 0 {
			t.Reset(wake)
		}
		select {
		case <-ctx.Done():
			for len(dialing) > 0 {
				delete(dialing, (<-done).id)
			}
			return nil
		case r := <-done:
			delete(dialing, r.id)
			m.mu.Lock()
			if r.err == nil {
				delete(m.retry, r.id)
			} else {
				b := m.retry[r.id]
				if b == nil || b.addr != r.addr {
					b = &backoff{addr: r.addr}
					m.retry[r.id] = b
				}
				b.fail(m.cfg.Redial, m.cfg.RedialMax, time.Now())
			}
			m.mu.Unlock()
		case <-m.kick:
		case <-t.C:
		}
	}
}

// backoff paces the dials to a peer whose last dial failed.
type backoff struct {
	addr     string    // the address that failed
	failures int       // failed dials in a row
	next     time.Time // no dial before
}

// fail records a failed dial at now: the next waits Redial, doubling per
// failure up to RedialMax, drawn from its upper half so that nodes that
// lost the same peer do not dial it in step.
func (b *backoff) fail(base, ceiling time.Duration, now time.Time) {
	b.failures++
	d := ceiling
	if shift := b.failures - 1; shift < 30 && base<<shift < ceiling {
		d = base << shift
	}
	b.next = now.Add(d/2 + rand.N(d/2+1))
}

type dialResult struct {
	id, addr string
	err      error
}

func (m *Mesh) dialPeer(ctx context.Context, id, addr string, done chan<- dialResult) {
	defer m.wg.Done()
	nc, br, err := dial(ctx, m.cfg, id, addr)
	if err != nil {
		m.log.Debug("dial peer", zap.String("peer", id), zap.String("addr", addr), zap.Error(err))
	} else {
		m.start(newLink(m, id, addr, true, nc, br))
	}
	done <- dialResult{id, addr, err}
}

// Handler accepts links from peers with a smaller id. Mount it at /v1/mesh.
func (m *Mesh) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := verify(m.cfg, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		select {
		case <-m.stopped:
			http.Error(w, "mesh stopped", http.StatusServiceUnavailable)
			return
		default:
		}
		nc, br, err := accept(w)
		if err != nil {
			m.log.Debug("accept link", zap.String("peer", peer), zap.Error(err))
			return
		}
		m.start(newLink(m, peer, "", false, nc, br))
	})
}

// start registers l, replacing any older link to the same peer, sends it our
// interest snapshot and runs it.
func (m *Mesh) start(l *link) {
	m.mu.Lock()
	select {
	case <-m.stopped:
		m.mu.Unlock()
		l.nc.Close()
		return
	default:
	}
	if old := m.links[l.peer]; old != nil {
		old.close()
	}
	m.links[l.peer] = l
	m.nlinks.Store(int64(len(m.links)))
	m.linked[l.peer] = true
	keys := make([]string, 0, len(m.interest[kindChannel])+len(m.interest[kindClient]))
	for kind, names := range m.interest {
		for name := range names {
			keys = append(keys, keyPrefix[kind]+name)
		}
	}
	l.snapSeq = l.enqueue(frame{T: tSnap, Keys: keys})
	m.wg.Add(2)
	close(m.linkc)
	m.linkc = make(chan struct{})
	m.mu.Unlock()
	m.log.Info("link up", zap.String("peer", l.peer), zap.Bool("dialed", l.dialed))
	go l.readLoop()
	go l.writeLoop()
}

// drop forgets l once it is dead.
func (m *Mesh) drop(l *link) {
	m.mu.Lock()
	if m.links[l.peer] == l {
		delete(m.links, l.peer)
		m.nlinks.Store(int64(len(m.links)))
		m.log.Info("link down", zap.String("peer", l.peer))
	}
	m.mu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Publish implements bridge.Bridge.
func (m *Mesh) Publish(_ context.Context, msg bridge.Message) (bridge.Message, error) {
	if err := m.Ready(); err != nil {
		return msg, err // peers exist but none is linked: fail loudly
	}
	if len(msg.Data)+len(msg.Channel)+len(msg.From) > m.cfg.MaxFrame-frameOverhead {
		return msg, fmt.Errorf("message of %d bytes exceeds the mesh frame limit of %d", len(msg.Data), m.cfg.MaxFrame)
	}
	m.recv.Deliver(msg)
	key := "c:" + msg.Channel
	m.mu.Lock()
	for _, l := range m.links {
		if l.has(key) {
			l.enqueue(frame{T: tPub, Msg: &msg})
		}
	}
	m.mu.Unlock()
	return msg, nil
}

// frameOverhead bounds what a link frame adds around a message's fields.
const frameOverhead = 1024

// Send implements bridge.Bridge.
func (m *Mesh) Send(_ context.Context, d bridge.Direct) (bool, error) {
	if len(d.Data)+len(d.To)+len(d.From) > m.cfg.MaxFrame-frameOverhead {
		return false, fmt.Errorf("message of %d bytes exceeds the mesh frame limit of %d", len(d.Data), m.cfg.MaxFrame)
	}
	if m.recv.DeliverDirect(d) {
		return true, nil
	}
	key := "u:" + d.To
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.links {
		if l.has(key) {
			l.enqueue(frame{T: tDM, DM: &d})
			return true, nil
		}
	}
	return false, nil
}

// Subscribe implements bridge.Bridge.
func (m *Mesh) Subscribe(ctx context.Context, channel string) error {
	return m.add(ctx, kindChannel, channel)
}

// Unsubscribe implements bridge.Bridge.
func (m *Mesh) Unsubscribe(channel string) { m.remove(kindChannel, channel) }

// Hold implements bridge.Bridge.
func (m *Mesh) Hold(ctx context.Context, clientID string) error {
	return m.add(ctx, kindClient, clientID)
}

// Release implements bridge.Bridge.
func (m *Mesh) Release(clientID string) { m.remove(kindClient, clientID) }

// The kinds of interest, and the prefix of each kind's link keys.
const (
	kindChannel = iota
	kindClient
)

var keyPrefix = [2]string{kindChannel: "c:", kindClient: "u:"}

// add announces interest in name to every linked peer and waits until each
// confirmed it, its link died, or AckTimeout passed.
func (m *Mesh) add(ctx context.Context, kind int, name string) error {
	type wait struct {
		l   *link
		seq uint64
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	key := keyPrefix[kind] + name // for the link frames and logs only
	m.mu.Lock()
	m.interest[kind][name] = struct{}{}
	waits := make([]wait, 0, len(m.links))
	for _, l := range m.links {
		waits = append(waits, wait{l, l.enqueue(frame{T: tAdd, Key: key})})
	}
	m.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, m.cfg.AckTimeout)
	defer cancel()
	for _, w := range waits {
		if err := w.l.waitAck(wctx, w.seq); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			m.log.Warn("peer did not confirm interest", zap.String("peer", w.l.peer), zap.String("key", key), zap.Error(err))
		}
	}
	// A peer whose link is not up yet learns our interest from the link's
	// first frame, the snapshot: wait for it to confirm that, too, or a
	// publish it starts right after we return would miss us.
	for {
		m.mu.Lock()
		var l *link
		missing := ""
		for id := range m.peers {
			if l = m.links[id]; l == nil {
				if m.linked[id] {
					continue // its link broke: likely dead, gossip will tell
				}
				missing = id
				break
			}
			if l.confirmed(l.snapSeq) {
				l = nil
				continue
			}
			break
		}
		linkc := m.linkc
		m.mu.Unlock()
		switch {
		case l != nil:
			if err := l.waitAck(wctx, l.snapSeq); err != nil && ctx.Err() != nil {
				return ctx.Err()
			} else if err != nil && wctx.Err() != nil {
				return nil
			}
			continue
		case missing == "":
			return nil
		}
		select {
		case <-linkc:
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			m.log.Warn("no link to peer to confirm interest", zap.String("peer", missing), zap.String("key", key))
			return nil
		}
	}
}

func (m *Mesh) remove(kind int, name string) {
	m.mu.Lock()
	delete(m.interest[kind], name)
	key := keyPrefix[kind] + name
	for _, l := range m.links {
		l.enqueue(frame{T: tDel, Key: key})
	}
	m.mu.Unlock()
}

// History implements bridge.Bridge: the mesh keeps no history, so a gap can
// never be filled.
func (m *Mesh) History(context.Context, string, *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
	return nil, wire.Position{}, false, nil
}

// Ready implements bridge.Bridge: a node with peers needs at least one link.
func (m *Mesh) Ready() error {
	if peers := m.npeers.Load(); peers > 0 && m.nlinks.Load() == 0 {
		return fmt.Errorf("%w: no mesh link to any of %d peers", bridge.ErrUnavailable, peers)
	}
	return nil
}
