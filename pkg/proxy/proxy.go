// Package proxy relays each client WebSocket to the node that owns its client
// id: it picks the owner, forwards the upgrade, then copies bytes both ways.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/gate"
	"github.com/ringcast/ringcast/pkg/relay"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Picker chooses the node a client connects to.
type Picker interface {
	// Pick returns the node id and dial address (host:port) for clientID,
	// skipping the node ids in excluded. It is called once per attempt,
	// concurrently from many requests, and must not block.
	Pick(clientID string, excluded []string) (nodeID, addr string, err error)
}

// NodeWaiter is implemented by a Picker that may have no node to pick for
// a moment: a balancer that just started and is still learning the ring.
// An upgrade then waits for one, up to DialTimeout, instead of being
// refused at once (the clients of a restarted balancer arrive before its
// first ring).
type NodeWaiter interface {
	// WaitNodes returns when there is a node to pick or ctx ends.
	WaitNodes(ctx context.Context)
}

// maxNodeResponse bounds what is read from a node before the relay starts:
// the upgrade response head, or a refusal and its body.
const maxNodeResponse = 64 << 10

var errClosed = errors.New("proxy closed")

// Proxy is the balancer's /ws handler. It is safe for concurrent use. Relayed
// connections are owned by the Proxy until either side ends, CloseNode or
// Close; Close waits for them. pkg/relay moves their bytes.
type Proxy struct {
	cfg     Config
	pick    Picker
	log     *zap.Logger
	dialer  net.Dialer
	readers sync.Pool // *nodeReader for node handshakes
	heads   sync.Pool // *[]byte the upgrade request heads are rendered into
	relay   *relay.Relay

	admission   *admission
	pending     *gate.Gate // a slot per upgrade being set up; nil = no bound (MaxPending)
	connections *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	fallbacks   prometheus.Counter
	handshake   prometheus.Histogram

	mu     sync.Mutex
	closed bool
	links  map[string]*nodeLinks // node id → its live links
	down   map[string]time.Time  // node id → skipped until
}

// New returns a Proxy that routes with pick. reg may be nil, log may be nil.
func New(cfg Config, pick Picker, log *zap.Logger, reg prometheus.Registerer) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if pick == nil {
		return nil, errors.New("proxy: nil picker")
	}
	if log == nil {
		log = zap.NewNop()
	}
	bytesTotal := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ringcast_balancer_proxied_bytes_total",
		Help: "Bytes relayed between clients and nodes, by direction (to_node, to_client).",
	}, []string{"direction"})
	p := &Proxy{
		cfg:  cfg,
		pick: pick,
		log:  log.Named("proxy"),
		// No TCP keep-alive towards nodes: gossip and the reachability
		// probes close the relays of a node that is gone, the node's
		// WebSocket heartbeat ends a client that is, and the four socket
		// options cost every connection a syscall each.
		dialer: net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: -1},
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ringcast_balancer_connections",
			Help: "Client connections currently relayed, by node id.",
		}, []string{"node"}),
		admission: newAdmission(cfg),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ringcast_balancer_connections_refused_total",
			Help: "Upgrades refused, by reason: before any node was dialled (per_ip_conns, per_ip_rate, sources_full, overloaded, bad_request, shutting_down), or because no node could take it (no_node).",
		}, []string{"reason"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_balancer_dial_fallbacks_total",
			Help: "Failed dials to a node; the node is skipped locally and the next owner is tried.",
		}),
		handshake: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ringcast_balancer_handshake_seconds",
			Help: "Relayed upgrades: from the client's request to the node's 101 forwarded to it, fallbacks included.",
			// 0.5 ms … 8 s
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
		links: make(map[string]*nodeLinks),
		down:  make(map[string]time.Time),
	}
	p.pending = gate.New(cfg.MaxPending, cfg.PendingWait)
	p.heads.New = func() any { b := make([]byte, 0, 1024); return &b }
	rcfg := relay.Config{BufferSize: cfg.BufferSize, IdleTimeout: cfg.IdleTimeout, WriteTimeout: cfg.WriteTimeout, Shards: cfg.RelayShards}
	p.relay, err = relay.New(rcfg, p.log, bytesTotal.WithLabelValues("to_node"), bytesTotal.WithLabelValues("to_client"))
	if err != nil {
		return nil, err
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{p.connections, p.refused, p.fallbacks, p.handshake, bytesTotal} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register proxy metrics: %w", err)
			}
		}
	}
	return p, nil
}

