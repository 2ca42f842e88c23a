package node

import (
	"context"
	"net/http"
	"time"
)

// Healthy reports whether the node serving HTTP at addr answers GET /healthz
// with 200 within timeout. Balancers and peers use it to tell a node that
// crashed or froze from one gossip merely lost track of.
func Healthy(ctx context.Context, c *http.Client, addr string, timeout time.Duration) bool {
	if addr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
