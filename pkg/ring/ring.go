// Package ring maps keys (client ids) to node ids on a consistent-hash ring with bounded loads.
// It is pure and deterministic: every process given the same members picks the same owners.
package ring

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// Ring parameters, shared by every process: changing any of them (or the
// consistent version) moves keys between nodes. Chosen by measurement over
// N = 3…10 members and 100,000 keys, worst case over every member leaving and
// three joining, for ids n1… and 10.0.1.1:7946… (go test ./pkg/ring -run
// TestMovementTable -v):
//
//	keys moved by one leave or join       ≤ 1.074 × the ideal 1/N  (target 1.1)
//	of those, moved between staying ones  ≤ 0.22 % of all keys     (target 0.5 %)
//	max/avg keys per member               ≤ 1.074                  (target 1.15)
//
// The library defaults (271, 20, 1.25) give 1.64 × 1/N, 4.6 % and 1.27 at N=10.
// With 1000 virtual nodes and 16k partitions some ids already get shares past
// 1.1/N; a tighter load bound spills more partitions to neighbours, and spills
// move whenever N changes the cap (1.03: 0.6 % collateral). New places keys as
// github.com/buraksezer/consistent v0.10.0 does with these parameters (see
// distribute) for a third to a tenth of its CPU: 3.9, 7.0 and 37 ms for 3, 10
// and 50 members against the library's 12, 31 and 415 ms (CPU time; go test
// ./pkg/ring -run '^$' -bench New compares them on a quiet machine).
const (
	// partitionCount is the number of slots keys hash into (a prime). Fewer
	// make shares coarser; each costs ~0.3 µs in New.
	partitionCount = 15991
	// replicationFactor is the number of virtual nodes per member. Share
	// spread is ~1/√replicationFactor; each costs ~0.8 µs per member in New.
	replicationFactor = 1500
	// loadFactor caps a member at ⌈⌊partitionCount/N⌋ × loadFactor⌉
	// partitions. Lower caps the largest share harder but makes more
	// partitions spill to a neighbour, and spills move when N changes.
	loadFactor = 1.07
	// reducedCacheSize bounds the reduced rings a Ring keeps for
	// OwnerExcluding (~64 KB each).
	reducedCacheSize = 16
)

// ErrNoNodes is returned when a ring would have no members.
var ErrNoNodes = errors.New("ring: no nodes")

// Ring assigns keys to members. It is immutable after New and safe for
// concurrent use.
type Ring struct {
	members []string // sorted, unique
	owners  []int32  // partition → index into members

	mu       sync.Mutex
	reduced  map[string]*Ring    // excluded-member bitset → ring without them
	building map[string]*pending // excluded-member bitset → its ring being built
	builds   int                 // reduced rings built so far
}

// pending is a reduced ring one caller builds while others wait for it.
type pending struct {
	done chan struct{} // closed once ring or err is set
	ring *Ring
	err  error
}

// New builds the ring of the given member ids (order-independent, duplicates
// ignored). It returns ErrNoNodes if members is empty.
func New(members []string) (*Ring, error) {
	ids := slices.Compact(slices.Sorted(slices.Values(members)))
	if len(ids) == 0 {
		return nil, ErrNoNodes
	}
	if ids[0] == "" {
		return nil, errors.New("ring: empty member id")
	}
	owners, err := distribute(ids)
	if err != nil {
		return nil, err
	}
	return &Ring{members: ids, owners: owners}, nil
}

// Owner returns the member that owns key.
func (r *Ring) Owner(key string) string {
	if len(r.owners) == 0 {
		return ""
	}
	return r.members[r.owners[xxhash.Sum64String(key)%partitionCount]]
}

// OwnerExcluding returns the owner key would have if the excluded members
// were not in the ring: the same as New(members minus excluded).Owner(key).
// Ids that are not members are ignored. It returns ErrNoNodes if every member
// is excluded. The first call for a set of excluded members builds its ring
// (as costly as New) while concurrent calls for the same set wait for that
// build; later calls reuse it from a bounded cache.
func (r *Ring) OwnerExcluding(key string, excluded ...string) (string, error) {
	var set []byte
	n := 0
	for _, id := range excluded {
		i, ok := slices.BinarySearch(r.members, id)
		if !ok {
			continue
		}
		if set == nil {
			set = make([]byte, (len(r.members)+7)/8)
		}
		set[i/8] |= 1 << (i % 8)
	}
	for _, b := range set {
		n += bits.OnesCount8(b)
	}
	switch {
	case n == len(r.members):
		return "", ErrNoNodes
	case n == 0:
		return r.Owner(key), nil
	}
	sub, err := r.without(set)
	if err != nil {
		return "", err
	}
	return sub.Owner(key), nil
}

