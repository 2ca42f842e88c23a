package client

import (
	"encoding/json"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/ringcast/ringcast/pkg/wire"
)

// fakeServer speaks just enough of protocol v1 for the client's tests: it
// welcomes, subscribes (with per-channel history and recovery), publishes with
// acks, sends direct messages, answers pings, and can drop, close, go silent
// or inject frames on command.
type fakeServer struct {
	ln  net.Listener
	wg  sync.WaitGroup
	url string

	mu          sync.Mutex
	conns       map[*fakeConn]bool
	heartbeatMS int
	epoch       string
	history     map[string][]wire.Frame // channel → messages, offsets 1..n
	subscribes  []wire.Frame            // every subscribe received, in order
	publishes   int
	pings       int
	publishErr  string       // when set, publishes get an error frame with this code
	noReply     bool         // when set, publishes get no reply
	noWelcome   bool         // when set, new connections get no welcome
	queries     []url.Values // the query of every upgrade, in order
	refreshes   []string     // the token of every refresh, in order
}

type fakeConn struct {
	id     string
	conn   net.Conn
	wmu    sync.Mutex
	silent atomic.Bool
	subs   map[string]bool // guarded by fakeServer.mu
}

func (fc *fakeConn) write(f *wire.Frame) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	fc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = wsutil.WriteServerText(fc.conn, wire.Encode(f))
}

func startServer(t testing.TB) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{
		ln:          ln,
		url:         "ws://" + ln.Addr().String() + "/ws",
		conns:       map[*fakeConn]bool{},
		heartbeatMS: 10000,
		epoch:       "e1",
		history:     map[string][]wire.Frame{},
	}
	s.wg.Go(s.accept)
	t.Cleanup(func() {
		ln.Close()
		s.drop()
		s.wg.Wait()
	})
	return s
}

func (s *fakeServer) accept() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() { s.serve(conn) })
	}
}

func (s *fakeServer) serve(conn net.Conn) {
	defer conn.Close()
	var id string
	u := ws.Upgrader{OnRequest: func(uri []byte) error {
		u, err := url.ParseRequestURI(string(uri))
		if err != nil {
			return err
		}
		id = u.Query().Get("client_id")
		s.mu.Lock()
		s.queries = append(s.queries, u.Query())
		s.mu.Unlock()
		return wire.ValidateClientID(id)
	}}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := u.Upgrade(conn); err != nil {
		return
	}
	conn.SetDeadline(time.Time{}) // reads end when the client or the cleanup closes the connection
	fc := &fakeConn{id: id, conn: conn, subs: map[string]bool{}}
	s.mu.Lock()
	s.conns[fc] = true
	if !s.noWelcome {
		fc.write(&wire.Frame{Op: wire.OpWelcome, ClientID: id, Node: "n1", RingEpoch: wire.Uint64(1), HeartbeatMS: s.heartbeatMS})
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, fc)
		s.mu.Unlock()
	}()
	for {
		b, err := wsutil.ReadClientText(conn)
		if err != nil {
			return
		}
		if fc.silent.Load() {
			continue
		}
		f, err := wire.Decode(b)
		if err != nil {
			fc.write(&wire.Frame{Op: wire.OpError, ID: f.ID, Code: err.(*wire.Error).Code})
			continue
		}
		s.handle(fc, f)
	}
}

