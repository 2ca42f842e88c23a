package outbound

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemoryLimit(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(name, s string) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("v1/proc", "9:pids:/\n4:memory:/a/b\n0::/\n")
	write("v1/fs/memory/a/b/memory.limit_in_bytes", "104857600\n")
	write("v1/fs/memory/a/memory.limit_in_bytes", "9223372036854771712\n")
	write("v2/proc", "0::/k/pod\n")
	write("v2/fs/k/pod/memory.max", "max\n")
	write("v2/fs/k/memory.max", "209715200\n")
	write("ns/proc", "0::/not/here\n") // a cgroup namespace: the mount is the container's own
	write("ns/fs/memory.max", "52428800\n")
	write("none/proc", "0::/x\n")
	write("none/fs/x/memory.max", "max\n")
	for _, tt := range []struct {
		dir  string
		want int64
		from string
	}{
		{"v1", 100 << 20, "cgroup v1"},
		{"v2", 200 << 20, "cgroup v2"}, // the parent's limit binds
		{"ns", 50 << 20, "cgroup v2"},
		{"none", 0, "cgroup v2"},
		{"missing", 0, ""},
	} {
		got, from := memoryLimit(filepath.Join(root, tt.dir, "proc"), filepath.Join(root, tt.dir, "fs"))
		if got != tt.want || from != tt.from {
			t.Errorf("%s: memoryLimit = %d (%s), want %d (%s)", tt.dir, got, from, tt.want, tt.from)
		}
	}
}
