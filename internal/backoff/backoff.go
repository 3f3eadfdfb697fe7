// Package backoff spaces out retries: the pool's refill after failures and
// a provider call's retries wait the same way.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Jittered is the wait before retry attempt (1 for the first): base
// doubled for each attempt after the first, capped at ceiling, with full
// jitter in its upper half, so replicas that failed together don't retry
// together.
func Jittered(base, ceiling time.Duration, attempt int) time.Duration {
	d := min(base<<min(max(attempt-1, 0), 16), ceiling)
	return d/2 + rand.N(d/2+1)
}
