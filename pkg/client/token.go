package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	crand "crypto/rand"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/wire"
)

// token returns the token for the next dial: TokenFunc's, else Config.Token.
func (c *Client) token(ctx context.Context) (string, error) {
	if c.cfg.TokenFunc == nil {
		return c.cfg.Token, nil
	}
	tctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	t, err := c.cfg.TokenFunc(tctx)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return t, nil
}

// sessionURL is the dial URL with token and the current session.
func (c *Client) sessionURL(token string) string {
	c.mu.Lock()
	session := c.sessionID
	c.mu.Unlock()
	u := c.url + "&session=" + session
	if token != "" {
		u += "&token=" + url.QueryEscape(token)
	}
	return u
}

// Session returns the session query parameter of the next connection.
func (c *Client) Session() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessionID
}

func (c *Client) newSession() {
	c.mu.Lock()
	c.sessionID = crand.Text()
	c.mu.Unlock()
}

// renewTimer arms t to fire shortly before exp, when there is a TokenFunc
// to ask for the next token and exp is known; it returns t's channel, or
// nil when nothing is to be renewed.
func (c *Client) renewTimer(t *time.Timer, exp time.Time) <-chan time.Time {
	t.Stop()
	if c.cfg.TokenFunc == nil || exp.IsZero() {
		return nil
	}
	left := time.Until(exp)
	// Renew a fifth of the lifetime ahead, at most 30 s and at least 1 s
	// before exp, so a slow token endpoint still makes it.
	lead := min(max(left/5, time.Second), 30*time.Second)
	t.Reset(max(left-lead, 0))
	return t.C
}

// refresh asks TokenFunc for a new token and sends it to the server; the
// refreshed reply arms the next renewal. A failure is logged: the server
// closes the link 4001 at exp and the reconnect asks for a token again.
func (c *Client) refresh(ctx context.Context, l *link) {
	token, err := c.token(ctx)
	if err == nil {
		err = l.sendFrame(&wire.Frame{Op: wire.OpRefresh, Token: token})
	}
	if err != nil {
		c.log.Warn("token refresh", zap.Error(err))
	}
}

// tokenExp reads the exp claim of a JWT without verifying it (the server
// does that); zero when there is none or the token is not a JWT.
func tokenExp(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp float64 `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil || claims.Exp <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(claims.Exp), 0)
}
