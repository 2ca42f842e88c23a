package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ringcast/ringcast/pkg/clustertest"
)

// stopTimeout is how long a child has to exit after SIGTERM before SIGKILL.
const stopTimeout = 5 * time.Second

// child is a process this run started. stop ends it and waits for it.
type child struct {
	name  string
	cmd   *exec.Cmd
	lines chan string   // stdout lines; closed at EOF (nil when stdout is not read)
	done  chan struct{} // closed once the process has been reaped
	err   error         // Wait's result, valid after done
	clean func()        // runs after the process was reaped, before done closes
}

// startChild starts path with args; its stdout is read line by line, its
// stderr goes to ours. It dies with us (SIGTERM on our exit).
func startChild(ctx context.Context, name, path string, args ...string) (*child, error) {
	c := &child{name: name, cmd: exec.Command(path, args...), lines: make(chan string, 16), done: make(chan struct{})}
	c.cmd.Stderr = os.Stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go c.wait(out)
	return c, nil
}

// wait reads stdout to EOF, then reaps the process.
func (c *child) wait(out io.Reader) {
	if out != nil {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody asked for it
			}
		}
		close(c.lines)
	}
	c.err = c.cmd.Wait()
	if c.clean != nil {
		c.clean()
	}
	close(c.done)
}

// line returns the child's next stdout line, waiting at most timeout (0: as
// long as ctx allows).
func (c *child) line(ctx context.Context, timeout time.Duration) (string, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	select {
	case l, ok := <-c.lines:
		if !ok {
			<-c.done
			return "", fmt.Errorf("%s exited: %v", c.name, c.err)
		}
		return l, nil
	case <-ctx.Done():
		return "", fmt.Errorf("wait for %s: %w", c.name, ctx.Err())
	}
}

func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(stopTimeout):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// startNginx runs nginx in front of backends from a fresh temp dir and
// returns it once it accepts connections, with its address and version.
func startNginx(ctx context.Context, bin string, backends []string, conns int) (*child, string, string, error) {
	out, err := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
	if err != nil {
		return nil, "", "", fmt.Errorf("nginx -v: %w: %s", err, out)
	}
	version := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version:"))
	removeStale()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("benchproxy-nginx-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, "", "", err
	}
	addr, err := freeAddr()
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", "", err
	}
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "    server %s;\n", b)
	}
	// Each worker may hold every connection twice (client and upstream).
	conf := fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections %[2]d; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream nodes {
    hash $arg_client_id consistent;
%[3]s  }
  server {
    listen %[4]s;
    location /ws {
      proxy_pass http://nodes;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
    }
  }
}
`, dir, min(2*conns+256, 19000), servers.String(), addr)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, "", "", err
	}
	c := &child{name: "nginx", done: make(chan struct{}), clean: func() { os.RemoveAll(dir) },
		cmd: exec.Command(bin, "-p", dir, "-c", confPath, "-e", "stderr", "-g", "daemon off;")}
	if err := c.startServer(ctx, addr); err != nil {
		return nil, "", "", err
	}
	return c, addr, version, nil
}

// startServer starts c, a server whose stdout is not read, and waits until
// it accepts connections on addr; c.clean runs when it does not start.
func (c *child) startServer(ctx context.Context, addr string) error {
	c.cmd.Stderr = os.Stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // a master stops its workers
	if err := c.cmd.Start(); err != nil {
		c.clean()
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	go c.wait(nil)
	return c.listening(ctx, addr)
}

// listening waits until c accepts connections on addr; on failure c is
// stopped.
func (c *child) listening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited: %v (see its messages above)", c.name, c.err)
		case <-ctx.Done():
			c.stop()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop()
			return fmt.Errorf("%s did not listen within 10s", c.name)
		}
	}
}

// startHAProxy runs HAProxy in front of backends, hashing client_id on a
// consistent ring as nginx and the relay do, and returns it once it accepts
// connections, with its address and version.
func startHAProxy(ctx context.Context, bin string, backends []string, conns int) (*child, string, string, error) {
	out, err := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
	if err != nil {
		return nil, "", "", fmt.Errorf("haproxy -v: %w: %s", err, out)
	}
	version := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	version = strings.TrimPrefix(version, "HAProxy version ")
	if i := strings.IndexByte(version, ' '); i > 0 {
		version = "HAProxy " + version[:i]
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "  server n%d %s\n", i+1, b)
	}
	conf := fmt.Sprintf(`global
  maxconn %[1]d
  nbthread %[2]d
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend ws
  bind %[3]s
  default_backend nodes
backend nodes
  balance url_param client_id
  hash-type consistent
%[4]s`, min(2*conns+256, 19000), runtime.NumCPU(), addr, servers.String())
	f, err := os.CreateTemp("", "benchproxy-haproxy-*.cfg")
	if err != nil {
		return nil, "", "", err
	}
	path := f.Name()
	if _, err := f.WriteString(conf); err != nil {
		f.Close()
		os.Remove(path)
		return nil, "", "", err
	}
	f.Close()
	c := &child{name: "haproxy", done: make(chan struct{}), clean: func() { os.Remove(path) },
		cmd: exec.Command(bin, "-db", "-f", path)}
	if err := c.startServer(ctx, addr); err != nil {
		return nil, "", "", err
	}
	return c, addr, version, nil
}

// removeStale deletes the nginx dirs of earlier runs that were killed.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "benchproxy-nginx-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(d[strings.LastIndexByte(d, '-')+1:])
		if err == nil && syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// cpuTime returns the user+system CPU time of pid and its child processes
// (nginx workers), from /proc.
func cpuTime(pid int) time.Duration {
	total := clustertest.CPUTime(pid)
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, k := range strings.Fields(string(kids)) {
		if kid, err := strconv.Atoi(k); err == nil {
			total += cpuTime(kid)
		}
	}
	return total
}