// ServeHTTP relays one WebSocket upgrade to the owner of its client_id.
// Every refusal closes the client's connection: a client that sent an
// upgrade may already be sending frames on it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if p.isClosed() {
		p.refuse(w, "shutting_down", http.StatusServiceUnavailable, "balancer is shutting down")
		return
	}
	if reason := wire.CheckUpgrade(r); reason != "" {
		p.refuse(w, "bad_request", http.StatusBadRequest, reason)
		return
	}
	// Admission comes before the token check: a flood of bad tokens from
	// one address is throttled like any other, and costs no signature
	// verifications past its rate.
	src := p.admission.sourceOf(r)
	if no := p.admission.admit(src, time.Now()); no != nil {
		w.Header().Set("Retry-After", retryAfter(no.retryAfter))
		p.refuse(w, no.reason, no.status, "too many connections from "+src.String()+" ("+no.reason+"), retry later")
		return
	}
	if !p.setup(r.Context()) {
		p.admission.release(src)
		w.Header().Set("Retry-After", "1")
		p.refuse(w, "overloaded", http.StatusServiceUnavailable, "balancer overloaded: too many connections being set up, retry later")
		return
	}
	defer p.setupDone()
	// The verified identity routes the connection: with auth on, the
	// token's sub, never a client_id that only claims to be someone.
	id, err := p.cfg.Auth.Identify(r)
	if err != nil {
		p.admission.release(src)
		p.refused.WithLabelValues(auth.Code(err)).Inc()
		w.Header().Set("Connection", "close")
		auth.Refuse(w, err)
		return
	}
	clientID := id.ClientID
	nodeID, node, br, err := p.dialOwner(r, src, clientID)
	if err != nil {
		p.admission.release(src)
		if r.Context().Err() == nil {
			w.Header().Set("Retry-After", "1")
			p.refuse(w, "no_node", http.StatusServiceUnavailable, "no node available: "+err.Error())
		}
		return
	}
	err = p.upgrade(w, r, src, clientID, nodeID, node, br)
	p.putReader(br)
	if err != nil {
		p.admission.release(src)
		node.Close()
		if ce := p.log.Check(zap.DebugLevel, "upgrade not relayed"); ce != nil {
			ce.Write(zap.String("client_id", clientID), zap.String("node", nodeID), zap.Error(err))
		}
		return
	}
	p.handshake.Observe(time.Since(start).Seconds())
}

// setup takes a slot for an upgrade being set up, waiting up to
// PendingWait for one when MaxPending are already; false = refused.
func (p *Proxy) setup(ctx context.Context) bool { return p.pending.Enter(ctx) }

func (p *Proxy) setupDone() { p.pending.Leave() }

// refuse answers an upgrade the proxy will not relay and closes the
// connection after the answer.
func (p *Proxy) refuse(w http.ResponseWriter, reason string, status int, msg string) {
	p.refused.WithLabelValues(reason).Inc()
	w.Header().Set("Connection", "close")
	http.Error(w, msg, status)
}

