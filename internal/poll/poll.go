// Package poll waits for a condition another process or goroutine brings
// about: Until in tests, Wait in the harness commands and the demo.
package poll

import (
	"context"
	"fmt"
	"time"
)

// Wait polls cond every 10 ms until it holds, and returns an error when
// timeout passes or ctx is done first.
func Wait(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// TB is what Until needs of a testing.TB (so that this package, which the
// daemon's demo uses too, does not import testing).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Until polls cond every 10 ms until it holds, and fails tb, naming what
// it waited for, when timeout passes first.
func Until(tb TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
