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

// Code classifies an Error: what is wrong with the request.
type Code string

// The codes of an Error.
const (
	// CodeInvalid: the request can't be served as it asks (a missing
	// key, a profile that keeps no pool, a prewarm above the ceiling).
	CodeInvalid Code = "invalid"
	// CodeForbidden: the request asks for what the server's policy
	// refuses (a key from the request, a session not offered, a caller
	// without the claim a per-caller profile needs).
	CodeForbidden Code = "forbidden"
)

// Error is a request that can't be served as asked, for a reason the
// caller may read. Minters return it; breakers don't count it as a
// provider failure. Only the API maps its Code to an answer.
type Error struct {
	Code    Code
	Message string // shown to the caller: never a secret
}

func (e *Error) Error() string { return e.Message }

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
