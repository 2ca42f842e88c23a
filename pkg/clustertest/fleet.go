package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// Fleet is a set of Go clients connected through a balancer, recording what
// each one saw. Tests and tools use it as a crowd of users.
type Fleet struct {
	Clients []*Member
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// Member is one client of a fleet and what it observed.
type Member struct {
	ID     string
	Client *client.Client

	mu          sync.Mutex
	node        string
	welcomedAt  time.Time
	subscribed  map[string]time.Time // channel → last subscribed reply
	unrecovered int                  // subscribed replies with recovered:false
	messages    map[string][]client.Message
	directs     []client.Direct
	downAt      time.Time // last time the link went down
}

// NewFleet connects n clients named prefix0…prefix(n-1) to url, each
// subscribed to channels, and waits until all are subscribed.
func NewFleet(ctx context.Context, url, prefix string, n int, channels []string, tune func(*client.Config)) (*Fleet, error) {
	rctx, cancel := context.WithCancel(context.Background())
	f := &Fleet{cancel: cancel}
	for i := range n {
		m := &Member{ID: fmt.Sprintf("%s%d", prefix, i), subscribed: map[string]time.Time{}, messages: map[string][]client.Message{}}
		cfg := client.DefaultConfig()
		cfg.URL, cfg.ClientID = url, m.ID
		cfg.MinBackoff = 50 * time.Millisecond
		cfg.DialTimeout = 2 * time.Second
		cfg.OnWelcome = func(w wire.Frame) {
			m.mu.Lock()
			m.node, m.welcomedAt = w.Node, time.Now()
			m.mu.Unlock()
		}
		cfg.OnState = func(s client.State, _ error) {
			if s == client.StateDisconnected {
				m.mu.Lock()
				m.downAt = time.Now()
				m.mu.Unlock()
			}
		}
		cfg.OnSubscribed = func(fr wire.Frame) {
			m.mu.Lock()
			m.subscribed[fr.Channel] = time.Now()
			if fr.Recovered != nil && !*fr.Recovered {
				m.unrecovered++
			}
			m.mu.Unlock()
		}
		cfg.OnDirect = func(d client.Direct) {
			m.mu.Lock()
			m.directs = append(m.directs, d)
			m.mu.Unlock()
		}
		if tune != nil {
			tune(&cfg)
		}
		c, err := client.New(cfg)
		if err != nil {
			f.Close()
			return nil, err
		}
		m.Client = c
		for _, ch := range channels {
			if _, err := c.Subscribe(ch, func(msg client.Message) {
				m.mu.Lock()
				m.messages[msg.Channel] = append(m.messages[msg.Channel], msg)
				m.mu.Unlock()
			}); err != nil {
				f.Close()
				return nil, err
			}
		}
		f.Clients = append(f.Clients, m)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			c.Run(rctx)
		}()
	}
	err := testkit.Wait(ctx, 30*time.Second, func() error {
		for _, m := range f.Clients {
			m.mu.Lock()
			ok := len(m.subscribed) == len(channels) && m.node != ""
			m.mu.Unlock()
			if !ok {
				return fmt.Errorf("client %s not subscribed yet", m.ID)
			}
		}
		return nil
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Close stops every client and waits for them.
func (f *Fleet) Close() {
	f.cancel()
	for _, m := range f.Clients {
		m.Client.Close()
	}
	f.wg.Wait()
}

// Node returns the node the member was last welcomed by.
func (m *Member) Node() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.node
}

// WelcomedAt returns when the last welcome arrived.
func (m *Member) WelcomedAt() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.welcomedAt
}

// DownAt returns when the link last went down (zero if it never did).
func (m *Member) DownAt() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.downAt
}

// SubscribedAt returns when the last subscribed reply for channel arrived.
func (m *Member) SubscribedAt(channel string) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.subscribed[channel]
}

// Unrecovered counts subscribed replies that said recovered:false.
func (m *Member) Unrecovered() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unrecovered
}

// Messages returns a copy of the messages received on channel.
func (m *Member) Messages(channel string) []client.Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]client.Message(nil), m.messages[channel]...)
}

// Directs returns a copy of the direct messages received.
func (m *Member) Directs() []client.Direct {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]client.Direct(nil), m.directs...)
}

// HasData reports whether a message on channel carried data equal to want.
func (m *Member) HasData(channel string, want any) bool {
	w, _ := json.Marshal(want)
	for _, msg := range m.Messages(channel) {
		if string(msg.Data) == string(w) {
			return true
		}
	}
	return false
}

// WaitAll waits until every member satisfies ok.
func (f *Fleet) WaitAll(ctx context.Context, timeout time.Duration, what string, ok func(*Member) bool) error {
	return testkit.Wait(ctx, timeout, func() error {
		n := 0
		var first string
		for _, m := range f.Clients {
			if !ok(m) {
				if n == 0 {
					first = m.ID
				}
				n++
			}
		}
		if n > 0 {
			return fmt.Errorf("%d of %d clients not %s (first: %s)", n, len(f.Clients), what, first)
		}
		return nil
	})
}