// dialOwner dials the owner of clientID and forwards the upgrade to it,
// falling back to the next owner for up to MaxAttempts nodes. An attempt
// fails when the node cannot be dialled or sends no byte of its answer
// within DialTimeout (a stalled process still completes TCP handshakes);
// the node is then marked down. When no other node is left to try, a slow
// node gets up to HandshakeTimeout: a late answer beats none. It returns
// the node with a reader holding the start of its answer.
func (p *Proxy) dialOwner(r *http.Request, src netip.Addr, clientID string) (string, net.Conn, *nodeReader, error) {
	ctx := r.Context()
	hb := p.heads.Get().(*[]byte)
	head := appendRequestHead((*hb)[:0], r, src)
	defer func() {
		if cap(head) <= maxPooledHead {
			*hb = head
			p.heads.Put(hb)
		}
	}()
	tried := make([]string, 0, p.cfg.MaxAttempts)
	var lastErr error
	var nodeID, addr string
	var err error
	next := false // nodeID, addr, err hold the next pick already
	for i := range p.cfg.MaxAttempts {
		if !next {
			nodeID, addr, err = p.pickNode(clientID, tried)
			if nw, ok := p.pick.(NodeWaiter); ok && err != nil && i == 0 {
				// A balancer that just started may not know the ring
				// yet: wait for it. Only then: a ring that is known
				// costs an upgrade no timer.
				wctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
				nw.WaitNodes(wctx)
				cancel()
				nodeID, addr, err = p.pickNode(clientID, tried)
			}
		}
		next = false
		if err != nil {
			if lastErr == nil {
				lastErr = fmt.Errorf("pick node: %w", err)
			}
			break
		}
		if slices.Contains(tried, nodeID) {
			break
		}
		tried = append(tried, nodeID)
		start := time.Now()
		c, br, derr := p.dialNode(ctx, addr, head)
		var nextID, nextAddr string
		if errors.Is(derr, errSlow) {
			// Move on only if there is a node to move on to; otherwise
			// keep waiting on this one.
			if i < p.cfg.MaxAttempts-1 {
				id, a, perr := p.pick.Pick(clientID, p.excluded(tried))
				next = perr == nil && !slices.Contains(tried, id)
				nextID, nextAddr = id, a
			}
			if !next {
				derr = p.await(ctx, c, br, start.Add(max(p.cfg.DialTimeout, p.cfg.HandshakeTimeout)))
			}
		}
		if derr == nil {
			return nodeID, c, br, nil
		}
		if c != nil {
			p.putReader(br)
			c.Close()
		}
		if ctx.Err() != nil {
			return "", nil, nil, ctx.Err()
		}
		p.fallbacks.Inc()
		lastErr = fmt.Errorf("dial node %s at %s: %w", nodeID, addr, derr)
		if p.markDown(nodeID) {
			p.log.Warn("node marked down", zap.String("node", nodeID), zap.String("addr", addr), zap.Error(derr))
		}
		if next {
			nodeID, addr, err = nextID, nextAddr, nil
		}
	}
	return "", nil, nil, lastErr
}

// pickNode picks the node for clientID that is neither in tried nor marked
// down; when down marks leave none (every node failed a dial lately, as in
// a reconnect storm that makes them all slow), it ignores them: a slow node
// beats a 503.
func (p *Proxy) pickNode(clientID string, tried []string) (nodeID, addr string, err error) {
	excl := p.excluded(tried)
	nodeID, addr, err = p.pick.Pick(clientID, excl)
	if err != nil && len(excl) > len(tried) {
		nodeID, addr, err = p.pick.Pick(clientID, tried)
	}
	return nodeID, addr, err
}

// errSlow means the node accepted the connection and the upgrade but sent
// no byte of its answer within DialTimeout; the connection is still open.
var errSlow = errors.New("no answer to the upgrade within the dial timeout")

// dialNode connects to addr, writes the upgrade request head and waits for
// the first byte of the answer, all within DialTimeout. On errSlow it
// returns the open connection and its reader; on other errors neither.
func (p *Proxy) dialNode(ctx context.Context, addr string, head []byte) (net.Conn, *nodeReader, error) {
	deadline := time.Now().Add(p.cfg.DialTimeout)
	c, err := p.dial(ctx, addr, deadline)
	if err != nil {
		return nil, nil, err
	}
	br := p.reader(c)
	fail := func(err error) (net.Conn, *nodeReader, error) {
		p.putReader(br)
		c.Close()
		return nil, nil, err
	}
	if _, err := c.Write(head); err != nil {
		return fail(fmt.Errorf("write upgrade: %w", err))
	}
	if err := p.awaitSet(ctx, c, br); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			return c, br, errSlow
		}
		return fail(err)
	}
	return c, br, nil
}

// dial connects to addr and gives the connection deadline. An IP address
// is dialled by dialTCP, a name by net.Dialer.
func (p *Proxy) dial(ctx context.Context, addr string, deadline time.Time) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if c, err := dialTCP(ctx, addr, ap, deadline); !errors.Is(err, errors.ErrUnsupported) {
			return c, err
		}
	}
	c, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, fmt.Errorf("set node deadline: %w", err)
	}
	return c, nil
}

// await waits until br holds the first byte of the node's answer, until
// deadline or until ctx ends (a client that gave up frees the attempt).
func (p *Proxy) await(ctx context.Context, c net.Conn, br *nodeReader, deadline time.Time) error {
	if err := c.SetDeadline(deadline); err != nil {
		return fmt.Errorf("set node deadline: %w", err)
	}
	return p.awaitSet(ctx, c, br)
}

// awaitSet is await under the deadline c has already.
func (p *Proxy) awaitSet(ctx context.Context, c net.Conn, br *nodeReader) error {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	_, err := br.Peek(1)
	cut := !stop() // ctx ended: the callback has set, or is setting, a past deadline
	if err != nil {
		return fmt.Errorf("no answer to the upgrade: %w", err)
	}
	if cut {
		return fmt.Errorf("no answer to the upgrade: %w", ctx.Err())
	}
	return nil
}

