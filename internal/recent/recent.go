// Package recent keeps the last answer of a costly read for a while and
// joins concurrent reads into one, so that no rate of callers costs more
// than one read per interval: a scrape's pool figures, a readiness check.
package recent

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Value is the last answer of a read, served while it is under TTL old.
// The zero value is not usable: set TTL and Now. It is safe for
// concurrent use.
type Value[T any] struct {
	TTL time.Duration
	Now func() time.Time

	flight singleflight.Group
	mu     sync.Mutex
	at     time.Time // guarded by mu; zero: never read
	val    T         // guarded by mu
	err    error     // guarded by mu
}

// Get returns the last answer while it is under TTL old; else it reads
// again with read, once for every caller asking meanwhile. A caller whose
// ctx ends stops waiting, and the read goes on for the others: read
// brings its own deadline.
func (v *Value[T]) Get(ctx context.Context, read func() (T, error)) (T, error) {
	if val, err, ok := v.fresh(); ok {
		return val, err
	}
	done := v.flight.DoChan("read", func() (any, error) {
		// A read that ended since this caller looked has the answer.
		if val, err, ok := v.fresh(); ok {
			return val, err
		}
		val, err := read()
		v.mu.Lock()
		v.at, v.val, v.err = v.Now(), val, err
		v.mu.Unlock()
		return val, err
	})
	select {
	case r := <-done:
		return r.Val.(T), r.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// fresh is the last answer, and whether it is under TTL old.
func (v *Value[T]) fresh() (T, error, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.val, v.err, !v.at.IsZero() && v.Now().Sub(v.at) < v.TTL
}
