package ring

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Targets from DESIGN.md §9, for N = 3…10.
const (
	maxMovedRatio = 1.1   // keys moved by one leave or join, relative to 1/N
	maxCollateral = 0.005 // keys moved between members that stay, fraction of all keys
	maxLoadRatio  = 1.15  // keys on the busiest member / mean keys per member
)

// placement is the owner of every test key on one ring.
type placement struct {
	n      int // members
	owners []string
}

// movement is the worst case of one member leaving or joining.
type movement struct {
	ratio      float64 // moved fraction × N
	collateral float64 // fraction of keys moved between two other members
}

func (m *movement) add(from, to placement, changed string) {
	moved, collateral := 0, 0
	for i, a := range from.owners {
		if b := to.owners[i]; a != b {
			moved++
			if a != changed && b != changed {
				collateral++
			}
		}
	}
	keys := float64(len(from.owners))
	m.ratio = max(m.ratio, float64(moved)/keys*float64(max(from.n, to.n)))
	m.collateral = max(m.collateral, float64(collateral)/keys)
}

// loadRatio returns the keys on the busiest member over the mean.
func (p placement) loadRatio() float64 {
	load := map[string]int{}
	for _, o := range p.owners {
		load[o]++
	}
	busiest := 0
	for _, v := range load {
		busiest = max(busiest, v)
	}
	return float64(busiest) * float64(p.n) / float64(len(p.owners))
}

// TestMovementTable measures, for N = 3…10, the keys that move when one of N
// members leaves (each in turn) and when one joins N-1 (three candidates), and
// the balance of N members; it logs the table and checks the targets, for two
// styles of member id.
func TestMovementTable(t *testing.T) {
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("client-%d", i)
	}
	for _, scheme := range []struct{ name, format string }{
		{"short", "n%d"},
		{"addr", "10.0.1.%d:7946"},
	} {
		t.Run(scheme.name, func(t *testing.T) {
			ids := make([]string, 12)
			for i := range ids {
				ids[i] = fmt.Sprintf(scheme.format, i+1)
			}
			movementTable(t, ids, keys)
		})
	}
}

func movementTable(t *testing.T, ids, keys []string) {
	placements := map[string]placement{}
	place := func(members ...string) placement {
		k := strings.Join(members, ",")
		if p, ok := placements[k]; ok {
			return p
		}
		r, err := New(members)
		if err != nil {
			t.Fatalf("New(%q): %v", members, err)
		}
		p := placement{n: r.Len(), owners: make([]string, len(keys))}
		for i, key := range keys {
			p.owners[i] = r.Owner(key)
		}
		placements[k] = p
		return p
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%2s  %11s %11s  %11s %11s  %7s\n", "N", "leave_ratio", "leave_coll", "join_ratio", "join_coll", "max/avg")
	for n := 3; n <= 10; n++ {
		full := place(ids[:n]...)
		var leave, join movement
		for i, id := range ids[:n] {
			leave.add(full, place(slices.Delete(slices.Clone(ids[:n]), i, i+1)...), id)
		}
		base := place(ids[:n-1]...)
		for _, id := range ids[n-1 : n+2] {
			join.add(base, place(append(slices.Clone(ids[:n-1]), id)...), id)
		}
		load := full.loadRatio()
		fmt.Fprintf(&b, "%2d  %11.3f %10.3f%%  %11.3f %10.3f%%  %7.3f\n", n, leave.ratio, 100*leave.collateral, join.ratio, 100*join.collateral, load)

		for _, c := range []struct {
			what      string
			got, want float64
		}{
			{"leave moved ratio", leave.ratio, maxMovedRatio},
			{"leave collateral", leave.collateral, maxCollateral},
			{"join moved ratio", join.ratio, maxMovedRatio},
			{"join collateral", join.collateral, maxCollateral},
			{"max/avg load", load, maxLoadRatio},
		} {
			if c.got > c.want {
				t.Errorf("N=%d: %s = %.4f, want ≤ %.4f", n, c.what, c.got, c.want)
			}
		}
	}
	t.Logf("%d keys, members %s…; ratio = moved fraction × N (ideal 1), coll = keys moved between members that stay\n%s", len(keys), ids[0], b.String())
}

func BenchmarkNew(b *testing.B) {
	for _, n := range []int{3, 10, 50} {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("n%d", i+1)
		}
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := New(ids); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOwner(b *testing.B) {
	r, err := New([]string{"n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10"})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		r.Owner("client-12345")
	}
}
