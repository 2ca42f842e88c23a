package session

import (
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"sync"
)

// Client messages that have to wait for more bytes are read into pages of
// one region of MaxUnfinished bytes reserved at start (region_linux.go maps
// it outside the Go heap). The region is the budget: its pages are charged
// before they are taken, so what unfinished messages cost in resident
// memory can never pass it, and no garbage collector headroom or
// allocation rounding comes on top. A complete message is copied into one
// heap slice for handling and its pages go back, their memory to the
// kernel: a free page is never resident, so it is never uncounted.
// Messages whose bytes were all read already never come here (conn.go).
const (
	pageSize = 4096
	// readerState is what a connection in the middle of a message holds
	// besides its pages: its goroutine's stack (4–5 KiB each measured,
	// go_memstats_stack_inuse_bytes with 400 such readers in pkg/e2e
	// TestTrickledMessagesWithinBudget), its small state, and its read
	// buffer while it has bytes; rounded up.
	readerState = 8 << 10
)

// readerCost is what the budget is charged per connection in the middle
// of a message, with its first page: readerState and the collector's
// headroom for it, since stacks count towards the heap goal (at GOGC=100
// each byte of them lets a byte of garbage wait for the next collection).
var readerCost = sync.OnceValue(func() int64 {
	pct := debug.SetGCPercent(-1) // reads the setting; restored at once
	debug.SetGCPercent(pct)
	if pct < 0 {
		return readerState // GOGC=off: the memory limit paces the collector
	}
	return readerState * (100 + int64(pct)) / 100
})

// region is the page allocator. Safe for concurrent use.
type region struct {
	mem  []byte
	mu   sync.Mutex
	next int32   // pages from next on were never taken
	free []int32 // pages taken and returned: as long as the most ever taken at once
}

// newRegion reserves size bytes rounded down to whole pages; the mapping
// is released when the region is unreachable.
func newRegion(size int64) (*region, error) {
	n := int(size / pageSize)
	if n > math.MaxInt32 {
		return nil, fmt.Errorf("session: %d bytes for unfinished messages is more than %d pages", size, math.MaxInt32)
	}
	mem, err := mapRegion(n * pageSize)
	if err != nil {
		return nil, fmt.Errorf("session: map %d bytes for unfinished messages: %w", n*pageSize, err)
	}
	r := &region{mem: mem}
	if len(r.mem) > 0 {
		runtime.AddCleanup(r, unmapRegion, r.mem)
	}
	return r, nil
}

// get returns a free page, or -1 if there is none (its caller charged the
// budget first, so there always is).
func (r *region) get() int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.free) == 0 {
		if int(r.next) == len(r.mem)/pageSize {
			return -1
		}
		r.next++
		return r.next - 1
	}
	p := r.free[len(r.free)-1]
	r.free = r.free[:len(r.free)-1]
	return p
}

// page is page p's memory.
func (r *region) page(p int32) []byte {
	return r.mem[int(p)*pageSize : (int(p)+1)*pageSize : (int(p)+1)*pageSize]
}

// put returns pages and gives their memory back to the kernel. The caller
// holds no slice of them any more.
func (r *region) put(pages []int32) {
	for _, p := range pages {
		releasePage(r.page(p))
	}
	r.mu.Lock()
	r.free = append(r.free, pages...)
	r.mu.Unlock()
}
