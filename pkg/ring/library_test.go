package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

// member is a ring member as the library sees it (see distribute).
type member struct {
	name string
	idx  int32
}

func (m member) String() string { return m.name }

type hasher struct{}

func (hasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// newConsistent builds the library's ring of sorted, unique ids: the
// reference distribute must agree with.
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

// libraryOwners is the owner of every partition as the library places it.
func libraryOwners(t *testing.T, ids []string) []int32 {
	t.Helper()
	c := newConsistent(ids)
	owners := make([]int32, partitionCount)
	for p := range owners {
		m, ok := c.GetPartitionOwner(p).(member)
		if !ok {
			t.Fatalf("library: partition %d has no owner", p)
		}
		owners[p] = m.idx
	}
	return owners
}

// distribute must place every partition exactly where the library does, or
// processes built from different versions would route clients differently.
func TestDistributeMatchesLibrary(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	sets := [][]string{
		{"n1"}, {"n1", "n2"}, {"n1", "n2", "n3"}, {"n1", "n10", "n11", "n2", "n3"},
		{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"},
		{"10.0.1.1:7946", "10.0.1.2:7946", "10.0.1.3:7946", "10.0.1.4:7946"},
	}
	for range 12 { // random ids and sizes up to 16
		n := 1 + rng.IntN(16)
		var ids []string
		for len(ids) < n {
			id := fmt.Sprintf("node-%x", rng.Uint32())
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		sets = append(sets, ids)
	}
	for _, ids := range sets {
		ids = slices.Sorted(slices.Values(ids))
		got, err := distribute(ids)
		if err != nil {
			t.Fatalf("distribute(%q): %v", ids, err)
		}
		want := libraryOwners(t, ids)
		for p := range want {
			if got[p] != want[p] {
				t.Fatalf("distribute(%q): partition %d owned by %q, library says %q", ids, p, ids[got[p]], ids[want[p]])
			}
		}
	}
}

// BenchmarkLibraryNew builds the library's ring, for comparison with
// BenchmarkNew.
func BenchmarkLibraryNew(b *testing.B) {
	for _, n := range []int{3, 10} {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("n%d", i+1)
		}
		ids = slices.Sorted(slices.Values(ids))
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			for b.Loop() {
				newConsistent(ids)
			}
		})
	}
}
