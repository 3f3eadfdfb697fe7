package limiter

import (
	"testing"
	"time"
)

// FuzzParse feeds limit parsing arbitrary text: it never panics, and a
// limit it accepts is one redis_rate can enforce: a positive count, a
// period of at least a millisecond, a burst equal to the count.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"10/m", "5/s", "1000/h", "50/10s", "1/1ms", "0/m", "-1/s", "10/", "/m", "10/0s", "10/1ns", "9999999999999999999/s", " 7/m ", "3/1h30m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			return
		}
		if l.Rate <= 0 || l.Burst != l.Rate || l.Period < time.Millisecond {
			t.Fatalf("%q parsed as %+v", s, l)
		}
	})
}
