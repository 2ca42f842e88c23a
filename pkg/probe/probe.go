// Package probe is the health check a container runs inside the image: a
// FROM scratch image has no shell and no curl, so each binary answers
// `<binary> healthcheck URL` by asking its own /readyz or /healthz.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Command is the first argument that selects the probe instead of a server.
const Command = "healthcheck"

// timeout bounds the whole probe; the container runtime has its own too.
const timeout = 3 * time.Second

// Run GETs the one URL in args and returns nil when it answers 200.
func Run(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: healthcheck http://127.0.0.1:PORT/readyz")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck %s: %s %s", args[0], resp.Status, body)
	}
	return nil
}