// upgrade reads node's answer to the forwarded upgrade (whose first bytes
// br holds) and answers the client with it. On a 101 it hijacks the client
// and starts the relay. It writes the client's response itself; a returned
// error means node must be closed.
func (p *Proxy) upgrade(w http.ResponseWriter, r *http.Request, src netip.Addr, clientID, nodeID string, node net.Conn, br *nodeReader) error {
	w.Header().Set("Connection", "close") // for every answer but the relayed 101
	n, err := p.readSwitch(node, br)
	var resp *http.Response // set when the general parser read the answer
	if err == nil && n == 0 {
		// Not a 101, or a head longer than the buffer.
		if resp, err = http.ReadResponse(&br.Reader, r); err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return p.relayRefusal(w, resp)
		}
	}
	if err != nil {
		err = fmt.Errorf("read upgrade response from node: %w", err)
		if p.markDown(nodeID) {
			p.log.Warn("node marked down", zap.String("node", nodeID), zap.Error(err))
		}
		http.Error(w, "bad gateway: "+err.Error(), http.StatusBadGateway)
		return err
	}
	if p.isClosed() {
		http.Error(w, "balancer is shutting down", http.StatusServiceUnavailable)
		return errClosed
	}
	client, cbuf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "cannot take over the connection", http.StatusInternalServerError)
		return fmt.Errorf("hijack client: %w", err)
	}
	if err := p.forwardSwitch(client, node, br, resp, cbuf.Reader); err != nil {
		client.Close()
		return err
	}
	// The id is cut from the request line: a copy lets that be collected.
	return p.relay.Start(client, node, &route{p: p, src: src, clientID: strings.Clone(clientID), node: nodeID})
}

// route is one relayed connection as the Proxy tracks it: the node it goes
// to and the source address whose admission slot it holds until it ends.
type route struct {
	p              *Proxy
	src            netip.Addr
	clientID, node string
}

// Track registers l, relayed to the route's node; it returns false once
// Close was called.
func (rt *route) Track(l relay.Link) bool { return rt.p.track(rt.node, l, rt.src) }

// Untrack forgets l and frees its admission slot.
func (rt *route) Untrack(l relay.Link, err error) {
	rt.p.untrack(rt.node, l)
	if ce := rt.p.log.Check(zap.DebugLevel, "relay ended"); ce != nil {
		ce.Write(zap.String("client_id", rt.clientID), zap.String("node", rt.node), zap.Error(err))
	}
}

// readSwitch reads the node's answer as far as needed to tell whether it
// is a 101 whose head br holds whole, and returns the length of that head:
// it is then relayed as the node wrote it. It returns 0 when the answer is
// anything else (or a head longer than the buffer): http.ReadResponse then
// reads it from br, which it left unread. Whatever is read after the first
// byte comes within HandshakeTimeout (a node that began answering is
// alive: a failure now is not retried elsewhere); an answer that came whole
// with its first byte, as usual, is read without setting a deadline.
func (p *Proxy) readSwitch(node net.Conn, br *nodeReader) (int, error) {
	timed := false
	for {
		b, _ := br.Peek(br.Buffered())
		n, more := switchHead(b)
		if n > 0 {
			return n, nil
		}
		if !timed {
			if err := node.SetDeadline(time.Now().Add(p.cfg.HandshakeTimeout)); err != nil {
				return 0, fmt.Errorf("set node deadline: %w", err)
			}
			timed = true
		}
		if !more || len(b) == br.Size() {
			return 0, nil
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return 0, err
		}
	}
}

// switchHead reports the length of the 101 response head that b starts
// with. It returns 0 when b starts with any other answer, or with a head it
// does not take as written (a line that does not end in CRLF, one that is
// not a header field); more when b ends before that can be told.
func switchHead(b []byte) (n int, more bool) {
	const status = "HTTP/1.1 101"
	if len(b) < len(status)+1 {
		return 0, bytes.HasPrefix([]byte(status), b)
	}
	if string(b[:len(status)]) != status || (b[len(status)] != ' ' && b[len(status)] != '\r') {
		return 0, false
	}
	i := bytes.IndexByte(b, '\n')
	for first := true; i >= 0; first = false {
		line := b[n:i]
		if len(line) == 0 || line[len(line)-1] != '\r' {
			return 0, false
		}
		line = line[:len(line)-1]
		n = i + 1
		switch {
		case len(line) == 0:
			return n, false
		case first && len(line) > len(status) && (line[len(status)] != ' ' || !text(line[len(status):])):
			return 0, false
		case !first && !headerLine(line):
			return 0, false
		}
		j := bytes.IndexByte(b[n:], '\n')
		if j < 0 {
			break
		}
		i = n + j
	}
	return 0, true
}

