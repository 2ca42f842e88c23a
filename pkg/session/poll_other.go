//go:build !linux

package session

// Off Linux every connection waits on a goroutine of its own.

type pollers struct{}

type poller struct{}

func newPollers(*Upgrader) *pollers { return nil }

func (*pollers) pick() *poller { return nil }

func (*poller) add(*Conn) bool { return false }

func (*poller) kick(*Conn) {}