func (s *fakeServer) handle(fc *fakeConn, f wire.Frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch f.Op {
	case wire.OpPing:
		s.pings++
		fc.write(&wire.Frame{Op: wire.OpPong})
	case wire.OpSubscribe:
		s.subscribes = append(s.subscribes, f)
		fc.subs[f.Channel] = true
		h := s.history[f.Channel]
		reply := wire.Frame{Op: wire.OpSubscribed, Channel: f.Channel, Epoch: s.epoch, Offset: wire.Uint64(uint64(len(h)))}
		var replay []wire.Frame
		if f.Since != nil {
			ok := f.Since.Epoch == s.epoch && f.Since.Offset <= uint64(len(h))
			reply.Recovered = wire.Bool(ok)
			if ok {
				replay = h[f.Since.Offset:]
			}
		}
		fc.write(&reply)
		for i := range replay {
			fc.write(&replay[i])
		}
	case wire.OpUnsubscribe:
		delete(fc.subs, f.Channel)
		fc.write(&wire.Frame{Op: wire.OpUnsubscribed, Channel: f.Channel})
	case wire.OpPublish:
		s.publishes++
		switch {
		case s.noReply:
		case s.publishErr != "":
			fc.write(&wire.Frame{Op: wire.OpError, ID: f.ID, Code: s.publishErr, Message: "refused"})
		default:
			s.publishLocked(f.Channel, f.Data, fc.id)
			fc.write(&wire.Frame{Op: wire.OpAck, ID: f.ID})
		}
	case wire.OpRefresh:
		s.refreshes = append(s.refreshes, f.Token)
		fc.write(&wire.Frame{Op: wire.OpRefreshed, ID: f.ID, Exp: testExp(f.Token)})
	case wire.OpSend:
		for c := range s.conns {
			if c.id == f.To {
				c.write(&wire.Frame{Op: wire.OpDirect, From: fc.id, Data: f.Data})
			}
		}
		fc.write(&wire.Frame{Op: wire.OpAck, ID: f.ID})
	}
}

// publishLocked appends a message to the channel's history and fans it out.
func (s *fakeServer) publishLocked(channel string, data json.RawMessage, from string) {
	m := wire.Frame{Op: wire.OpMessage, Channel: channel, Data: data, From: from, Epoch: s.epoch,
		Offset: wire.Uint64(uint64(len(s.history[channel]) + 1))}
	s.history[channel] = append(s.history[channel], m)
	for c := range s.conns {
		if c.subs[channel] {
			c.write(&m)
		}
	}
}

// set runs fn with the server's state locked.
func (s *fakeServer) set(fn func(s *fakeServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s)
}

// dropLocked closes every connection without a close frame.
func (s *fakeServer) dropLocked() {
	for c := range s.conns {
		c.conn.Close()
		delete(s.conns, c)
	}
}

func (s *fakeServer) drop() { s.set((*fakeServer).dropLocked) }

// closeWith sends a close frame with code on every connection and waits for
// the client to close it.
func (s *fakeServer) closeWith(code ws.StatusCode) {
	s.set(func(s *fakeServer) {
		for c := range s.conns {
			c.silent.Store(true)
			c.wmu.Lock()
			_ = wsutil.WriteServerMessage(c.conn, ws.OpClose, ws.NewCloseFrameBody(code, ""))
			c.wmu.Unlock()
		}
	})
}

// blackhole makes every current connection stop responding without closing.
func (s *fakeServer) blackhole() {
	s.set(func(s *fakeServer) {
		for c := range s.conns {
			c.silent.Store(true)
		}
	})
}

// inject writes f to every connection.
func (s *fakeServer) inject(f wire.Frame) {
	s.set(func(s *fakeServer) {
		for c := range s.conns {
			c.write(&f)
		}
	})
}

func (s *fakeServer) subscribesCopy() []wire.Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wire.Frame(nil), s.subscribes...)
}

func (s *fakeServer) lastSubscribe() wire.Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.subscribes) == 0 {
		return wire.Frame{}
	}
	return s.subscribes[len(s.subscribes)-1]
}

func (s *fakeServer) count(field *int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *field
}

// testExp reads the exp the client tests put in their tokens ("exp-<unix>").
func testExp(token string) *int64 {
	for i := 0; i+4 <= len(token); i++ {
		if token[i:i+4] == "exp-" {
			var v int64
			for _, ch := range token[i+4:] {
				if ch < '0' || ch > '9' {
					break
				}
				v = v*10 + int64(ch-'0')
			}
			return &v
		}
	}
	return nil
}

func (s *fakeServer) queriesCopy() []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.queries)
}

func (s *fakeServer) refreshesCopy() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.refreshes)
}
