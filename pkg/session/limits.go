package session

import (
	"encoding/binary"
	"errors"
	"io"
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
//
// The bucket (RequestRate per second, burst 2×) is kept as one number, its
// theoretical arrival time (the generic cell rate algorithm): tat runs
// ahead of the clock by one emission interval per frame and falls back to
// it at the rate, so the tokens left are burst − (tat − now)/interval, and a
// frame is allowed while at least one is.
func (c *Conn) allowFrame(h ws.Header) bool {
	if h.OpCode == ws.OpContinuation {
		return true // its message paid when it started
	}
	now := time.Now().UnixNano()
	tat := max(c.tat, now)
	if tat-now > c.u.rate.tolerance {
		return false
	}
	c.tat = tat + c.u.rate.interval
	return true
}

// rateLimit is RequestRate as allowFrame uses it.
type rateLimit struct {
	interval  int64 // nanoseconds per request: 1/RequestRate
	tolerance int64 // how far ahead of the clock tat may run: burst−1 intervals
}

func newRateLimit(rate float64) rateLimit {
	interval := 1e9 / rate
	return rateLimit{interval: int64(interval), tolerance: int64((2*rate - 1) * interval)}
}

func (u *Upgrader) rateText() string { return strconv.FormatFloat(u.cfg.RequestRate, 'g', -1, 64) }

// holdMessage charges n more bytes for the message being read (its heap
// slice, or its pages and readerCost: assembly.cost) to the node-wide
// MaxUnfinished budget, and starts its AssemblyTimeout with its first
// frame. It reports false, holding nothing more, when the budget is spent.
func (c *Conn) holdMessage(m *charge, n int64) bool {
	if c.u.unfinished.Add(n) > c.u.cfg.MaxUnfinished {
		c.u.unfinished.Add(-n)
		return false
	}
	m.held += n
	if m.by == 0 {
		m.by = time.Now().Add(c.u.cfg.AssemblyTimeout).UnixNano()
	}
	return true
}

// charge is the message being read as the budget sees it. It lives on the
// reader's stack (loop), not in the connection: an idle one has none.
type charge struct {
	held int64 // bytes counted in the node-wide budget
	by   int64 // unix nanoseconds the message must be complete by; 0 = none
}

// releaseMessage gives the message's bytes back to the budget once it was
// handled or the connection ended.
func (c *Conn) releaseMessage(m *charge) {
	if m.held != 0 {
		c.u.unfinished.Add(-m.held)
	}
	*m = charge{}
}

// assembly is a client message that had to wait for bytes, read into
// pages of the Upgrader's region (region.go) and joined once complete.
// The reader's own: its pages go back when the message is complete or the
// reader ends.
type assembly struct {
	open  bool    // a message has begun (an empty first frame too)
	pages []int32 // its pages, filled in order
	n     int     // payload bytes so far
}

// cost is what n more payload bytes charge the budget: the pages they
// begin, and readerCost with the message's first frame.
func (a *assembly) cost(n int64) int64 {
	var c int64
	if !a.open {
		c = readerCost()
	}
	need := (int64(a.n) + n + pageSize - 1) / pageSize
	return c + (need-int64(len(a.pages)))*pageSize
}

var errNoPage = errors.New("session: no free page although the budget allowed one")

// readFrame reads the payload of frame h (its header read) into a's pages
// and unmasks it. The caller charged a.cost(h.Length).
func (c *Conn) readFrame(a *assembly, h ws.Header) error {
	a.open = true
	for off := 0; int64(off) < h.Length; {
		if a.n == len(a.pages)*pageSize {
			p := c.u.region.get()
			if p < 0 {
				return errNoPage
			}
			a.pages = append(a.pages, p)
		}
		last := len(a.pages) - 1
		seg := c.u.region.page(a.pages[last])[a.n-last*pageSize:]
		if rest := h.Length - int64(off); int64(len(seg)) > rest {
			seg = seg[:rest]
		}
		if _, err := io.ReadFull(c.in(), seg); err != nil {
			return err
		}
		ws.Cipher(seg, h.Mask, off)
		off += len(seg)
		a.n += len(seg)
	}
	return nil
}

// message copies the complete message out of its pages, returns them and
// starts over.
func (a *assembly) message(r *region) []byte {
	msg := make([]byte, a.n)
	for i, p := range a.pages {
		copy(msg[i*pageSize:], r.page(p))
	}
	a.free(r)
	return msg
}

// free returns a's pages and starts over.
func (a *assembly) free(r *region) {
	if len(a.pages) > 0 {
		r.put(a.pages)
	}
	*a = assembly{}
}

// readDeadline is when the next read must have returned: the heartbeat
// bound, or sooner by, the completion bound of a message being read (0 =
// none).
func (c *Conn) readDeadline(by int64) time.Time {
	dl := time.Now().Add(3 * c.u.cfg.Heartbeat)
	if by != 0 && by < dl.UnixNano() {
		return time.Unix(0, by)
	}
	return dl
}
