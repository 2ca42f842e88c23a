//go:build !linux

package park

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// Off Linux nothing parks: every connection waits on a goroutine of its own.

// Spot is a connection's place on a poller: none here.
type Spot struct{}

// Set is the pollers: none here.
type Set struct{}

// New returns nil: no pollers.
func New(time.Duration, *sync.WaitGroup, *zap.Logger) *Set { return nil }

// Pollers is 0.
func (*Set) Pollers() int { return 0 }

// Assign does nothing.
func (*Set) Assign(*Spot) {}

// Park reports false: c waits on a goroutine.
func Park(Conn) bool { return false }

// Kick reports false: nothing is parked.
func Kick(Conn) bool { return false }
