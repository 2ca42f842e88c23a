package client

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/wire"
)

const (
	// frameQueue bounds the frames read ahead of the callbacks.
	frameQueue = 64
	// closeWait bounds the wait for the server's close reply when the client
	// ends a link, so the server sees a clean close rather than 1006.
	closeWait = time.Second
)

var pingFrame = wire.Encode(&wire.Frame{Op: wire.OpPing})

// link is one WebSocket connection. Writes come from any goroutine and are
// serialized by wmu; reads come from readLoop only.
type link struct {
	conn         net.Conn
	src          io.Reader // conn, or the handshake's buffered reader
	writeTimeout time.Duration
	readTimeout  atomic.Int64  // how long the next read may wait: DialTimeout until the welcome, then 2× heartbeat
	done         chan struct{} // closed when the session ends
	wmu          sync.Mutex
}

// send writes one message frame; a failed write closes the connection.
func (l *link) send(op ws.OpCode, p []byte) error {
	b := appendFrame(make([]byte, 0, maxHeader+len(p)), op, p)
	return l.write(b)
}

func (l *link) sendFrame(f *wire.Frame) error { return l.send(ws.OpText, wire.Encode(f)) }

// sendFrames writes text frames in one write: a reconnect's resubscribes
// cost the client one syscall and the server one read, not two of each
// per channel.
func (l *link) sendFrames(fs []*wire.Frame) error {
	var b []byte
	for _, f := range fs {
		b = appendFrame(b, ws.OpText, wire.Encode(f))
	}
	return l.write(b)
}

// write writes b, whole frames, under the write deadline; a failed write
// closes the connection.
func (l *link) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	err := l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	if err == nil {
		_, err = l.conn.Write(b)
	}
	if err != nil {
		l.conn.Close()
	}
	return err
}

// maxHeader is the longest header of a masked frame.
const maxHeader = 14

// appendFrame appends one final, masked client frame of op carrying p to
// b: header and payload together, so the frame goes out in one write
// (wsutil.WriteClientMessage writes the header and the payload apart: two
// syscalls per frame, and often two segments for the server to read).
func appendFrame(b []byte, op ws.OpCode, p []byte) []byte {
	mask := ws.NewMask()
	b = append(b, 0x80|byte(op), 0) // FIN, opcode; MASK bit and length below
	lenAt := len(b) - 1
	switch n := len(p); {
	case n < 126:
		b[lenAt] = 0x80 | byte(n)
	case n <= 0xffff:
		b[lenAt] = 0x80 | 126
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b[lenAt] = 0x80 | 127
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, p...)
	ws.Cipher(b[start:], mask, 0)
	return b
}

// Write writes p as one chunk; readLoop's control frame replies go through it.
func (l *link) Write(p []byte) (int, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout)); err != nil {
		return 0, err
	}
	n, err := l.conn.Write(p)
	if err != nil {
		l.conn.Close()
	}
	return n, err
}

