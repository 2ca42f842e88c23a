package testkit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Freeze sends SIGSTOP to p and waits, up to 5 s, until every thread of it
// has stopped. kill(2) returns once the signal is queued: one thread takes
// it and then stops the others, and on a busy machine the rest run on
// meanwhile, for milliseconds, long enough to answer a request a test sent
// "after" the freeze. Linux only (it reads /proc).
func Freeze(p *os.Process) error {
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP %d: %w", p.Pid, err)
	}
	var err error
	Until(5*time.Second, func() bool {
		err = stopped(p.Pid)
		return err == nil || errors.Is(err, errExited)
	})
	return err
}

// errExited ends a wait for a process that exited instead of stopping.
var errExited = errors.New("exited")

// stopped returns nil when every thread of pid is in the stopped state.
func stopped(pid int) error {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil {
		return err
	}
	if len(stats) == 0 {
		return fmt.Errorf("process %d: no threads under /proc", pid)
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("process %d: %w", pid, err)
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return fmt.Errorf("%s: unexpected %q", f, b)
		}
		switch s := b[i+2]; s {
		case 'T', 't':
		case 'Z', 'X':
			return fmt.Errorf("process %d: %w", pid, errExited)
		default:
			return fmt.Errorf("process %d: thread %s is in state %c, not stopped", pid, filepath.Base(filepath.Dir(f)), s)
		}
	}
	return nil
}
