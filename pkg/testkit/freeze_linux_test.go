package testkit

import (
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Freeze returns with every thread of the process stopped, however many
// it has: the Go test binary itself, re-run as a busy child.
func TestFreeze(t *testing.T) {
	if os.Getenv("TESTKIT_SPIN") != "" {
		var spins atomic.Int64
		for range 4 {
			go func() {
				for {
					spins.Add(1)
				}
			}()
		}
		select {}
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestFreeze$")
	cmd.Env = append(os.Environ(), "TESTKIT_SPIN=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	for round := range 3 {
		if err := Freeze(cmd.Process); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := stopped(cmd.Process.Pid); err != nil {
			t.Fatalf("round %d: frozen, yet %v", round, err)
		}
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if !Until(5*time.Second, func() bool { return stopped(cmd.Process.Pid) != nil }) {
			t.Fatalf("round %d: still stopped after SIGCONT", round)
		}
	}
}
