package backoff

import (
	"testing"
	"time"
)

func TestJitteredDoublesToItsCeilingInItsUpperHalf(t *testing.T) {
	for _, c := range []struct {
		attempt int
		want    time.Duration // the wait before jitter
	}{{0, 100 * time.Millisecond}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond}, {9, time.Second}, {100, time.Second}} {
		for range 200 {
			if d := Jittered(100*time.Millisecond, time.Second, c.attempt); d < c.want/2 || d > c.want {
				t.Fatalf("attempt %d: %v, want within [%v, %v]", c.attempt, d, c.want/2, c.want)
			}
		}
	}
}
