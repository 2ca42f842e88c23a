package mesh

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/bridge"
)

// Frame types on a link.
const (
	tSnap = "snap" // the sender's whole interest set
	tAdd  = "add"  // the sender gained interest in Key
	tDel  = "del"  // the sender lost interest in Key
	tAck  = "ack"  // the receiver applied every frame up to Seq
	tPub  = "pub"  // a channel message
	tDM   = "dm"   // a direct message
	tPing = "ping" // keepalive
)

type frame struct {
	T    string          `json:"t"`
	Seq  uint64          `json:"s,omitempty"`
	Key  string          `json:"k,omitempty"`
	Keys []string        `json:"ks,omitempty"`
	Msg  *bridge.Message `json:"m,omitempty"`
	DM   *bridge.Direct  `json:"d,omitempty"`
}

const (
	upgradeToken = "ringcast-mesh"
	hdrNode      = "X-Ringcast-Node"
	hdrPeer      = "X-Ringcast-Peer"
	hdrTime      = "X-Ringcast-Time"
	hdrAuth      = "X-Ringcast-Auth"
	authSkew     = 5 * time.Minute
)

// link is one established connection to a peer. Frames are written by
// writeLoop in enqueue order; readLoop applies the peer's frames.
type link struct {
	m      *Mesh
	peer   string
	addr   string
	dialed bool
	nc     net.Conn
	br     *bufio.Reader

	out      chan frame
	queued   atomic.Int64 // bytes held by out, estimated
	done     chan struct{}
	doneOnce sync.Once

	mu       sync.Mutex
	seq      uint64              // last Seq enqueued by us (guarded by m.mu via enqueue)
	snapSeq  uint64              // Seq of the interest snapshot that opened the link (set under m.mu)
	acked    uint64              // highest Seq the peer acknowledged
	ackc     chan struct{}       // closed and replaced when acked moves
	interest map[string]struct{} // the peer's keys
}

func newLink(m *Mesh, peer, addr string, dialed bool, nc net.Conn, br *bufio.Reader) *link {
	return &link{
		m: m, peer: peer, addr: addr, dialed: dialed, nc: nc, br: br,
		out:      make(chan frame, m.cfg.QueueLen),
		done:     make(chan struct{}),
		ackc:     make(chan struct{}),
		interest: map[string]struct{}{},
	}
}

func (l *link) close() {
	l.doneOnce.Do(func() {
		close(l.done)
		l.nc.Close()
	})
}

// enqueue queues f without blocking and returns its sequence number. A link
// whose queue is full is stuck: it is closed, and the peer re-syncs on the
// next link. Callers hold m.mu, which orders frames across callers.
func (l *link) enqueue(f frame) uint64 {
	l.seq++
	f.Seq = l.seq
	if l.queued.Add(f.size()) > int64(l.m.cfg.QueueBytes) {
		l.m.log.Warn("link queue over its byte bound, closing", zap.String("peer", l.peer))
		l.close()
		return f.Seq
	}
	select {
	case l.out <- f:
	default:
		l.m.log.Warn("link queue full, closing", zap.String("peer", l.peer))
		l.close()
	}
	return f.Seq
}

// size estimates the bytes f holds while queued.
func (f *frame) size() int64 {
	n := 64 + len(f.Key)
	if f.Msg != nil {
		n += len(f.Msg.Data) + len(f.Msg.Channel) + len(f.Msg.From)
	}
	if f.DM != nil {
		n += len(f.DM.Data) + len(f.DM.To) + len(f.DM.From)
	}
	for _, k := range f.Keys {
		n += len(k)
	}
	return int64(n)
}

func (l *link) has(key string) bool {
	l.mu.Lock()
	_, ok := l.interest[key]
	l.mu.Unlock()
	return ok
}

// confirmed reports whether the peer acknowledged seq.
func (l *link) confirmed(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked >= seq
}

