package ring

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
)

func mustNew(t testing.TB, members ...string) *Ring {
	t.Helper()
	r, err := New(members)
	if err != nil {
		t.Fatalf("New(%q): %v", members, err)
	}
	return r
}

func testKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("client-%d", i)
	}
	return keys
}

func TestNew(t *testing.T) {
	for _, c := range []struct {
		members []string
		want    []string
		err     error // nil: any error when wantErr
		wantErr bool
	}{
		{members: nil, err: ErrNoNodes, wantErr: true},
		{members: []string{}, err: ErrNoNodes, wantErr: true},
		{members: []string{"n1", ""}, wantErr: true},
		{members: []string{"n1"}, want: []string{"n1"}},
		{members: []string{"n3", "n1", "n2", "n1", "n3"}, want: []string{"n1", "n2", "n3"}},
	} {
		r, err := New(c.members)
		if c.wantErr {
			if err == nil || (c.err != nil && !errors.Is(err, c.err)) {
				t.Errorf("New(%q) error = %v, want %v", c.members, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%q): %v", c.members, err)
			continue
		}
		if got := r.Members(); !slices.Equal(got, c.want) {
			t.Errorf("New(%q).Members() = %q, want %q", c.members, got, c.want)
		}
		if r.Len() != len(c.want) {
			t.Errorf("New(%q).Len() = %d, want %d", c.members, r.Len(), len(c.want))
		}
		for _, id := range c.want {
			if !r.Has(id) {
				t.Errorf("New(%q).Has(%q) = false, want true", c.members, id)
			}
		}
		if r.Has("n9") {
			t.Errorf("New(%q).Has(%q) = true, want false", c.members, "n9")
		}
	}
}

func TestNewTooManyMembers(t *testing.T) {
	ids := make([]string, partitionCount+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%d", i)
	}
	if _, err := New(ids); err == nil {
		t.Errorf("New(%d members) error = nil, want capacity error", len(ids))
	}
}

func TestOwnerDeterministic(t *testing.T) {
	keys := testKeys(5000)
	ref := mustNew(t, "n1", "n2", "n3", "n4", "n5")
	for _, members := range [][]string{
		{"n5", "n4", "n3", "n2", "n1"},
		{"n3", "n1", "n5", "n2", "n4"},
		{"n2", "n2", "n4", "n1", "n5", "n3", "n1"},
	} {
		r := mustNew(t, members...)
		for _, k := range keys {
			if got, want := r.Owner(k), ref.Owner(k); got != want {
				t.Fatalf("New(%q).Owner(%q) = %q, want %q", members, k, got, want)
			}
		}
	}
	for _, k := range keys[:100] {
		if a, b := ref.Owner(k), ref.Owner(k); a != b {
			t.Fatalf("Owner(%q) = %q then %q", k, a, b)
		}
	}
}

// Owner must agree with the library it wraps, and every member must own keys.
func TestOwnerMatchesLibrary(t *testing.T) {
	ids := []string{"n1", "n10", "n11", "n2", "n3"}
	r := mustNew(t, ids...)
	c := newConsistent(ids)
	seen := map[string]bool{}
	for _, k := range testKeys(5000) {
		got := r.Owner(k)
		m, ok := c.LocateKey([]byte(k)).(member)
		if !ok || ids[m.idx] != got {
			t.Fatalf("Owner(%q) = %q, want library's %v", k, got, c.LocateKey([]byte(k)))
		}
		seen[got] = true
	}
	if len(seen) != len(ids) {
		t.Errorf("owners seen = %d members, want %d", len(seen), len(ids))
	}
}

func TestSingleMember(t *testing.T) {
	r := mustNew(t, "only")
	for _, k := range []string{"", "a", "client-1", "\xff\x00"} {
		if got := r.Owner(k); got != "only" {
			t.Errorf("Owner(%q) = %q, want %q", k, got, "only")
		}
		if got, err := r.OwnerExcluding(k, "other"); got != "only" || err != nil {
			t.Errorf("OwnerExcluding(%q, other) = %q, %v, want %q, nil", k, got, err, "only")
		}
		if got, err := r.OwnerExcluding(k, "only"); !errors.Is(err, ErrNoNodes) {
			t.Errorf("OwnerExcluding(%q, only) = %q, %v, want ErrNoNodes", k, got, err)
		}
	}
}

func TestOwnerExcluding(t *testing.T) {
	all := []string{"n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"}
	r := mustNew(t, all...)
	keys := testKeys(3000)
	for _, c := range []struct {
		excluded []string
		kept     []string // nil: ErrNoNodes
	}{
		{excluded: nil, kept: all},
		{excluded: []string{"n9"}, kept: all},
		// Without n4 the load cap rises and a few keys move between other members.
		{excluded: []string{"n4"}, kept: []string{"n1", "n2", "n3", "n5", "n6", "n7", "n8"}},
		{excluded: []string{"n4", "n4", "n9"}, kept: []string{"n1", "n2", "n3", "n5", "n6", "n7", "n8"}},
		{excluded: []string{"n8", "n1"}, kept: []string{"n2", "n3", "n4", "n5", "n6", "n7"}},
		{excluded: all[:7], kept: []string{"n8"}},
		{excluded: all, kept: nil},
		{excluded: append([]string{"n9"}, all...), kept: nil},
	} {
		if c.kept == nil {
			if got, err := r.OwnerExcluding("k", c.excluded...); !errors.Is(err, ErrNoNodes) {
				t.Errorf("OwnerExcluding(k, %q) = %q, %v, want ErrNoNodes", c.excluded, got, err)
			}
			continue
		}
		want := mustNew(t, c.kept...)
		for _, k := range keys {
			got, err := r.OwnerExcluding(k, c.excluded...)
			if err != nil || got != want.Owner(k) {
				t.Fatalf("OwnerExcluding(%q, %q) = %q, %v, want %q", k, c.excluded, got, err, want.Owner(k))
			}
		}
	}
}

func TestOwnerExcludingCacheBounded(t *testing.T) {
	ids := []string{"n1", "n2", "n3", "n4", "n5"}
	r := mustNew(t, ids...)
	for mask := 1; mask <= reducedCacheSize+1; mask++ { // distinct proper subsets
		var excluded []string
		for i, id := range ids {
			if mask&(1<<i) != 0 {
				excluded = append(excluded, id)
			}
		}
		if _, err := r.OwnerExcluding("k", excluded...); err != nil {
			t.Fatalf("OwnerExcluding(k, %q): %v", excluded, err)
		}
	}
	if n := len(r.reduced); n != reducedCacheSize {
		t.Errorf("cached reduced rings = %d, want %d", n, reducedCacheSize)
	}
}

func TestOwnerExcludingConcurrent(t *testing.T) {
	r := mustNew(t, "n1", "n2", "n3", "n4")
	want := map[string]string{}
	keys := testKeys(200)
	reduced := mustNew(t, "n1", "n3", "n4")
	for _, k := range keys {
		want[k] = reduced.Owner(k)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for _, k := range keys {
				if got, err := r.OwnerExcluding(k, "n2"); err != nil || got != want[k] {
					errs <- fmt.Errorf("OwnerExcluding(%q, n2) = %q, %v, want %q", k, got, err, want[k])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Concurrent callers that miss the cache for the same set share one build:
// a dead node's clients all arrive at the fallback at once.
func TestOwnerExcludingBuildsOnce(t *testing.T) {
	r := mustNew(t, "n1", "n2", "n3")
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			<-start
			if _, err := r.OwnerExcluding(fmt.Sprintf("c%d", i), "n3"); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	r.mu.Lock()
	builds := r.builds
	r.mu.Unlock()
	if builds != 1 {
		t.Errorf("reduced rings built for 32 concurrent callers = %d, want 1", builds)
	}
}

func TestZeroRing(t *testing.T) {
	var r Ring
	if got := r.Owner("k"); got != "" {
		t.Errorf("Ring{}.Owner(k) = %q, want empty", got)
	}
	if got, err := r.OwnerExcluding("k", "n1"); !errors.Is(err, ErrNoNodes) {
		t.Errorf("Ring{}.OwnerExcluding(k, n1) = %q, %v, want ErrNoNodes", got, err)
	}
}

func FuzzOwner(f *testing.F) {
	r := mustNew(f, "n1", "n2", "n3", "n4", "n5")
	for _, k := range []string{"", "client-1", "alice", "\x00", "\xff\xfe", "ключ"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		owner := r.Owner(key)
		if !r.Has(owner) {
			t.Fatalf("Owner(%q) = %q, not a member", key, owner)
		}
		next, err := r.OwnerExcluding(key, owner)
		if err != nil || next == owner || !r.Has(next) {
			t.Fatalf("OwnerExcluding(%q, %q) = %q, %v, want another member", key, owner, next, err)
		}
	})
}
