package probe

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRun(t *testing.T) {
	ready := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready {
			http.Error(w, `{"code":"not_ready"}`, http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := Run(ctx, []string{srv.URL + "/readyz"}); err != nil {
		t.Errorf("Run(ready) = %v, want nil", err)
	}
	ready = false
	if err := Run(ctx, []string{srv.URL + "/readyz"}); err == nil {
		t.Error("Run(not ready) = nil, want an error")
	}
	srv.Close()
	for _, args := range [][]string{{srv.URL}, nil, {"a", "b"}, {"::bad"}} {
		if err := Run(ctx, args); err == nil {
			t.Errorf("Run(%q) = nil, want an error", args)
		}
	}
}
