package outbound

import (
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// fixedMaxOutbound is the outbound budget of a process with no memory
// limit: 128 connections at their full 4 MiB queue.
const fixedMaxOutbound = 512 << 20

// DefaultMaxOutbound is the default node-wide outbound budget: a quarter
// of the process's memory limit (the smaller of GOMEMLIMIT and its memory
// cgroup's), or 512 MiB when it has none. A quarter leaves room for the
// garbage collector's headroom, the kernel's socket buffers and everything
// else a node holds. It says where the figure came from.
func DefaultMaxOutbound() (int64, string) {
	limit, from := memoryLimit("/proc/self/cgroup", "/sys/fs/cgroup")
	if soft := debug.SetMemoryLimit(-1); soft != math.MaxInt64 && (limit == 0 || soft < limit) {
		limit, from = soft, "GOMEMLIMIT"
	}
	if limit <= 0 {
		return fixedMaxOutbound, "fixed default (no memory limit)"
	}
	return max(limit/4, 1<<20), "a quarter of the " + from + " memory limit " + strconv.FormatInt(limit, 10)
}

// memoryLimit reads the memory limit of the cgroup the process is in (the
// smallest along its path to the root): cgroup v1 memory.limit_in_bytes
// when the memory controller is mounted as v1, else v2 memory.max. procFile
// is /proc/self/cgroup, root the cgroup mount point. 0 = no limit found.
func memoryLimit(procFile, root string) (int64, string) {
	b, err := os.ReadFile(procFile)
	if err != nil {
		return 0, ""
	}
	v1, v2 := "", ""
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case strings.Contains(","+parts[1]+",", ",memory,"):
			v1 = parts[2]
		}
	}
	if v1 != "" {
		return smallest(path.Join(root, "memory"), v1, "memory.limit_in_bytes"), "cgroup v1"
	}
	if v2 != "" {
		return smallest(root, v2, "memory.max"), "cgroup v2"
	}
	return 0, ""
}

// smallest is the smallest limit in file along dir from mount/dir up to
// mount. Inside a container the process's path may not exist under the
// mount (a cgroup namespace shows the container's own cgroup as the
// mount's root): then the mount's own file counts.
func smallest(mount, dir, file string) int64 {
	var limit int64
	for d := path.Clean("/" + dir); ; d = path.Dir(d) {
		if n := readLimit(path.Join(mount, d, file)); n > 0 && (limit == 0 || n < limit) {
			limit = n
		}
		if d == "/" {
			return limit
		}
	}
}

// readLimit parses a limit file: a byte count, "max" or a v1 "unlimited"
// (a page-rounded 2^63-1) read as none (0).
func readLimit(file string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0
	}
	return n
}