// headerLine reports whether line is "Name: value": a token, a colon and a
// value without control bytes but tab.
func headerLine(line []byte) bool {
	k := bytes.IndexByte(line, ':')
	return k > 0 && token(line[:k]) && text(line[k+1:])
}

// text reports whether b holds no control byte but tab.
func text(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// token reports whether b is an HTTP token (RFC 9110 §5.6.2).
func token[T string | []byte](b T) bool {
	if len(b) == 0 {
		return false
	}
	for i := range len(b) {
		c := b[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// relayRefusal relays a node's non-101 answer to the client as a plain
// response, which closes the client's connection.
func (p *Proxy) relayRefusal(w http.ResponseWriter, resp *http.Response) error {
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		if !hopByHop(k) {
			w.Header()[k] = vs
		}
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(p.cfg.WriteTimeout))
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	if err != nil {
		return fmt.Errorf("relay node refusal: %w", err)
	}
	return fmt.Errorf("node answered %s", resp.Status)
}

// forwardSwitch sends the node's 101 and whatever the node sent after it
// to the client in one write, then the bytes the client sent after its
// request. The 101 goes as the node wrote it, straight from nodeBuf, unless
// http.ReadResponse parsed it (resp): then it is rendered from resp.
// Deadlines are left to the relay, which sets its own.
func (p *Proxy) forwardSwitch(client, node net.Conn, nodeBuf *nodeReader, resp *http.Response, clientBuf *bufio.Reader) error {
	out, _ := nodeBuf.Peek(nodeBuf.Buffered())
	if resp != nil {
		var head bytes.Buffer
		head.WriteString("HTTP/1.1 " + resp.Status + "\r\n")
		if err := resp.Header.Write(&head); err != nil {
			return fmt.Errorf("encode upgrade response: %w", err)
		}
		head.WriteString("\r\n")
		head.Write(out)
		out = head.Bytes()
	}
	if err := writeAll(client, out, p.cfg.WriteTimeout); err != nil {
		return fmt.Errorf("write upgrade response to client: %w", err)
	}
	pipelined, _ := clientBuf.Peek(clientBuf.Buffered())
	if err := writeAll(node, pipelined, p.cfg.WriteTimeout); err != nil {
		return fmt.Errorf("write early client bytes to node: %w", err)
	}
	return nil
}

func writeAll(c net.Conn, b []byte, timeout time.Duration) error {
	if len(b) == 0 {
		return nil
	}
	if err := c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	_, err := c.Write(b)
	return err
}

// nodeReader buffers a node's answer to an upgrade, reading at most
// maxNodeResponse of it. Readers are pooled.
type nodeReader struct {
	bufio.Reader
	lr io.LimitedReader
}

func (p *Proxy) putReader(br *nodeReader) {
	br.Reset(nil)
	br.lr.R = nil
	p.readers.Put(br)
}

func (p *Proxy) reader(node net.Conn) *nodeReader {
	br, _ := p.readers.Get().(*nodeReader)
	if br == nil {
		br = new(nodeReader)
	}
	br.lr = io.LimitedReader{R: node, N: maxNodeResponse}
	br.Reset(&br.lr)
	return br
}

// hopByHop reports whether the canonical header key k applies to one
// connection only.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// endToEnd reports whether the canonical header key k must reach the node
// even when the client names it in Connection: the node's policy (Origin)
// and the handshake depend on it.
func endToEnd(k string) bool {
	return k == "Origin" || k == "Host" || strings.HasPrefix(k, "Sec-Websocket-")
}

// maxPooledHead bounds the request head buffers kept for reuse: a rare
// upgrade with huge headers does not pin its buffer.
const maxPooledHead = 8 << 10

// appendRequestHead renders onto b the upgrade request sent to the node for
// the client at client: hop-by-hop and client-supplied forwarding headers
// removed, the upgrade and forwarding headers set by the proxy.
func appendRequestHead(b []byte, r *http.Request, client netip.Addr) []byte {
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		// Absolute form or a request built in-process: the node gets
		// the origin form.
		uri = r.URL.RequestURI()
	}
	b = append(b, "GET "...)
	b = append(b, uri...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = appendValue(b, r.Host)
	b = append(b, "\r\n"...)
	conn := r.Header["Connection"]
	for k, vs := range r.Header {
		if hopByHop(k) || k == "Host" || k == "Forwarded" || k == "X-Real-Ip" ||
			strings.HasPrefix(k, "X-Forwarded-") || !token(k) || (!endToEnd(k) && listed(conn, k)) {
			continue
		}
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = appendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "Connection: Upgrade\r\nUpgrade: websocket\r\n"...)
	if client.IsValid() {
		b = append(b, "X-Forwarded-For: "...)
		b = client.AppendTo(b)
		b = append(b, "\r\n"...)
	}
	if r.TLS != nil {
		b = append(b, "X-Forwarded-Proto: https\r\n\r\n"...)
	} else {
		b = append(b, "X-Forwarded-Proto: http\r\n\r\n"...)
	}
	return b
}

// listed reports whether the Connection header values conn name the header
// key k.
func listed(conn []string, k string) bool {
	for _, v := range conn {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), k) {
				return true
			}
		}
	}
	return false
}

