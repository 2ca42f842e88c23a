package balancer

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestBinaryLinksNoNodeSide keeps the balancer binary free of the node's
// side: it relays bytes and never parses a frame, so it links no session,
// hub or bridge, and neither Redis's client nor the WebSocket library.
func TestBinaryLinksNoNodeSide(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool: %v", err)
	}
	out, err := exec.Command(gobin, "list", "-deps", "github.com/ringcast/ringcast/balancer").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps ./balancer: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/ringcast/ringcast/pkg/node",
		"github.com/ringcast/ringcast/pkg/session",
		"github.com/ringcast/ringcast/pkg/hub",
		"github.com/ringcast/ringcast/pkg/bridge",
		"github.com/redis/go-redis",
		"github.com/gobwas/",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 || !slices.Contains(deps, "github.com/ringcast/ringcast/pkg/balancer") {
		t.Fatalf("go list -deps ./balancer listed %d packages without pkg/balancer: %q", len(deps), out)
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("the balancer links %s", d)
			}
		}
	}
}
