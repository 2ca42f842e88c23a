package defaults

import (
	"errors"
	"testing"
	"time"
)

func TestSet(t *testing.T) {
	zero, set, neg := time.Duration(0), 2*time.Second, -time.Second
	if err := Set("Zero", &zero, time.Minute); err != nil || zero != time.Minute {
		t.Errorf("zero: %v, %v; want 1m0s and no error", zero, err)
	}
	if err := Set("Set", &set, time.Minute); err != nil || set != 2*time.Second {
		t.Errorf("set: %v, %v; want 2s kept and no error", set, err)
	}
	n := 0
	err := errors.Join(Set("Neg", &neg, time.Minute), Set("Count", &n, 3))
	if err == nil || err.Error() != "Neg is -1s, must not be negative" || neg != -time.Second || n != 3 {
		t.Errorf("negative: %v, %v, %d; want the named error, -1s kept and the count defaulted", err, neg, n)
	}
	f := -0.5
	if err := Set("Rate", &f, 1); err == nil || err.Error() != "Rate is -0.5, must not be negative" {
		t.Errorf("negative float: %v", err)
	}
}

func TestSetOrOff(t *testing.T) {
	zero, set, neg := time.Duration(0), 2*time.Second, -time.Second
	SetOrOff(&zero, time.Minute)
	SetOrOff(&set, time.Minute)
	SetOrOff(&neg, time.Minute)
	if zero != time.Minute || set != 2*time.Second || neg != 0 {
		t.Errorf("SetOrOff: zero → %v, 2s → %v, -1s → %v; want 1m0s, 2s, 0", zero, set, neg)
	}
}