// appendValue appends a header value trimmed of surrounding blanks, with
// any CR or LF turned into a space (a value parsed from a request has none;
// one set in-process might).
func appendValue(b []byte, v string) []byte {
	v = strings.Trim(v, " \t")
	for i := range len(v) {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// excluded returns tried plus the nodes marked down now, forgetting expired marks.
func (p *Proxy) excluded(tried []string) []string {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clip(tried)
	for id, until := range p.down {
		if !now.Before(until) {
			delete(p.down, id)
		} else if !slices.Contains(tried, id) {
			out = append(out, id)
		}
	}
	return out
}

// markDown skips nodeID for DownFor; it reports whether the node was up.
func (p *Proxy) markDown(nodeID string) bool {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.down[nodeID]
	p.down[nodeID] = now.Add(p.cfg.DownFor)
	return !ok || !now.Before(until)
}

// Up forgets a down mark: gossip says nodeID (re)joined, so a failed dial
// from before must not keep its clients away.
func (p *Proxy) Up(nodeID string) {
	p.mu.Lock()
	delete(p.down, nodeID)
	p.mu.Unlock()
}

// Down reports whether nodeID is locally marked down now.
func (p *Proxy) Down(nodeID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.down[nodeID]
	return ok && time.Now().Before(until)
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// nodeLinks are the live links to one node, each with the source address
// it is counted against, and the node's connections gauge (looked up once,
// not per connection).
type nodeLinks struct {
	src   map[relay.Link]netip.Addr
	gauge prometheus.Gauge
}

// track registers r, relayed to nodeID; it returns false once Close was
// called.
func (p *Proxy) track(nodeID string, r relay.Link, src netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	set := p.links[nodeID]
	if set == nil {
		set = &nodeLinks{src: make(map[relay.Link]netip.Addr), gauge: p.connections.WithLabelValues(nodeID)}
		p.links[nodeID] = set
	}
	set.src[r] = src
	set.gauge.Inc()
	return true
}

func (p *Proxy) untrack(nodeID string, r relay.Link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.links[nodeID]
	if set == nil {
		return
	}
	if src, ok := set.src[r]; ok {
		p.admission.release(src)
		delete(set.src, r)
		set.gauge.Dec()
	}
	if len(set.src) == 0 {
		delete(p.links, nodeID)
		p.connections.DeleteLabelValues(nodeID)
	}
}

// CloseNode closes every connection relayed to nodeID, so its clients
// reconnect at once; it returns how many it closed.
func (p *Proxy) CloseNode(nodeID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.links[nodeID]
	if set == nil {
		return 0
	}
	for r := range set.src {
		r.Close()
	}
	return len(set.src)
}

// NodeConnections returns the number of live relayed connections to nodeID.
func (p *Proxy) NodeConnections(nodeID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if set := p.links[nodeID]; set != nil {
		return len(set.src)
	}
	return 0
}

// Connections returns the number of live relayed connections per node id.
func (p *Proxy) Connections() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.links))
	for id, set := range p.links {
		out[id] = len(set.src)
	}
	return out
}

// Close closes every relayed connection and waits for their relays to end.
// ServeHTTP refuses with 503 afterwards.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for _, set := range p.links {
		for r := range set.src {
			r.Close()
		}
	}
	p.mu.Unlock()
	p.relay.Close()
}
