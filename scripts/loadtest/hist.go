package main

import (
	"math"
	"math/bits"
	"time"
)

// hist is a log-linear latency histogram: subBuckets buckets per power of
// two of nanoseconds, so a quantile is exact to within about 4 %. The zero
// value is ready; it is not safe for concurrent use.
type hist struct {
	Counts []uint64 `json:"c,omitempty"`
}

const subBuckets = 16

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 1))
	e := bits.Len64(v) - 1 // 2^e ≤ v < 2^(e+1)
	if e < 4 {
		return int(v) // exact below 16 ns
	}
	// The 4 bits below the top one pick the sub-bucket.
	return e*subBuckets + int((v>>(e-4))&(subBuckets-1))
}

// upper returns the largest value in bucket i.
func upper(i int) time.Duration {
	if i < 4*subBuckets {
		return time.Duration(i)
	}
	e, s := i/subBuckets, i%subBuckets
	lo := (uint64(subBuckets) + uint64(s)) << (e - 4)
	return time.Duration(lo + (uint64(1) << (e - 4)) - 1)
}

func (h *hist) add(d time.Duration) {
	i := bucketOf(d)
	if i >= len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, i+1-len(h.Counts))...)
	}
	h.Counts[i]++
}

func (h *hist) merge(o hist) {
	if len(o.Counts) > len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, len(o.Counts)-len(h.Counts))...)
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
}

func (h *hist) total() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// quantile returns the q-quantile (0 < q ≤ 1), or 0 when h is empty.
func (h *hist) quantile(q float64) time.Duration {
	n := h.total()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	var seen uint64
	for i, c := range h.Counts {
		if seen += c; seen >= max(rank, 1) {
			return upper(i)
		}
	}
	return upper(len(h.Counts) - 1)
}