// session dials once and serves the link until it drops. welcomed reports
// whether the server welcomed it; now, whether to reconnect without backoff.
func (c *Client) session(ctx context.Context) (welcomed, now bool, err error) {
	token, err := c.token(ctx)
	if err != nil {
		return false, false, err
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout) // Dialer.Timeout alone does not bound the handshake
	var refused *RefusedError
	d := ws.Dialer{Timeout: c.cfg.DialTimeout, TLSConfig: c.cfg.TLS, NetDial: c.cfg.NetDial,
		OnStatusError: func(status int, _ []byte, resp io.Reader) {
			refused = &RefusedError{Status: status, RetryAfter: retryAfter(resp)}
		}}
	conn, br, _, err := d.Dial(dctx, c.sessionURL(token))
	cancel()
	if refused != nil {
		return false, false, fmt.Errorf("dial %s: %w", c.cfg.URL, refused)
	}
	if err != nil {
		return false, false, fmt.Errorf("dial %s: %w", c.cfg.URL, err)
	}
	l := &link{conn: conn, src: conn, writeTimeout: c.cfg.WriteTimeout, done: make(chan struct{})}
	if br != nil {
		l.src = br
	}
	l.readTimeout.Store(int64(c.cfg.DialTimeout))
	// readLoop closes frames when it returns, after setting readErr, so
	// every frame read before a failure is handled before the failure.
	frames := make(chan wire.Frame, frameQueue)
	var readErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		readErr = c.readLoop(l, frames)
		close(frames)
	})
	defer func() {
		close(l.done)
		conn.Close()
		wg.Wait()
		c.detach(l)
	}()

	ticker := time.NewTicker(time.Hour)
	ticker.Stop()
	defer ticker.Stop()
	refresh := time.NewTimer(time.Hour)
	refresh.Stop()
	defer refresh.Stop()
	var ping, move, renew <-chan time.Time // nil until the welcome, a reconnect frame, a token to renew
	var moveReason string
	for {
		select {
		case <-ctx.Done():
			c.goodbye(l, frames)
			return welcomed, false, nil
		case <-move:
			c.goodbye(l, frames)
			return welcomed, true, fmt.Errorf("server asked to reconnect: %s", moveReason)
		case <-ping:
			_ = l.send(ws.OpText, pingFrame) // a failed write closes the link; readLoop reports it
		case <-renew:
			renew = nil
			c.refresh(ctx, l)
		case f, ok := <-frames:
			switch {
			case !ok:
				// Every close goes through the backoff: only a reconnect
				// frame (above) is an invitation to come back at once.
				var ce wsutil.ClosedError
				if errors.As(readErr, &ce) && ce.Code == wire.CloseReplaced {
					// Another connection took this session (a duplicated
					// tab, a copied Client): become a session of its own.
					c.newSession()
				}
				return welcomed, false, fmt.Errorf("read: %w", readErr)
			case !welcomed && f.Op != wire.OpWelcome:
				return false, false, fmt.Errorf("first frame is %q, want welcome", f.Op)
			case !welcomed:
				welcomed = true
				ticker.Reset(c.heartbeat(&f))
				ping = ticker.C
				c.attach(l, &f)
				renew = c.renewTimer(refresh, tokenExp(token))
			case f.Op == wire.OpRefreshed:
				var exp time.Time
				if f.Exp != nil {
					exp = time.Unix(*f.Exp, 0)
				}
				renew = c.renewTimer(refresh, exp)
			case f.Op == wire.OpReconnect:
				after := time.Duration(0)
				if f.AfterMS != nil && *f.AfterMS > 0 {
					after = time.Duration(*f.AfterMS) * time.Millisecond
				}
				if c.cfg.OnReconnectRequest != nil {
					c.cfg.OnReconnectRequest(f.Reason, after)
				}
				if move == nil {
					move, moveReason = time.After(after), f.Reason
				}
			default:
				c.handle(&f)
			}
		}
	}
}

// goodbye sends a close frame and handles frames until the server's close
// arrives (or closeWait passes): what the server sent before is not lost and
// it sees a clean close rather than 1006.
func (c *Client) goodbye(l *link, frames <-chan wire.Frame) {
	if l.send(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "")) != nil {
		return
	}
	t := time.NewTimer(closeWait)
	defer t.Stop()
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return
			}
			c.handle(&f)
		case <-t.C:
			return
		}
	}
}

