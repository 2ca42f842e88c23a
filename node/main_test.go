package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestClosedByDefault: a node whose gossip leaves loopback refuses to
// start without -cluster-key, unless -insecure.
func TestClosedByDefault(t *testing.T) {
	base := []string{"-id", "n1", "-addr", "127.0.0.1:0", "-drain", "1ms", "-gossip", "0.0.0.0:0", "-log-level", "error"}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a node that starts stops at once
	for _, tt := range []struct {
		extra []string
		ok    bool
	}{
		{nil, false},
		{[]string{"-insecure"}, true},
		{[]string{"-cluster-key", "secret"}, true},
	} {
		var stderr bytes.Buffer
		err := run(ctx, append(base, tt.extra...), func(string) string { return "" }, &stderr)
		if tt.ok && err != nil {
			t.Errorf("run(%v) = %v, want nil", tt.extra, err)
		}
		if !tt.ok && (err == nil || !strings.Contains(err.Error(), "-cluster-key")) {
			t.Errorf("run(%v) = %v, want an error naming -cluster-key", tt.extra, err)
		}
	}
}
