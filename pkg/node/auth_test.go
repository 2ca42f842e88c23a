package node

import (
	"testing"

	"github.com/ringcast/ringcast/pkg/auth"
	"github.com/ringcast/ringcast/pkg/wire"
)

func TestAPIKey(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *Config) { c.Auth = auth.Config{APIKey: "api-key-1"} })
	for _, tc := range []struct {
		path, body, key string
		status          int
	}{
		{"/v1/publish", `{"channel":"room","data":1}`, "", 401},
		{"/v1/publish", `{"channel":"room","data":1}`, "wrong", 401},
		{"/v1/send", `{"client_id":"alice","data":1}`, "", 401},
		{"/v1/publish", `{"channel":"room","data":1}`, "api-key-1", 200},
		{"/v1/send", `{"client_id":"alice","data":1}`, "api-key-1", 200},
	} {
		code, out := n.postKey(t, tc.path, tc.body, tc.key)
		if code != tc.status || (code == 401 && out["code"] != wire.CodeUnauthorized) {
			t.Errorf("POST %s with key %q = %d %v, want %d", tc.path, tc.key, code, out, tc.status)
		}
	}
	if code, _ := n.get(t, "/metrics"); code != 200 {
		t.Error("GET endpoints must stay readable without the API key")
	}
}
