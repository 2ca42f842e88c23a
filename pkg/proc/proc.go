// Package proc is what the balancer and node processes share at their edges:
// main's signal handling and single exit, Run's wait for a stop or a failed part, stoppable Sleep and Every.
package proc

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Main runs run with the process's arguments and environment until SIGINT
// or SIGTERM cancels its context, and exits 1, printing "name: error", when
// it fails. It is the whole of a binary's main.
func Main(name string, run func(ctx context.Context, args []string, env func(string) string, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		stop()
		os.Exit(1)
	}
}

// Wait blocks until ctx is done (a requested stop: nil) or parts, the
// context of the errgroup running the process's parts, is cancelled by a
// failed part: then it logs the part's error and returns it, wrapped with
// who, so the caller shuts the rest down and returns why.
func Wait(ctx, parts context.Context, log *zap.Logger, who string) error {
	select {
	case <-ctx.Done():
		return nil
	case <-parts.Done():
		cause := context.Cause(parts)
		log.Error("part failed, shutting down", zap.Error(cause))
		return fmt.Errorf("%s stopped: %w", who, cause)
	}
}

// Sleep waits for d or until ctx is done, whichever comes first.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Every calls f with 1, 2, 3… once per tick of d until ctx is done. Ticks
// missed while f runs are dropped, never caught up.
func Every(ctx context.Context, d time.Duration, f func(seq int64)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for seq := int64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f(seq)
	}
}
