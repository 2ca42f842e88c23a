package session

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/hub"
	"github.com/ringcast/ringcast/pkg/outbound"
	"github.com/ringcast/ringcast/pkg/park"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Conn is one client WebSocket. Its reader (one goroutine at a time, or
// none while it is parked on a poller: pkg/park) owns the socket and closes
// it; its queued frames are written by the node's shared writers
// (pkg/outbound), so an idle connection costs a poller slot (or one parked
// goroutine) and no buffers.
type Conn struct {
	u     *Upgrader
	id    string // its own copy: not a slice of the upgrade request
	since int64  // outbound.Clock() when the connection was accepted
	nc    net.Conn
	raw   syscall.RawConn
	// Bytes read from the socket (or by the upgrade) that the frame
	// parser has not taken yet: a pooled buffer, held only while it has
	// some, so an idle connection holds none. The reader's own.
	rb         *[]byte
	rpos, rend int32

	spot park.Spot // c's place on a poller while idle (pkg/park; none = goroutines)

	q outbound.Queue // frames for the client; its lock guards rare's timers too
	// rare is what few connections have: a token, a session, a context of
	// their own, a move, a timer. Nil until one of them comes; set once (by
	// the upgrade or Start, before anything else sees c, else under q's
	// lock by the first move or timer), so an idle connection without them
	// pays one pointer: it is 192 bytes.
	rare atomic.Pointer[rareState]

	// The request rate's theoretical arrival time, unix nanoseconds
	// (limits.go); 0 = never. The reader's own, like the message being
	// read, which lives on loop's stack (charge, assembly).
	tat int64
}

// rareState is the part of a Conn that most connections never need.
type rareState struct {
	session string // the session query parameter; "" = none. Never changes.
	// ctx is the context Start was given, unless it is Background; set
	// before Start's goroutine, then never changed.
	ctx context.Context
	// ident is the token's identity (or the last refresh's); nil with auth
	// off, when every connection shares openIdentity.
	ident     atomic.Pointer[auth.Identity]
	asked     bool        // told to reconnect elsewhere; guarded by q's lock
	moveTimer *time.Timer // closes the connection if a reconnect request is ignored; guarded by q's lock
	expTimer  *time.Timer // closes the connection 4001 when its token expires; guarded by q's lock
}

// timers returns c's rareState for a move or a timer, making it if c has
// none. Called with q's lock held (the only place rare is set once c is
// started).
func (c *Conn) timers() *rareState {
	if r := c.rare.Load(); r != nil {
		return r
	}
	r := &rareState{}
	c.rare.Store(r)
	return r
}

var _ hub.Sink = (*Conn)(nil)

// ClientID implements hub.Sink.
func (c *Conn) ClientID() string { return c.id }

// Session implements hub.Sessioned.
func (c *Conn) Session() string {
	if r := c.rare.Load(); r != nil {
		return r.session
	}
	return ""
}

// Since is when the connection was accepted.
func (c *Conn) Since() time.Time { return outbound.ClockTime(c.since) }

// Move asks the client to reconnect elsewhere: a reconnect frame with
// reason and after, and a close with code if the client is still here 2 s
// after that. It reports false, doing nothing, when the client was asked
// already. Does not block.
func (c *Conn) Move(reason string, code int, after time.Duration) bool {
	first := false
	c.q.Locked(func(bool) {
		if r := c.timers(); !r.asked {
			r.asked, first = true, true
		}
	})
	if !first {
		return false
	}
	c.Send(wire.Encode(&wire.Frame{Op: wire.OpReconnect, Reason: reason, AfterMS: wire.Int(int(after / time.Millisecond))}))
	c.q.Locked(func(closing bool) {
		if !closing {
			c.timers().moveTimer = time.AfterFunc(after+2*time.Second, func() { c.Close(code, reason) })
		}
	})
	return true
}

// Send implements hub.Sink.
func (c *Conn) Send(b []byte) bool { return c.u.out.Send((*socket)(c), ws.OpText, b) }

// Close queues a close frame; the socket is shut once it is written (or the
// write times out). Idempotent, does not block, safe for concurrent use.
func (c *Conn) Close(code int, reason string) { c.u.out.Close((*socket)(c), code, reason) }

// kick moves a parked reader back to a goroutine: the connection is
// closing and its reader drains the peer under the close deadlines.
func (c *Conn) kick() {
	if park.Kick((*socket)(c)) {
		c.u.deps.WG.Add(1)
		go c.park(c.context())
	}
}

// socket is the connection as pkg/outbound and pkg/park see it: the
// methods they call, kept out of Conn's own API.
type socket Conn

func (s *socket) Queue() *outbound.Queue { return &s.q }
func (s *socket) Spot() *park.Spot       { return &s.spot }
func (s *socket) Conn() net.Conn         { return s.nc }
func (s *socket) Raw() syscall.RawConn   { return s.raw }
func (s *socket) Kick()                  { (*Conn)(s).kick() }

// Readable reads a connection its poller saw readable on a new goroutine.
func (s *socket) Readable() {
	c := (*Conn)(s)
	c.u.deps.WG.Add(1)
	go c.woken(c.context())
}

// Late ends a connection whose deadline passed while it was parked.
func (s *socket) Late() {
	c := (*Conn)(s)
	c.u.deps.WG.Add(1)
	go c.expire(c.context())
}

// reader adapts the connection's read method to io.Reader for the frame
// parser, without exporting a Read that only the reader may call.
type reader Conn

func (r *reader) Read(p []byte) (int, error) { return (*Conn)(r).read(p) }

// in is the connection as an io.Reader.
func (c *Conn) in() io.Reader { return (*reader)(c) }

// readBufSize is the size of the pooled read buffers: a few requests, or
// the start of a big message (the rest of which is read in place).
const readBufSize = 2048

var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// read returns buffered bytes first; otherwise it fills a pooled buffer
// with what the socket has (most requests arrive whole with one read), or
// reads a long p straight from the socket.
func (c *Conn) read(p []byte) (int, error) {
	if c.rb == nil {
		if len(p) >= readBufSize {
			return c.nc.Read(p)
		}
		b := readBufs.Get().(*[]byte)
		n, err := c.nc.Read(*b)
		if n <= 0 {
			readBufs.Put(b)
			return 0, err
		}
		c.rb, c.rpos, c.rend = b, 0, int32(n)
	}
	n := copy(p, (*c.rb)[c.rpos:c.rend])
	c.rpos += int32(n)
	if c.rpos == c.rend {
		c.releaseRead()
	}
	return n, nil
}

// buffered is how many bytes read has that the parser has not taken.
func (c *Conn) buffered() int64 {
	if c.rb == nil {
		return 0
	}
	return int64(c.rend - c.rpos)
}

// buffer holds b (the upgrade's read-ahead) for the parser.
func (c *Conn) buffer(b []byte) {
	if len(b) > readBufSize {
		b = append([]byte(nil), b...) // not pooled: releaseRead drops it
		c.rb, c.rpos, c.rend = &b, 0, int32(len(b))
		return
	}
	c.rb = readBufs.Get().(*[]byte)
	c.rpos, c.rend = 0, int32(copy(*c.rb, b))
}

// releaseRead gives the read buffer back.
func (c *Conn) releaseRead() {
	if c.rb != nil && len(*c.rb) == readBufSize {
		readBufs.Put(c.rb)
	}
	c.rb = nil
}

// waitReadable parks until the socket has data (or EOF, or the deadline),
// without holding a buffer.
func (c *Conn) waitReadable() error {
	if c.rb != nil || c.raw == nil {
		return nil
	}
	return c.raw.Read(peekReady)
}

// peekReady reports, without consuming or waiting, whether fd has data, EOF
// or an error the next Read reports.
func peekReady(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}

// Start serves the connection on its own goroutines, counted in Deps.WG,
// and returns at once. Call it once, after Upgrade.
func (c *Conn) Start(ctx context.Context) {
	if ctx != context.Background() {
		// Nothing else uses c yet: rare is not shared.
		r := c.rare.Load()
		if r == nil {
			r = &rareState{}
			c.rare.Store(r)
		}
		r.ctx = ctx
	}
	c.u.deps.WG.Add(1)
	go c.serve(ctx)
}

// context is the context Start was given, for the goroutines a poller or
// a kick starts.
func (c *Conn) context() context.Context {
	if r := c.rare.Load(); r != nil && r.ctx != nil {
		return r.ctx
	}
	return context.Background()
}

// serve sets the connection up: welcome, then announce it to the hub. The
// reading itself runs on park goroutines, woken by a poller or waiting.
func (c *Conn) serve(ctx context.Context) {
	defer c.u.deps.WG.Done()
	// The welcome is queued first so it precedes anything the hub delivers
	// once Attach made the client reachable.
	var epoch uint64
	if c.u.deps.RingEpoch != nil {
		epoch = c.u.deps.RingEpoch()
	}
	c.Send(wire.Encode(&wire.Frame{
		Op: wire.OpWelcome, ClientID: c.id, Node: c.u.cfg.Node,
		RingEpoch: wire.Uint64(epoch), HeartbeatMS: int(c.u.cfg.Heartbeat / time.Millisecond),
	}))
	actx, cancel := context.WithTimeout(ctx, c.u.cfg.RequestTimeout)
	prev, err := c.u.deps.Hub.Attach(actx, c)
	cancel()
	c.u.release()
	if p, ok := prev.(*Conn); ok {
		p.Close(wire.CloseReplaced, "replaced by a newer connection of the same session")
	}
	c.expireAt(c.identity())
	if err != nil {
		c.logger().Warn("attach", zap.Error(err))
		c.closeNow(wire.CloseTryAgainLater, "bridge unavailable")
		c.cleanup(false)
		return
	}
	if c.u.deps.Attached != nil {
		c.u.deps.Attached(c)
	}
	c.idle(ctx)
}

// idle waits for the client's next bytes: parked on a poller, without a
// goroutine, or on a new park goroutine.
func (c *Conn) idle(ctx context.Context) {
	if c.rb == nil && park.Park((*socket)(c)) {
		// A close queued before c was parked found nothing to kick.
		if _, closing := c.closingSince(); closing {
			c.kick()
		}
		return
	}
	c.u.deps.WG.Add(1)
	go c.park(ctx)
}

// woken reads a connection its poller saw readable (or gave up watching:
// the read then waits under the read deadline).
func (c *Conn) woken(ctx context.Context) {
	defer c.u.deps.WG.Done()
	if c.ready(0) && c.loop(ctx) {
		c.idle(ctx)
		return
	}
	c.cleanup(true)
}

// park waits until the client sends something, then reads. Waiting always
// happens on a fresh goroutine whose stack never ran the request path, so
// an idle connection waiting on a goroutine costs the smallest stack the
// runtime has: after each burst of frames, loop hands the wait over to a
// poller or a new park goroutine. A poller starts park when bytes arrive.
func (c *Conn) park(ctx context.Context) {
	defer c.u.deps.WG.Done()
	if c.wait(0) && c.loop(ctx) {
		c.idle(ctx)
		return
	}
	c.cleanup(true)
}

// expire ends a parked connection whose heartbeat deadline passed, as a
// read deadline would; one whose bytes arrived meanwhile is read instead.
func (c *Conn) expire(ctx context.Context) {
	if _, closing := c.closingSince(); closing || c.readable() {
		c.park(ctx)
		return
	}
	defer c.u.deps.WG.Done()
	c.end(os.ErrDeadlineExceeded, 0)
	c.cleanup(true)
}

// wait parks until the socket is readable. It returns false when the
// connection is over: closing, timed out or gone. by is when the message
// being read must be complete (0 = none: between messages).
func (c *Conn) wait(by int64) bool {
	if !c.ready(by) {
		return false
	}
	if err := c.waitReadable(); err != nil {
		c.end(err, by)
		return false
	}
	return true
}

// ready sets the read deadline for the client's next bytes (by: as for
// wait). It returns false once a close frame is queued: then it has given
// the peer a bounded time to read it and answer, and handles nothing more.
func (c *Conn) ready(by int64) bool {
	if at, closing := c.closingSince(); closing {
		c.nc.SetReadDeadline(at.Add(c.u.cfg.CloseGrace))
		c.discard()
		return false
	}
	c.nc.SetReadDeadline(c.readDeadline(by))
	return true
}

// cleanup releases the connection once it is over.
func (c *Conn) cleanup(attached bool) {
	if attached {
		c.u.deps.Hub.Detach(c)
	}
	c.finish()
	c.nc.Close()
	c.releaseRead()
	if c.u.deps.Done != nil {
		c.u.deps.Done(c)
	}
}

// loop reads and handles frames while the socket has data; its caller saw
// it readable. It returns true when the socket ran dry between messages
// (the caller hands the wait to a poller or a fresh goroutine) and false
// when the connection is over.
func (c *Conn) loop(ctx context.Context) bool {
	var asm assembly
	defer asm.free(c.u.region) // an unfinished message's pages, when the connection ends
	var held charge
	defer c.releaseMessage(&held) // and its bytes in the budget
	var msgOp ws.OpCode
	for first := true; ; first = false {
		if !asm.open && !first && !c.readable() {
			return true
		}
		if asm.open && !c.wait(held.by) {
			return false
		}
		if _, closing := c.closingSince(); closing {
			return c.wait(held.by) // drains and reports false
		}
		h, err := ws.ReadHeader(c.in())
		if err != nil {
			c.end(err, held.by)
			return false
		}
		if reason := checkHeader(h); reason != "" {
			c.closeNow(wire.CloseProtocolError, reason)
			return false
		}
		if !c.allowFrame(h) {
			c.closeNow(wire.ClosePolicy, "too many requests: over "+c.u.rateText()+" frames per second")
			return false
		}
		if h.OpCode.IsControl() {
			if !c.control(h, held.by) {
				return false
			}
			continue
		}
		switch {
		case h.OpCode == ws.OpContinuation && !asm.open:
			c.closeNow(int(ws.StatusProtocolError), "continuation without a message")
			return false
		case h.OpCode != ws.OpContinuation && asm.open:
			c.closeNow(int(ws.StatusProtocolError), "new message inside a fragmented one")
			return false
		case h.OpCode != ws.OpContinuation:
			msgOp = h.OpCode
		}
		if h.Length > int64(c.u.cfg.MaxMessage-asm.n) {
			c.closeNow(wire.CloseTooBig, "message too big")
			return false
		}
		// A message whose bytes were all read already is handled without
		// waiting, so never unfinished: it goes straight to the heap.
		whole := !asm.open && h.Fin && h.Length <= c.buffered()
		cost := h.Length
		if !whole {
			cost = asm.cost(h.Length)
		}
		if !c.holdMessage(&held, cost) {
			c.closeNow(wire.CloseTryAgainLater, "node busy: too many unfinished messages")
			return false
		}
		var msg []byte
		if whole {
			msg = make([]byte, h.Length)
			io.ReadFull(c.in(), msg) // from the buffer: cannot fail
			ws.Cipher(msg, h.Mask, 0)
		} else {
			c.nc.SetReadDeadline(c.readDeadline(held.by))
			if err := c.readFrame(&asm, h); err != nil {
				c.end(err, held.by)
				return false
			}
			if !h.Fin {
				continue
			}
			msg = asm.message(c.u.region)
		}
		if msgOp == ws.OpText && !utf8.Valid(msg) {
			c.closeNow(int(ws.StatusInvalidFramePayloadData), "invalid UTF-8")
			return false
		}
		c.u.met.in.Inc()
		c.handle(ctx, msg)
		c.releaseMessage(&held)
	}
}

// control handles a ping, pong or close frame, read while a message due
// by (0 = none) may be open; false ends the connection.
func (c *Conn) control(h ws.Header, by int64) bool {
	if h.Length > 125 || !h.Fin {
		c.closeNow(int(ws.StatusProtocolError), "bad control frame")
		return false
	}
	var b [125]byte
	p := b[:h.Length]
	if _, err := io.ReadFull(c.in(), p); err != nil {
		c.end(err, by)
		return false
	}
	ws.Cipher(p, h.Mask, 0)
	switch h.OpCode {
	case ws.OpPing:
		c.u.out.Send((*socket)(c), ws.OpPong, append([]byte(nil), p...))
	case ws.OpClose:
		if reason := checkClose(p); reason != "" {
			c.closeNow(wire.CloseProtocolError, reason)
			return false
		}
		c.Close(wire.CloseNormal, "")
		c.drain()
		return false
	}
	return true
}

// readable reports, without blocking, whether the socket has data (or EOF).
func (c *Conn) readable() bool {
	if c.rb != nil || c.raw == nil {
		return true
	}
	has := true
	c.raw.Read(func(fd uintptr) bool {
		has = peekReady(fd)
		return true
	})
	return has
}

// closeNow sends a close frame and drains the peer briefly.
func (c *Conn) closeNow(code int, reason string) {
	c.Close(code, reason)
	c.drain()
}

// drain gives the peer a second to close its side after our close frame.
func (c *Conn) drain() {
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	c.discard()
}

// discard reads and drops until the peer closes or the read deadline passes.
func (c *Conn) discard() {
	var b [512]byte
	for {
		if _, err := c.read(b[:]); err != nil {
			return
		}
	}
}

// closingSince reports whether a close frame is queued, and since when.
func (c *Conn) closingSince() (time.Time, bool) { return c.q.Closing() }

// finish runs when serve returns: nothing more is queued and a pending move
// timer is stopped.
func (c *Conn) finish() {
	c.q.Finish(func() {
		r := c.rare.Load()
		if r == nil {
			return
		}
		if r.moveTimer != nil {
			r.moveTimer.Stop()
		}
		if r.expTimer != nil {
			r.expTimer.Stop()
		}
	})
}

// end handles a read error; by is when the message being read was due (0 = none).
func (c *Conn) end(err error, by int64) {
	if _, closing := c.closingSince(); closing {
		return // our close frame went out: the peer's silence ends it
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout() && by != 0 && time.Now().UnixNano() >= by:
		c.closeNow(wire.ClosePolicy, "message not completed within "+c.u.cfg.AssemblyTimeout.String())
	case errors.As(err, &ne) && ne.Timeout():
		c.logger().Debug("connection timed out")
		c.closeNow(wire.CloseGoingAway, "heartbeat timeout")
	case errors.Is(err, ws.ErrHeaderLengthMSB), errors.Is(err, ws.ErrHeaderLengthUnexpected):
		c.closeNow(wire.CloseProtocolError, err.Error())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
	default:
		c.logger().Debug("read", zap.Error(err))
	}
}

// logger is the node's logger naming the connection's client.
func (c *Conn) logger() *zap.Logger { return c.u.log.With(zap.String("client_id", c.id)) }

// handle runs one client request. Requests run in order; fan-out to this
// connection runs concurrently through Send.
func (c *Conn) handle(ctx context.Context, b []byte) {
	f, err := wire.Decode(b)
	if err != nil {
		c.Send(wire.ErrorFrame(f.ID, err))
		return
	}
	if (f.Op == wire.OpPublish || f.Op == wire.OpSend) && c.u.Overloaded() {
		c.Send(wire.ErrorFrame(f.ID, wire.ErrOverloaded))
		return
	}
	rctx, cancel := context.WithTimeout(ctx, c.u.cfg.RequestTimeout)
	defer cancel()
	switch f.Op {
	case wire.OpPing:
		c.Send(wire.Encode(&wire.Frame{Op: wire.OpPong, ID: f.ID}))
	case wire.OpSubscribe:
		if !c.identity().CanSubscribe(f.Channel) {
			c.Send(wire.ErrorFrame(f.ID, forbidden("subscribe to", f.Channel)))
			return
		}
		err := c.u.deps.Hub.Subscribe(rctx, c, f.Channel, f.Since, f.ID)
		switch {
		case errors.Is(err, hub.ErrOverflow):
			c.Close(wire.CloseSlowConsumer, "too many messages during recovery")
		case errors.Is(err, hub.ErrLost):
			c.Close(wire.CloseServiceRestart, "bridge reconnected during the subscribe: resubscribe")
		case err != nil:
			c.Send(wire.ErrorFrame(f.ID, hub.WireError(err)))
		case c.u.deps.Subscribed != nil:
			c.u.deps.Subscribed(c)
		}
	case wire.OpUnsubscribe:
		c.u.deps.Hub.Unsubscribe(c, f.Channel)
		c.Send(wire.Encode(&wire.Frame{Op: wire.OpUnsubscribed, ID: f.ID, Channel: f.Channel}))
	case wire.OpPublish:
		if !c.identity().CanPublish(f.Channel) {
			c.Send(wire.ErrorFrame(f.ID, forbidden("publish to", f.Channel)))
			return
		}
		_, err := c.u.deps.Hub.Publish(rctx, bridge.Message{Channel: f.Channel, Data: f.Data, From: c.id})
		c.reply(f, err)
	case wire.OpSend:
		if !c.identity().CanSend() {
			c.Send(wire.ErrorFrame(f.ID, &wire.Error{Code: wire.CodeForbidden, Message: "this token may not send direct messages"}))
			return
		}
		_, err := c.u.deps.Hub.Send(rctx, bridge.Direct{To: f.To, From: c.id, Data: f.Data})
		c.reply(f, err)
	case wire.OpRefresh:
		c.refresh(f)
	}
}

func (c *Conn) reply(f wire.Frame, err error) {
	switch {
	case err != nil:
		c.Send(wire.ErrorFrame(f.ID, hub.WireError(err)))
	case len(f.ID) > 0:
		c.Send(wire.Encode(&wire.Frame{Op: wire.OpAck, ID: f.ID}))
	}
}
