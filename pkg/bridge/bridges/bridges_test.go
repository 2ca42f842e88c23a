package bridges

import (
	"strings"
	"testing"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/bridge/mesh"
	"github.com/ringcast/ringcast/pkg/bridge/redis"
)

var recv = bridge.Receiver{Deliver: func(bridge.Message) {}, DeliverDirect: func(bridge.Direct) bool { return false }}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // type name, or an error substring after "error: "
	}{
		{"default is the mesh", Config{NodeID: "n1"}, "mesh"},
		{"mesh", Config{Spec: "mesh", NodeID: "n1"}, "mesh"},
		{"redis", Config{Spec: "redis://127.0.0.1:1/0", NodeID: "n1", HistorySize: 10}, "redis"},
		{"rediss", Config{Spec: "rediss://127.0.0.1:1", NodeID: "n1"}, "redis"},
		{"redis cluster", Config{Spec: "redis+cluster://127.0.0.1:1,127.0.0.1:2", NodeID: "n1", HistorySize: 10}, "redis"},
		{"redis sentinel", Config{Spec: "redis+sentinel://127.0.0.1:1/main", NodeID: "n1"}, "redis"},
		{"bad sentinel", Config{Spec: "redis+sentinel://127.0.0.1:1", NodeID: "n1"}, "error: master name"},
		{"unknown", Config{Spec: "nats://x", NodeID: "n1"}, "error: unknown -bridge"},
		{"history on the mesh", Config{Spec: "mesh", NodeID: "n1", HistorySize: 1}, "error: -history-size needs"},
		{"no node id", Config{Spec: "mesh"}, "error: ID is required"},
	} {
		b, err := New(tc.cfg, recv)
		var got string
		switch b.(type) {
		case *mesh.Mesh:
			got = "mesh"
		case *redis.Bridge:
			got = "redis"
		}
		if err != nil {
			if b != nil {
				t.Errorf("%s: New = %v with error %v, want a nil bridge", tc.name, b, err)
			}
			got = "error: " + err.Error()
		}
		if !strings.HasPrefix(got, tc.want) && !(strings.HasPrefix(tc.want, "error: ") && strings.Contains(got, strings.TrimPrefix(tc.want, "error: "))) {
			t.Errorf("%s: New(%+v) = %s, want %s", tc.name, tc.cfg, got, tc.want)
		}
	}
}
