package session

import (
	"time"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Identity is who the connection is and what it may do: the token it
// was upgraded with, or the last refresh; with auth off, its client id
// with every permission.
func (c *Conn) Identity() *auth.Identity {
	if id := c.token(); id != nil {
		return id
	}
	return auth.Open(c.id)
}

// token is the identity c's token proved (or its last refresh), nil with
// auth off.
func (c *Conn) token() *auth.Identity {
	if r := c.rare.Load(); r != nil {
		return r.ident.Load()
	}
	return nil
}

// openIdentity is what every connection may do with auth off: one shared
// value instead of an Identity per connection (its ClientID is empty;
// Conn.id is the id).
var openIdentity = auth.Open("")

// identity is what c may do: its token's identity, or openIdentity.
func (c *Conn) identity() *auth.Identity {
	if id := c.token(); id != nil {
		return id
	}
	return openIdentity
}

// expireAt arms the 4001 close for id's deadline, replacing an earlier one.
// An identity without exp (or auth off) never expires.
func (c *Conn) expireAt(id *auth.Identity) {
	at := id.Deadline()
	c.q.Locked(func(closing bool) {
		if r := c.rare.Load(); r != nil && r.expTimer != nil {
			r.expTimer.Stop()
			r.expTimer = nil
		}
		if at.IsZero() || closing {
			return
		}
		c.timers().expTimer = time.AfterFunc(time.Until(at), func() { c.Close(wire.CloseUnauthorized, "token expired") })
	})
}

// refresh replaces the connection's token: same sub required. A refused
// token leaves the old one in force until its own exp.
func (c *Conn) refresh(f wire.Frame) {
	next, err := c.u.deps.Auth.Refresh(c.Identity(), f.Token)
	if err != nil {
		c.Send(wire.ErrorFrame(f.ID, &wire.Error{Code: wire.CodeUnauthorized, Message: err.Error()}))
		return
	}
	var r *rareState
	c.q.Locked(func(bool) { r = c.timers() }) // made at the upgrade with auth on
	r.ident.Store(next)
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
