//go:build !linux

package testkit

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// Freeze needs /proc to tell when a SIGSTOPped process has stopped: Linux only.
func Freeze(p *os.Process) error {
	return fmt.Errorf("testkit.Freeze on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
