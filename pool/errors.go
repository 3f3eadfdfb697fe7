package pool

import (
	"errors"
	"time"
)

// Errors returned by the pool. Match them with errors.Is.
var (
	// ErrEmpty: nothing usable is pooled for the profile.
	ErrEmpty = errors.New("pool: no usable credential pooled")
	// ErrUnknownProfile: the caller named a profile that is not configured.
	ErrUnknownProfile = errors.New("pool: unknown profile")
	// ErrUnavailable: no credential can be had now; try again later. Errors
	// that match it may carry a RetryAfter (see UnavailableError).
	ErrUnavailable = errors.New("pool: no credential available")
	// ErrProvider: the provider failed to mint a credential.
	ErrProvider = errors.New("pool: provider error")
	// ErrClosed: the pool is closed.
	ErrClosed = errors.New("pool: closed")
)

// UnavailableError says no credential can be had now and when to try again.
// It matches ErrUnavailable. Minters return it when they won't call the
// provider (breaker open, provider asked to back off).
type UnavailableError struct {
	Err        error
	RetryAfter time.Duration // zero: unknown
}

func (e *UnavailableError) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Is reports whether target is ErrUnavailable.
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// RetryAfter returns how long a caller of err should wait before trying
// again: the largest hint in err's chain, at least one second.
func RetryAfter(err error) time.Duration {
	var u *UnavailableError
	d := time.Second
	if errors.As(err, &u) && u.RetryAfter > d {
		d = u.RetryAfter
	}
	return d
}
