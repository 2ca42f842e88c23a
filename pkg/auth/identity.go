package auth

import (
	"strings"
	"time"
)

// Identity is who a connection is and what it may do. It is immutable; a
// refresh replaces it.
type Identity struct {
	ClientID string
	Expires  time.Time // the token's exp; zero = never
	Token    bool      // the identity was proven by a token (auth on)

	leeway time.Duration

	subscribe []pattern // nil = every channel
	publish   []pattern // nil = every channel
	send      bool
}

// Deadline is when a connection of this identity must be closed 4001:
// exp plus the clock-skew leeway; zero = never.
func (id *Identity) Deadline() time.Time {
	if id.Expires.IsZero() {
		return time.Time{}
	}
	return id.Expires.Add(id.leeway)
}

// Open returns the identity of clientID when auth is off: every permission.
func Open(clientID string) *Identity { return &Identity{ClientID: clientID, send: true} }

// pattern is one compiled channel pattern: an exact name, or a prefix.
type pattern struct {
	s      string
	prefix bool
}

// compile turns the channels or publish claim into patterns, with {sub}
// replaced by the client's id. A nil list means "every channel" and stays
// nil; an empty list allows nothing.
func compile(list []string, sub string) []pattern {
	if list == nil {
		return nil
	}
	out := make([]pattern, 0, len(list))
	for _, p := range list {
		p = strings.ReplaceAll(p, "{sub}", sub)
		if s, ok := strings.CutSuffix(p, "*"); ok {
			out = append(out, pattern{s: s, prefix: true})
		} else {
			out = append(out, pattern{s: p})
		}
	}
	return out
}

func allowed(ps []pattern, channel string) bool {
	if ps == nil {
		return true
	}
	for _, p := range ps {
		if p.s == channel || p.prefix && strings.HasPrefix(channel, p.s) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether the identity may subscribe to channel.
func (id *Identity) CanSubscribe(channel string) bool { return allowed(id.subscribe, channel) }

// CanPublish reports whether the identity may publish to channel over its
// socket.
func (id *Identity) CanPublish(channel string) bool { return allowed(id.publish, channel) }

// CanSend reports whether the identity may send direct messages.
func (id *Identity) CanSend() bool { return id.send }
