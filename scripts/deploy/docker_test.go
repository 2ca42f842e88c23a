package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// repoRoot is the directory holding go.mod and docker-compose.yml.
func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "docker-compose.yml")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// run runs a command in dir with extra environment and returns its
// trimmed standard output; a failure carries the command's output.
func run(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// needDocker skips the test when no Docker engine answers, and returns the
// compose command: the docker compose plugin or docker-compose. An engine
// without compose fails the test (scripts/install-test-deps.sh installs it).
func needDocker(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("no docker command: skipping the tests that need a Docker engine")
	}
	// Generous timeouts: docker-compose v1 is a Python program that takes
	// seconds to start on a loaded machine.
	probe := func(name string, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := run(ctx, "", nil, name, args...)
		return err
	}
	if err := probe("docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("no Docker engine answers, skipping the tests that need one: %v", err)
	}
	plugin := probe("docker", "compose", "version")
	if plugin == nil {
		return []string{"docker", "compose"}
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatalf("a Docker engine runs but there is no compose: `docker compose version`: %v; no docker-compose (scripts/install-test-deps.sh installs it)", plugin)
	}
	if err := probe("docker-compose", "version"); err != nil {
		t.Fatalf("docker-compose version: %v", err)
	}
	return []string{"docker-compose"}
}

// buildImages builds the ringcast and Redis images under tags unique to
// this run, removed when the test ends, and returns them.
func buildImages(t *testing.T, root, suffix string) (ringcast, redis string) {
	t.Helper()
	ringcast, redis = "ringcast:test-"+suffix, "ringcast-redis:test-"+suffix
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, b := range []struct{ script, tag string }{{"image.sh", ringcast}, {"redis-image.sh", redis}} {
		start := time.Now()
		out, err := run(ctx, root, nil, filepath.Join(root, "scripts/deploy", b.script), b.tag)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { run(context.Background(), "", nil, "docker", "rmi", "-f", b.tag) })
		t.Logf("built %s in %v", out, time.Since(start).Round(100*time.Millisecond))
	}
	return ringcast, redis
}
