package session

import (
	"time"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Identity is who the connection is and what it may do: the token it
// was upgraded with, or the last refresh.
func (c *Conn) Identity() *auth.Identity { return c.ident.Load() }

// expireAt arms the 4001 close for id's deadline, replacing an earlier one.
// An identity without exp (or auth off) never expires.
func (c *Conn) expireAt(id *auth.Identity) {
	c.q.Locked(func(closing bool) {
		if c.expTimer != nil {
			c.expTimer.Stop()
			c.expTimer = nil
		}
		at := id.Deadline()
		if at.IsZero() || closing {
			return
		}
		c.expTimer = time.AfterFunc(time.Until(at), func() { c.Close(wire.CloseUnauthorized, "token expired") })
	})
}

// refresh replaces the connection's token: same sub required. A refused
// token leaves the old one in force until its own exp.
func (c *Conn) refresh(f wire.Frame) {
	next, err := c.u.deps.Auth.Refresh(c.ident.Load(), f.Token)
	if err != nil {
		c.Send(wire.ErrorFrame(f.ID, &wire.Error{Code: wire.CodeUnauthorized, Message: err.Error()}))
		return
	}
	c.ident.Store(next)
	c.expireAt(next)
	reply := &wire.Frame{Op: wire.OpRefreshed, ID: f.ID}
	if !next.Expires.IsZero() {
		exp := next.Expires.Unix()
		reply.Exp = &exp
	}
	c.Send(wire.Encode(reply))
}

func forbidden(what, channel string) *wire.Error {
	return &wire.Error{Code: wire.CodeForbidden, Message: "this token may not " + what + " " + channel}
}