// without returns the ring of the members not in set, from the cache if it
// holds it. One caller builds a missing ring; the others asking for the
// same set meanwhile wait for it: a node's failure sends all of its clients
// to this fallback at once, and as many identical builds sharing the CPU
// would finish together, each as late as all of them.
func (r *Ring) without(set []byte) (*Ring, error) {
	key := string(set)
	r.mu.Lock()
	if sub, ok := r.reduced[key]; ok {
		r.mu.Unlock()
		return sub, nil
	}
	if p, ok := r.building[key]; ok {
		r.mu.Unlock()
		<-p.done
		return p.ring, p.err
	}
	p := &pending{done: make(chan struct{})}
	if r.building == nil {
		r.building = make(map[string]*pending)
	}
	r.building[key] = p
	r.builds++
	r.mu.Unlock()

	kept := make([]string, 0, len(r.members))
	for i, id := range r.members {
		if set[i/8]&(1<<(i%8)) == 0 {
			kept = append(kept, id)
		}
	}
	p.ring, p.err = New(kept)

	r.mu.Lock()
	delete(r.building, key)
	if p.err == nil {
		if r.reduced == nil {
			r.reduced = make(map[string]*Ring)
		}
		if len(r.reduced) >= reducedCacheSize {
			for k := range r.reduced {
				delete(r.reduced, k)
				break
			}
		}
		r.reduced[key] = p.ring
	}
	r.mu.Unlock()
	close(p.done)
	return p.ring, p.err
}

// Members returns the member ids, sorted.
func (r *Ring) Members() []string { return slices.Clone(r.members) }

// Len returns the number of members.
func (r *Ring) Len() int { return len(r.members) }

// Has reports whether id is a member.
func (r *Ring) Has(id string) bool {
	_, ok := slices.BinarySearch(r.members, id)
	return ok
}

// distribute returns the owner of every partition, as indexes into ids
// (sorted, unique): the placement of github.com/buraksezer/consistent v0.10.0
// with this package's parameters, computed the way the library does it
// but without its maps and per-partition allocations, at a quarter of its
// CPU (a fallback ring is built while a dead node's clients wait for it).
// TestDistributeMatchesLibrary holds the two to the same output.
//
// The library names member i's virtual node r "<name><r>", where name is
// the id length-prefixed (otherwise replica 10 of "n1" would be replica 0
// of "n11"), hashes it with xxhash onto the ring (on equal hashes the member
// added last wins), and gives partition p, hashed from its 8 little-endian
// bytes, to the first virtual node at or after it whose member holds fewer
// than ⌈⌊partitionCount/n⌋ × loadFactor⌉ partitions, walking on (and
// around) past full members.
func distribute(ids []string) ([]int32, error) {
	n := len(ids)
	capacity := math.Ceil(float64(partitionCount/n) * loadFactor)
	if float64(n)*capacity < partitionCount {
		return nil, fmt.Errorf("ring: %d members exceed the %d partitions' capacity", n, partitionCount)
	}
	type vnode struct {
		h uint64
		m int32
	}
	vs := make([]vnode, 0, n*replicationFactor)
	var name []byte
	for i, id := range ids {
		name = append(strconv.AppendInt(name[:0], int64(len(id)), 10), ':')
		name = append(name, id...)
		k := len(name)
		for r := range replicationFactor {
			vs = append(vs, vnode{h: xxhash.Sum64(strconv.AppendInt(name[:k], int64(r), 10)), m: int32(i)})
		}
	}
	slices.SortFunc(vs, func(a, b vnode) int { return cmp.Or(cmp.Compare(a.h, b.h), cmp.Compare(a.m, b.m)) })
	hashes := make([]uint64, len(vs))
	holder := make([]int32, len(vs))
	for j := len(vs) - 1; j >= 0; j-- {
		hashes[j], holder[j] = vs[j].h, vs[j].m
		if j+1 < len(vs) && vs[j+1].h == vs[j].h {
			holder[j] = holder[j+1] // the library's ring map keeps the last member's
		}
	}
	limit := int(capacity)
	loads := make([]int, n)
	owners := make([]int32, partitionCount)
	var key [8]byte
	for p := range owners {
		binary.LittleEndian.PutUint64(key[:], uint64(p))
		i, _ := slices.BinarySearch(hashes, xxhash.Sum64(key[:]))
		for tries := 1; ; tries++ {
			if tries >= len(hashes) {
				// The library panics here; the capacity check above
				// rules it out.
				return nil, fmt.Errorf("ring: no room for partition %d over %d members", p, n)
			}
			if i >= len(hashes) {
				i = 0
			}
			if m := holder[i]; loads[m] < limit {
				owners[p] = m
				loads[m]++
				break
			}
			i++
		}
	}
	return owners, nil
}