// waitAck waits until the peer acknowledged seq, the link died or ctx ended.
func (l *link) waitAck(ctx context.Context, seq uint64) error {
	for {
		l.mu.Lock()
		acked, c := l.acked, l.ackc
		l.mu.Unlock()
		if acked >= seq {
			return nil
		}
		select {
		case <-c:
		case <-l.done:
			return errors.New("link closed")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *link) readLoop() {
	defer l.m.wg.Done()
	defer l.m.drop(l)
	defer l.close()
	var hdr [4]byte
	buf := make([]byte, 0, 512)
	for {
		l.nc.SetReadDeadline(time.Now().Add(3 * l.m.cfg.Ping))
		if _, err := io.ReadFull(l.br, hdr[:]); err != nil {
			l.logEnd(err)
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n > l.m.cfg.MaxFrame {
			l.m.log.Warn("link frame too big", zap.String("peer", l.peer), zap.Int("bytes", n))
			return
		}
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(l.br, buf); err != nil {
			l.logEnd(err)
			return
		}
		var f frame
		if err := json.Unmarshal(buf, &f); err != nil {
			l.m.log.Warn("bad link frame", zap.String("peer", l.peer), zap.Error(err))
			return
		}
		if len(buf) > 64<<10 {
			buf = make([]byte, 0, 512) // don't pin a big buffer
		}
		l.apply(f)
	}
}

func (l *link) logEnd(err error) {
	select {
	case <-l.done:
	default:
		l.m.log.Info("link read", zap.String("peer", l.peer), zap.Error(err))
	}
}

func (l *link) apply(f frame) {
	switch f.T {
	case tPub:
		if f.Msg != nil {
			l.m.recv.Deliver(*f.Msg)
		}
	case tDM:
		if f.DM != nil {
			l.m.recv.DeliverDirect(*f.DM)
		}
	case tSnap, tAdd, tDel:
		l.mu.Lock()
		switch f.T {
		case tSnap:
			l.interest = make(map[string]struct{}, len(f.Keys))
			for _, k := range f.Keys {
				l.interest[k] = struct{}{}
			}
		case tAdd:
			l.interest[f.Key] = struct{}{}
		case tDel:
			delete(l.interest, f.Key)
		}
		l.mu.Unlock()
		l.m.mu.Lock()
		l.enqueue(frame{T: tAck, Key: strconv.FormatUint(f.Seq, 10)})
		l.m.mu.Unlock()
	case tAck:
		n, err := strconv.ParseUint(f.Key, 10, 64)
		if err != nil {
			return
		}
		l.mu.Lock()
		if n > l.acked {
			l.acked = n
			close(l.ackc)
			l.ackc = make(chan struct{})
		}
		l.mu.Unlock()
	}
}

func (l *link) writeLoop() {
	defer l.m.wg.Done()
	defer l.close()
	bw := bufio.NewWriterSize(l.nc, 16<<10)
	ping := time.NewTicker(l.m.cfg.Ping)
	defer ping.Stop()
	var hdr [4]byte
	write := func(f frame) error {
		if f.T != tPing {
			l.queued.Add(-f.size())
		}
		b, err := json.Marshal(f)
		if err != nil {
			return fmt.Errorf("encode frame: %w", err)
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
		bw.Write(hdr[:])
		_, err = bw.Write(b)
		return err
	}
	for {
		var f frame
		select {
		case <-l.done:
			return
		case <-ping.C:
			f = frame{T: tPing}
		case f = <-l.out:
		}
		l.nc.SetWriteDeadline(time.Now().Add(l.m.cfg.WriteTimeout))
		err := write(f)
		for more := true; more && err == nil; {
			select {
			case f = <-l.out:
				err = write(f)
			default:
				more = false
			}
		}
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			l.logEnd(err)
			return
		}
	}
}

func authToken(key []byte, from, to, ts string) string {
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s|%s|%s|%s", upgradeToken, from, to, ts)
	return hex.EncodeToString(mac.Sum(nil))
}

// dial opens a link to peer id at addr: an HTTP upgrade on the node's port.
func dial(ctx context.Context, cfg Config, id, addr string) (net.Conn, *bufio.Reader, error) {
	d := net.Dialer{Timeout: cfg.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial peer %s: %w", addr, err)
	}
	nc.SetDeadline(time.Now().Add(cfg.DialTimeout))
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req := "GET /v1/mesh HTTP/1.1\r\nHost: " + addr + "\r\nConnection: Upgrade\r\nUpgrade: " + upgradeToken +
		"\r\n" + hdrNode + ": " + cfg.ID + "\r\n" + hdrPeer + ": " + id + "\r\n" + hdrTime + ": " + ts + "\r\n"
	if len(cfg.Key) > 0 {
		req += hdrAuth + ": " + authToken(cfg.Key, cfg.ID, id, ts) + "\r\n"
	}
	if _, err := io.WriteString(nc, req+"\r\n"); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("upgrade link %s: %w", addr, err)
	}
	br := bufio.NewReaderSize(nc, 16<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("upgrade link %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, nil, fmt.Errorf("upgrade link %s: status %s", addr, resp.Status)
	}
	nc.SetDeadline(time.Time{})
	return nc, br, nil
}

// verify checks an incoming link request and returns the peer's id.
func verify(cfg Config, r *http.Request) (string, error) {
	if r.Header.Get("Upgrade") != upgradeToken {
		return "", errors.New("not a mesh upgrade")
	}
	peer := r.Header.Get(hdrNode)
	if peer == "" || peer >= cfg.ID {
		return "", fmt.Errorf("peer %q may not dial %q: the smaller id dials", peer, cfg.ID)
	}
	if r.Header.Get(hdrPeer) != cfg.ID {
		return "", fmt.Errorf("link meant for %q, this is %q", r.Header.Get(hdrPeer), cfg.ID)
	}
	if len(cfg.Key) == 0 {
		if !cfg.Insecure && !fromLoopback(r) {
			return "", fmt.Errorf("link from %s refused: without a cluster key only loopback peers may link", r.RemoteAddr)
		}
		return peer, nil
	}
	ts := r.Header.Get(hdrTime)
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", errors.New("bad link timestamp")
	}
	if d := time.Since(time.Unix(sec, 0)); d > authSkew || d < -authSkew {
		return "", errors.New("link timestamp out of range")
	}
	if !hmac.Equal([]byte(r.Header.Get(hdrAuth)), []byte(authToken(cfg.Key, peer, cfg.ID, ts))) {
		return "", errors.New("bad link auth")
	}
	return peer, nil
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// accept hijacks an upgrade request and answers 101.
func accept(w http.ResponseWriter) (net.Conn, *bufio.Reader, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	nc, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("hijack: %w", err)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(nc, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+upgradeToken+"\r\n\r\n")
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("answer upgrade: %w", err)
	}
	nc.SetDeadline(time.Time{})
	return nc, rw.Reader, nil
}
