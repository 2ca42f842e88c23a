package client

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/wire"
)

// Errors callers branch on.
var (
	ErrNotConnected = errors.New("client: not connected")
	ErrDisconnected = errors.New("client: link dropped before the reply") // the request may or may not have been applied
	ErrClosed       = errors.New("client: closed")
	ErrSubscribed   = errors.New("client: channel already subscribed")
)

// State is the state of a Client's link.
type State int

// States, in the order a link goes through them.
const (
	StateDisconnected State = iota // not linked; waiting to retry, or Run not started
	StateConnecting                // dialling, or waiting for the welcome
	StateConnected                 // the welcome arrived
	StateClosed                    // Run returned; final
)

func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateClosed:
		return "closed"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Message is a channel message.
type Message struct {
	Channel   string
	Data      json.RawMessage
	From      string // publisher's client id; empty when published over HTTP
	Offset    uint64 // position in the channel's history, when HasOffset
	Epoch     string // history epoch, when HasOffset
	HasOffset bool   // the channel keeps history
}

// Direct is a message sent to this client by id.
type Direct struct {
	From string // sender's client id; empty when sent over HTTP
	Data json.RawMessage
}

// Client is one ringcast session. Its methods are safe for concurrent use.
type Client struct {
	cfg    Config
	url    string
	log    *zap.Logger
	jitter func(n int64) int64 // uniform in [0, n)

	mu        sync.Mutex
	sessionID string // the session query parameter; a new one after 4010
	state     State
	node      string
	link      *link                    // the welcomed link, nil when there is none
	subs      map[string]*Subscription // by channel
	pending   map[uint64]chan error    // requests waiting for ack or error, by id
	lastID    uint64
	welcomes  int
	cancel    context.CancelFunc // stops Run; set once Run starts
	closed    bool
}

// New validates cfg and returns a Client; Run connects it.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("client config: %w", err)
	}
	u, err := cfg.dialURL()
	if err != nil {
		return nil, fmt.Errorf("client config: %w", err)
	}
	return &Client{
		cfg:       cfg,
		url:       u,
		log:       cfg.Log.With(zap.String("client_id", cfg.ClientID)),
		jitter:    rand.Int64N,
		sessionID: crand.Text(),
		subs:      make(map[string]*Subscription),
		pending:   make(map[uint64]chan error),
	}, nil
}

// Run connects and keeps reconnecting until ctx is done or Close is called,
// then returns nil. It may be called once.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	if c.cancel != nil {
		c.mu.Unlock()
		return errors.New("client: Run called twice")
	}
	c.cancel = cancel
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.setState(StateClosed, nil)
	}()

	var lost time.Time // when the current outage began; zero while a link holds
	for attempt := 0; ; {
		c.setState(StateConnecting, nil)
		start := time.Now()
		welcomed, now, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.setState(StateDisconnected, err)
		if welcomed && time.Since(start) >= stableLink {
			// Only a link that held ends the outage: a node that
			// welcomes and then refuses (1013, bridge down) must not
			// draw a reconnect storm.
			lost, attempt = time.Time{}, 0
		}
		if lost.IsZero() {
			lost = time.Now()
		}
		if now {
			c.log.Info("link down", zap.Error(err))
			continue
		}
		var refused *RefusedError
		wait := time.Duration(0)
		if errors.As(err, &refused) {
			wait = refused.RetryAfter
		}
		d := wait + backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff, time.Since(lost), c.jitter)
		attempt++
		c.log.Info("link down", zap.Error(err), zap.Int("attempt", attempt), zap.Duration("backoff", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// stableLink is how long a link must have lasted for its end to start a
// new outage (and the backoff over).
const stableLink = 3 * time.Second

// backoff returns the sleep before the next attempt when the link was lost
// outage ago: full jitter, uniform in [0, ceiling], the ceiling half the
// outage so far, at least minD and at most maxD. A client that retries in
// this shape is back at most half an outage after the server (a balancer
// restarted within 1 s: within a second), while a long outage is retried
// gently (the sleeps grow by about a quarter each).
func backoff(minD, maxD, outage time.Duration, jitter func(int64) int64) time.Duration {
	ceil := min(max(outage/2, minD), maxD)
	return time.Duration(jitter(int64(ceil) + 1))
}

// RefusedError is a connect the server answered with an HTTP status instead
// of the upgrade: 503 when a balancer or node is overloaded or has no node
// yet, 429 when a limit per source address or client id is reached, 401
// without a valid token. RetryAfter is its Retry-After (0 when absent): the
// next attempt waits that long plus the usual jittered backoff.
type RefusedError struct {
	Status     int
	RetryAfter time.Duration
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("server refused the upgrade: HTTP %d", e.Status)
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(", retry after %v", e.RetryAfter)
	}
	return msg
}

// maxRetryAfter bounds the Retry-After a client honours: a server's mistake
// must not park it for hours.
const maxRetryAfter = time.Minute

// retryAfter parses an HTTP response's Retry-After: delta seconds, or an
// HTTP date. Anything else, or a time passed, is 0.
func retryAfter(resp io.Reader) time.Duration {
	r, err := http.ReadResponse(bufio.NewReader(io.LimitReader(resp, 16<<10)), nil)
	if err != nil {
		return 0
	}
	v := r.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return min(time.Duration(n)*time.Second, maxRetryAfter)
	}
	if at, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(at), 0), maxRetryAfter)
	}
	return 0
}

