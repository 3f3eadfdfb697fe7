package pool

import (
	"errors"

	"github.com/tokenpool/tokenpool/mint"
)

// Errors returned by the pool. Match them with errors.Is.
var (
	// ErrEmpty: nothing usable is pooled for the profile.
	ErrEmpty = errors.New("pool: no usable credential pooled")
	// ErrUnknownProfile: the caller named a profile that is not configured.
	ErrUnknownProfile = errors.New("pool: unknown profile")
	// ErrUnavailable: no credential can be had now; try again later
	// (mint.ErrUnavailable: a minter's refusal to call its provider
	// matches it too). Errors that match it may carry a RetryAfter (see
	// mint.UnavailableError).
	ErrUnavailable = mint.ErrUnavailable
	// ErrProvider: the provider failed to mint a credential.
	ErrProvider = errors.New("pool: provider error")
	// ErrClosed: the pool is closed.
	ErrClosed = errors.New("pool: closed")
)
