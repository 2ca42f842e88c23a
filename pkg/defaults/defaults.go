// Package defaults is the one way every Config fills its numbers: zero
// means the default, a negative value is refused with its name.
package defaults

import "fmt"

// Number is what Set fills: counts, sizes, rates and durations.
type Number interface{ ~int | ~int64 | ~float64 }

// Set replaces *v with def when *v is zero. A negative *v is left as it is
// and reported as an error naming it; join several with errors.Join.
func Set[T Number](name string, v *T, def T) error {
	switch {
	case *v < 0:
		return fmt.Errorf("%s is %v, must not be negative", name, *v)
	case *v == 0:
		*v = def
	}
	return nil
}

// SetOrOff replaces *v with def when *v is zero and with zero (off, as
// the field documents it) when *v is negative: for limits where "-1 = no
// limit" is a value a user sets.
func SetOrOff[T Number](v *T, def T) {
	switch {
	case *v < 0:
		*v = 0
	case *v == 0:
		*v = def
	}
}
