// Package redistest runs throwaway Redis deployments for tests: a
// redis-server, a Redis Cluster, or a primary and replica under
// redis-sentinel; each process on a free loopback port, without
// persistence, killed when the test ends.
package redistest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/testkit"
)

// TB is the part of testing.TB the package uses, so that a program can run
// deployments too (scripts/chaos does): Fatal, Fatalf and Skipf must not
// return (a program may panic), and the Cleanup functions must run when it
// is done with the deployment.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(f func())
	TempDir() string
}

// Server is one redis-server process. Its methods are not safe for
// concurrent use.
type Server struct {
	tb     TB
	bin    string
	dir    string
	port   int
	args   func(s *Server) ([]string, error) // command line after the binary
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

// Start runs redis-server on a free 127.0.0.1 port with --save ” and
// --appendonly no, and stops it in tb.Cleanup. Without redis-server on PATH
// the test is skipped, unless the CI environment variable is set.
func Start(tb TB, args ...string) *Server {
	tb.Helper()
	return launch(tb, "redis-server", func(s *Server) ([]string, error) {
		return append([]string{
			"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", s.dir,
			"--daemonize", "no", "--loglevel", "warning"}, args...), nil
	})
}

// launch starts bin with args on a free port, retrying on a port taken
// meanwhile.
func launch(tb TB, bin string, args func(*Server) ([]string, error)) *Server {
	tb.Helper()
	path := lookPath(tb, bin)
	s := &Server{tb: tb, bin: path, dir: tb.TempDir(), args: args}
	tb.Cleanup(s.Kill)
	for attempt := 0; ; attempt++ {
		s.port = freePort(tb)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 2 {
			tb.Fatal(err)
		}
	}
}

// lookPath finds bin, skipping the test without it unless CI is set.
func lookPath(tb TB, bin string) string {
	tb.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s not found (CI is set): %v", bin, err)
		}
		tb.Skipf("%s not installed (scripts/install-test-deps.sh installs redis-server, redis-sentinel and redis-tools)", bin)
	}
	return path
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Kill stops the server with SIGKILL and waits for it to exit. Killing a
// stopped server does nothing.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a frozen process dies too
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Running reports whether the process runs (it was not killed).
func (s *Server) Running() bool { return s.cmd != nil }

// Restart kills the server if it runs and starts a fresh one, with no data,
// on the same port.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.tb.Fatal(err)
	}
}

// Freeze stops the server with SIGSTOP and returns once it has stopped:
// connections stay open, nothing is answered. Thaw resumes it.
func (s *Server) Freeze() {
	s.tb.Helper()
	if s.cmd == nil {
		s.tb.Fatal("redistest: server is not running")
	}
	if err := testkit.Freeze(s.cmd.Process); err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
}

// Thaw resumes a frozen server with SIGCONT.
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.tb.Helper()
	if s.cmd == nil {
		s.tb.Fatal("redistest: server is not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.tb.Fatalf("redistest: signal %v: %v", sig, err)
	}
}

func (s *Server) start() error {
	s.out = &bytes.Buffer{}
	args, err := s.args(s)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no server outlives a crashed test
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start redis-server: %w", err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(s.exited)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			s.cmd = nil
			return fmt.Errorf("redistest: %s on port %d exited: %s", s.bin, s.port, s.out.String())
		default:
		}
		if ping(s.Addr()) == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("redistest: %s on port %d did not answer PING within 10s: %s", s.bin, s.port, s.out.String())
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func freePort(tb TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
