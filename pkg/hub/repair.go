package hub

import (
	"context"
	"errors"
	"sync"

	"github.com/ringcast/ringcast/pkg/wire"
)

// ErrLost is returned by Subscribe when the bridge lost messages while the
// subscription was being set up: the caller closes the connection (1012)
// and the client recovers on its next one.
var ErrLost = errors.New("bridge lost messages during the subscribe")

// repairParallel bounds the history reads Repair runs at once.
const repairParallel = 8

// Repaired says what Repair did.
type Repaired struct {
	Channels int    // channels whose gap history filled
	Told     int    // subscriptions told recovered:false: history could not fill the gap
	Messages int    // messages sent from history
	Close    []Sink // subscribed to a channel without history (or whose history failed): the caller closes them
}

// Repair refills, from history, what the bridge may have dropped for every
// local subscription after the bridge lost messages (its subscriber
// connection broke). The bridge delivers nothing new until Repair returns,
// so refilled and live messages cannot cross. Each subscription with a
// position receives what it missed, in order and without duplicates; one
// whose gap history cannot fill is sent an unsolicited subscribed frame
// {recovered: false} with the channel's current position and goes on from
// there. Subscriptions being set up fail with ErrLost.
func (h *Hub) Repair(ctx context.Context) Repaired {
	type target struct {
		s Sink
		m *member
	}
	type group struct {
		channel string
		since   wire.Position // the earliest position of its members
		members []target
	}
	var out Repaired
	closing := map[Sink]bool{}
	var groups []*group
	h.mu.RLock()
	for name, ch := range h.channels {
		byEpoch := map[string]*group{}
		for _, m := range ch.members {
			s := m.s
			m.mu.Lock()
			switch {
			case !m.live():
				m.rec.lost = true
			case m.pos().Epoch == "":
				closing[s] = true
			default:
				last := m.pos()
				g := byEpoch[last.Epoch]
				if g == nil {
					g = &group{channel: name, since: last}
					byEpoch[last.Epoch] = g
					groups = append(groups, g)
				}
				g.since.Offset = min(g.since.Offset, last.Offset)
				g.members = append(g.members, target{s, m})
			}
			m.mu.Unlock()
		}
	}
	h.mu.RUnlock()

	var mu sync.Mutex // guards out and closing
	var wg sync.WaitGroup
	sem := make(chan struct{}, repairParallel)
	for _, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			backlog, top, recovered, err := h.br.History(ctx, g.channel, &g.since)
			frames := make([][]byte, len(backlog)) // encoded once, shared by the group
			for i, msg := range backlog {
				frames[i] = messageFrame(msg)
			}
			h.mu.RLock()
			defer h.mu.RUnlock()
			told, sent := 0, 0
			for _, t := range g.members {
				if t.m.gone() {
					continue // left meanwhile
				}
				if err != nil {
					mu.Lock()
					closing[t.s] = true
					mu.Unlock()
					continue
				}
				t.m.mu.Lock()
				if recovered {
					for i, msg := range backlog {
						if one, _ := t.m.send(t.s, msg, frames[i]); one {
							sent++
						}
					}
				} else if top != t.m.pos() {
					t.s.Send(wire.Encode(&wire.Frame{Op: wire.OpSubscribed, Channel: g.channel,
						Recovered: wire.Bool(false), Epoch: top.Epoch, Offset: wire.Uint64(top.Offset)}))
					t.m.setPos(top)
					told++
				}
				t.m.mu.Unlock()
			}
			mu.Lock()
			out.Messages += sent
			out.Told += told
			if err == nil && recovered {
				out.Channels++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for s := range closing {
		out.Close = append(out.Close, s)
	}
	return out
}
