package webclient

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestJSBackoffShortOutage runs client.js under node against a fake
// WebSocket that fails every connect for 1.5 s: with the default backoff
// (ceiling half the outage so far) 99% of 300 clients must be back within
// half an outage of the server's return.
func TestJSBackoffShortOutage(t *testing.T) {
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Skip("needs node:", err)
	}
	const outage, clients = 1500 * time.Millisecond, 300
	js, err := filepath.Abs("client.js")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nodeBin, "testdata/backoff.mjs", "file://"+js, strconv.Itoa(int(outage/time.Millisecond)), strconv.Itoa(clients)).Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var res struct {
		Attempts int     `json:"attempts"`
		Back     []int64 `json:"back"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node printed %q: %v", out, err)
	}
	slices.Sort(res.Back)
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	p50, p99 := ms(res.Back[len(res.Back)/2]), ms(res.Back[len(res.Back)*99/100])
	t.Logf("%d clients, %v outage: back p50 %v p99 %v max %v, %.1f attempts per client",
		clients, outage, p50, p99, ms(res.Back[len(res.Back)-1]), float64(res.Attempts)/clients)
	// Half an outage late at worst, plus timer slack of a loaded machine.
	if p99 > outage*3/2+200*time.Millisecond {
		t.Errorf("p99 %v after a %v outage, want at most %v", p99, outage, outage*3/2+200*time.Millisecond)
	}
	if perClient := float64(res.Attempts) / clients; perClient > 20 {
		t.Errorf("%.1f attempts per client in %v: the backoff does not back off", perClient, outage)
	}
}
