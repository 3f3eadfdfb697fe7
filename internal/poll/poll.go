// Package poll waits in tests for a condition another process or
// goroutine brings about.
package poll

import (
	"testing"
	"time"
)

// Until polls cond every 10 ms until it holds, and fails tb, naming what
// it waited for, when timeout passes first.
func Until(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