// readLoop reads frames until the link fails. It completes requests itself,
// so a callback waiting on Publish does not hold up its own ack, and hands
// every other frame to the session.
func (c *Client) readLoop(l *link, frames chan<- wire.Frame) error {
	limit := int64(c.cfg.MaxMessageSize)
	control := l.controlHandler()
	rd := &wsutil.Reader{
		Source:         l.src,
		State:          ws.StateClientSide,
		CheckUTF8:      true,
		MaxFrameSize:   limit,
		OnIntermediate: control,
	}
	for {
		// Any frame, control frames included, proves the link alive.
		if err := l.conn.SetReadDeadline(time.Now().Add(time.Duration(l.readTimeout.Load()))); err != nil {
			return err
		}
		hdr, err := rd.NextFrame()
		if err != nil {
			return err
		}
		if hdr.OpCode.IsControl() {
			if err := control(hdr, rd); err != nil {
				return err
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(rd, limit+1))
		if err != nil {
			return err
		}
		if int64(len(b)) > limit {
			return fmt.Errorf("message over %d bytes", limit)
		}
		var f wire.Frame
		if err := json.Unmarshal(b, &f); hdr.OpCode != ws.OpText || err != nil {
			c.log.Warn("malformed frame from server", zap.Int("bytes", len(b)))
			continue
		}
		if f.Op == wire.OpWelcome {
			l.readTimeout.Store(int64(2 * c.heartbeat(&f)))
		}
		if c.resolve(&f) {
			continue
		}
		select {
		case frames <- f:
		case <-l.done:
			return net.ErrClosed
		}
	}
}

// controlHandler answers pings and reads close frames. Close frames are
// parsed here because wsutil refuses codes the protocol uses (1012, 1013).
func (l *link) controlHandler() wsutil.FrameHandlerFunc {
	ctl := wsutil.ControlFrameHandler(l, ws.StateClientSide)
	return func(h ws.Header, r io.Reader) error {
		if h.OpCode != ws.OpClose {
			return ctl(h, r)
		}
		p := make([]byte, h.Length) // at most 125 bytes: the reader checks control frame headers
		if _, err := io.ReadFull(r, p); err != nil {
			return err
		}
		_ = l.send(ws.OpClose, p[:min(len(p), 2)]) // echo the code
		code, reason := ws.ParseCloseFrameData(p)
		return wsutil.ClosedError{Code: code, Reason: reason}
	}
}

func (c *Client) heartbeat(welcome *wire.Frame) time.Duration {
	switch {
	case c.cfg.Heartbeat > 0:
		return c.cfg.Heartbeat
	case welcome.HeartbeatMS > 0:
		return time.Duration(welcome.HeartbeatMS) * time.Millisecond
	}
	return defaultHeartbeat
}

// attach makes l the client's link and resubscribes every channel, from its
// last position where there is one.
func (c *Client) attach(l *link, welcome *wire.Frame) {
	c.mu.Lock()
	c.link, c.node, c.state = l, welcome.Node, StateConnected
	c.welcomes++
	frames := make([]*wire.Frame, 0, len(c.subs))
	for _, s := range c.subs {
		frames = append(frames, s.subscribeFrame())
	}
	_ = l.sendFrames(frames) // a failed write closes the link; the next welcome resubscribes
	c.mu.Unlock()
	c.log.Debug("connected", zap.String("node", welcome.Node))
	if c.cfg.OnWelcome != nil {
		c.cfg.OnWelcome(*welcome)
	}
	if c.cfg.OnState != nil {
		c.cfg.OnState(StateConnected, nil)
	}
}

// detach forgets l and fails the requests waiting on it.
func (c *Client) detach(l *link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.link == l {
		c.link = nil
	}
	for id, done := range c.pending {
		done <- ErrDisconnected
		delete(c.pending, id)
	}
}

// handle dispatches one frame after the welcome.
func (c *Client) handle(f *wire.Frame) {
	switch f.Op {
	case wire.OpMessage:
		if c.cfg.OnMessageFrame != nil {
			c.cfg.OnMessageFrame(*f)
		}
		c.deliver(f)
	case wire.OpSubscribed:
		c.subscribed(f)
		if c.cfg.OnSubscribed != nil {
			c.cfg.OnSubscribed(*f)
		}
	case wire.OpDirect:
		if c.cfg.OnDirect != nil {
			c.cfg.OnDirect(Direct{From: f.From, Data: f.Data})
		}
	case wire.OpError:
		c.log.Warn("error from server", zap.String("code", f.Code), zap.String("message", f.Message))
	}
}
