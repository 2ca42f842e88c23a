// Package ring maps keys (client ids) to node ids on a consistent-hash ring with bounded loads.
// It is pure and deterministic: every process given the same members picks the same owners.
package ring

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"sync"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
	"golang.org/x/sync/singleflight"
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
// move whenever N changes the cap (1.03: 0.6 % collateral). New takes ~14 ms for 10 members and
// grows with members² (the library re-sorts its ring per member): ~210 ms for
// 50 (go test ./pkg/ring -run '^$' -bench New).
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

	mu      sync.Mutex
	reduced map[string]*Ring   // excluded-member bitset → ring without them
	builds  int                // reduced rings built so far
	flight  singleflight.Group // one build per excluded set at a time
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
	if sub := r.cached(key); sub != nil {
		return sub, nil
	}
	v, err, _ := r.flight.Do(key, func() (any, error) {
		if sub := r.cached(key); sub != nil {
			return sub, nil // built by a flight that ended after our look
		}
		kept := make([]string, 0, len(r.members))
		for i, id := range r.members {
			if set[i/8]&(1<<(i%8)) == 0 {
				kept = append(kept, id)
			}
		}
		sub, err := New(kept)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.builds++
		if err != nil {
			return nil, err
		}
		if r.reduced == nil {
			r.reduced = make(map[string]*Ring)
		}
		if len(r.reduced) >= reducedCacheSize {
			for k := range r.reduced {
				delete(r.reduced, k)
				break
			}
		}
		r.reduced[key] = sub
		return sub, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Ring), nil
}

// cached returns the reduced ring for key from the cache, or nil.
func (r *Ring) cached(key string) *Ring {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reduced[key]
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

// member is a ring member as the library sees it. The library names virtual
// nodes name+index, so the name is length-prefixed: otherwise replica 10 of
// "n1" would be replica 0 of "n11".
type member struct {
	name string
	idx  int32
}

func (m member) String() string { return m.name }

type hasher struct{}

func (hasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// newConsistent builds the library's ring of sorted, unique ids. It panics
// when the ids do not fit (see distribute).
func newConsistent(ids []string) *consistent.Consistent {
	ms := make([]consistent.Member, len(ids))
	for i, id := range ids {
		ms[i] = member{name: strconv.Itoa(len(id)) + ":" + id, idx: int32(i)}
	}
	return consistent.New(ms, consistent.Config{
		Hasher:            hasher{},
		PartitionCount:    partitionCount,
		ReplicationFactor: replicationFactor,
		Load:              loadFactor,
	})
}

// distribute returns the owner of every partition, as indexes into ids.
func distribute(ids []string) (owners []int32, err error) {
	n := len(ids)
	// The library panics unless the members' load caps cover every partition.
	if c := math.Ceil(float64(partitionCount/n) * loadFactor); float64(n)*c < partitionCount {
		return nil, fmt.Errorf("ring: %d members exceed the %d partitions' capacity", n, partitionCount)
	}
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("ring: distribute partitions over %d members: %v", n, v)
		}
	}()
	c := newConsistent(ids)
	owners = make([]int32, partitionCount)
	for p := range owners {
		m, ok := c.GetPartitionOwner(p).(member)
		if !ok {
			return nil, fmt.Errorf("ring: partition %d has no owner", p)
		}
		owners[p] = m.idx
	}
	return owners, nil
}
