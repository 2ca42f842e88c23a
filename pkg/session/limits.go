package session

import (
	"encoding/binary"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// checkHeader returns why a client frame header breaks RFC 6455, or "".
func checkHeader(h ws.Header) string {
	switch {
	case !h.Masked:
		return "client frames must be masked"
	case h.Rsv != 0:
		return "reserved bits set: no extension was negotiated"
	}
	switch h.OpCode {
	case ws.OpContinuation, ws.OpText, ws.OpBinary, ws.OpClose, ws.OpPing, ws.OpPong:
		return ""
	}
	return "reserved opcode " + strconv.Itoa(int(h.OpCode))
}

// checkClose returns why the payload of a client close frame is illegal
// (RFC 6455 §5.5.1, §7.4), or "": empty, or a code a peer may send followed
// by a UTF-8 reason.
func checkClose(p []byte) string {
	if len(p) == 0 {
		return ""
	}
	if len(p) == 1 {
		return "close frame with a 1-byte payload"
	}
	code := binary.BigEndian.Uint16(p)
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014, code >= 3000 && code <= 4999:
	default:
		return "close code " + strconv.Itoa(int(code)) + " may not be sent"
	}
	if !utf8.Valid(p[2:]) {
		return "close reason is not UTF-8"
	}
	return ""
}

// allowFrame spends a request token for a frame that is a whole message or
// a control frame (continuations of a message are its own); false means the
// client is over RequestRate.
func (c *Conn) allowFrame(h ws.Header) bool {
	if h.OpCode == ws.OpContinuation {
		return true // its message paid when it started
	}
	rate := c.u.cfg.RequestRate
	burst := 2 * rate
	now := time.Now().UnixNano()
	if c.tokensAt == 0 {
		c.tokens = burst
	} else {
		c.tokens = min(burst, c.tokens+float64(now-c.tokensAt)/1e9*rate)
	}
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

func (u *Upgrader) rateText() string { return strconv.FormatFloat(u.cfg.RequestRate, 'g', -1, 64) }

// holdMessage counts n more bytes of the message being read against the
// node-wide MaxUnfinished budget, and starts its AssemblyTimeout with its
// first frame. It reports false, holding nothing more, when the budget is
// spent.
func (c *Conn) holdMessage(n int64) bool {
	if c.u.unfinished.Add(n) > c.u.cfg.MaxUnfinished {
		c.u.unfinished.Add(-n)
		return false
	}
	c.held += n
	if c.asmBy == 0 {
		c.asmBy = time.Now().Add(c.u.cfg.AssemblyTimeout).UnixNano()
	}
	return true
}

// releaseMessage gives the message's bytes back to the budget once it was
// handled or the connection ended.
func (c *Conn) releaseMessage() {
	if c.held != 0 {
		c.u.unfinished.Add(-c.held)
		c.held = 0
	}
	c.asmBy = 0
}

// assembly is the client message being read, kept as its frames brought
// it, one allocation each, and joined once the last arrives: a message
// that grows a frame at a time leaves no outgrown buffers behind for the
// garbage collector, so what MaxUnfinished counts is about what it costs.
type assembly struct {
	open  bool     // a message has begun (an empty first frame too)
	first []byte   // the first frame's payload: all of an unfragmented message
	more  [][]byte // the later frames'
	n     int      // payload bytes so far
}

// next returns room for the payload of the message's next frame.
func (a *assembly) next(n int) []byte {
	b := make([]byte, n)
	if a.open {
		a.more = append(a.more, b)
	} else {
		a.first, a.open = b, true
	}
	a.n += n
	return b
}

// message returns the whole payload and starts over.
func (a *assembly) message() []byte {
	msg := a.first
	if len(a.more) > 0 {
		msg = make([]byte, 0, a.n)
		msg = append(msg, a.first...)
		for _, b := range a.more {
			msg = append(msg, b...)
		}
	}
	*a = assembly{}
	return msg
}

// readDeadline is when the next read must have returned: the heartbeat
// bound, or sooner the completion bound of a message being read.
func (c *Conn) readDeadline() time.Time {
	dl := time.Now().Add(3 * c.u.cfg.Heartbeat)
	if c.asmBy != 0 && c.asmBy < dl.UnixNano() {
		return time.Unix(0, c.asmBy)
	}
	return dl
}