// Close stops Run (which then returns nil) and fails pending requests. It does
// not wait for Run to return, so a callback may call it.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	} else {
		c.state = StateClosed
	}
	return nil
}

// State returns the current state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Node returns the node id from the last welcome.
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.node
}

// Reconnects returns how many times the client was welcomed again after its
// first welcome.
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.welcomes-1, 0)
}

func (c *Client) setState(s State, err error) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
	if c.cfg.OnState != nil {
		c.cfg.OnState(s, err)
	}
}

// Publish sends data (marshalled to JSON) to channel and waits for the ack.
// A refusal by the server is returned as a *wire.Error. Without a link it
// returns ErrNotConnected; if the link drops before the reply,
// ErrDisconnected. It never re-sends on its own.
func (c *Client) Publish(ctx context.Context, channel string, data any) error {
	if err := wire.ValidateChannel(channel); err != nil {
		return err
	}
	return c.request(ctx, wire.Frame{Op: wire.OpPublish, Channel: channel}, data)
}

// Send sends data (marshalled to JSON) to the client with id to and waits for
// the ack; errors as for Publish.
func (c *Client) Send(ctx context.Context, to string, data any) error {
	if err := wire.ValidateClientID(to); err != nil {
		return err
	}
	return c.request(ctx, wire.Frame{Op: wire.OpSend, To: to}, data)
}

func (c *Client) request(ctx context.Context, f wire.Frame, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("%s: encode data: %w", f.Op, err)
	}
	f.Data = b
	done := make(chan error, 1)
	c.mu.Lock()
	l := c.link
	if l == nil {
		c.mu.Unlock()
		return ErrNotConnected
	}
	c.lastID++
	id := c.lastID
	c.pending[id] = done
	c.mu.Unlock()

	f.ID = strconv.AppendUint(nil, id, 10)
	// A failed write closes the link; detach then fails the request.
	_ = l.sendFrame(&f)

	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", f.Op, ctx.Err())
	}
}

// resolve completes the request that f replies to, reporting whether f was
// such a reply. Late acks are swallowed; late errors are left for logging.
func (c *Client) resolve(f *wire.Frame) bool {
	if (f.Op != wire.OpAck && f.Op != wire.OpError) || len(f.ID) == 0 {
		return false
	}
	id, err := strconv.ParseUint(string(f.ID), 10, 64)
	if err != nil {
		return false
	}
	c.mu.Lock()
	done, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	switch {
	case !ok:
		return f.Op == wire.OpAck
	case f.Op == wire.OpAck:
		done <- nil
	default:
		done <- &wire.Error{Code: f.Code, Message: f.Message}
	}
	return true
}
