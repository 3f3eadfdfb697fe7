// Package mint is the contract between the pool, the providers and the
// API, as database/sql/driver is between database/sql and its drivers: a
// Minter mints one Credential for a Request, and says why it can't in
// the errors below. It imports none of them; each of them imports it.
package mint

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"
)

// Credential is one set of short-lived session credentials from a
// provider: the token a client uses, what the client needs beside it, and
// when it expires.
//
// Token, ICEServers and Extra are secrets (a TURN credential, a signed URL
// that embeds the token): a Credential logs as its expiry only.
type Credential struct {
	Token string
	// ICEServers are the ICE servers of a WebRTC provider (Orga), as a
	// JSON array; nil when the provider has none.
	ICEServers json.RawMessage
	// Extra is what else a provider's client needs, as a JSON object of
	// the answer's fields (a signed URL, a WebSocket URL); nil when none.
	Extra json.RawMessage
	// ExpiresAt is when the token stops working, by the provider's clock.
	ExpiresAt time.Time
}

// LogValue keeps the token, TURN credentials and extras out of logs.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.Time("expires_at", c.ExpiresAt))
}

// Caller is who a credential is minted for. Nothing in it is a secret.
type Caller struct {
	Subject string // "user:<sub>", "idp:<issuer>:<sub>" or "key:<name>"
	Email   string // the caller's verified email; else empty
	Tenant  string // the caller's tenant, as the issuance ledger records it; else empty
}

// Request is one mint's circumstances.
type Request struct {
	// Caller is who waits for the credential; nil for a refill, whose
	// credential is pooled for whoever asks next. Only a minter that binds
	// a credential to one caller reads it, and such a profile keeps no
	// pool.
	Caller *Caller
	// WaitEnd is when a mint for a waiting caller must stop waiting (for a
	// shared quota, say) and fail as unavailable; zero for a refill, which
	// may wait as long as its context allows.
	WaitEnd time.Time
}

// ForCaller reports whether the mint is for a waiting caller rather than
// a refill.
func (r Request) ForCaller() bool { return !r.WaitEnd.IsZero() }

// Minter mints one credential. Implementations must be safe for
// concurrent use and honour ctx's deadline. An error that matches
// ErrUnavailable means the provider was not asked (breaker open, backing
// off); an *Error is the request's fault; any other error is a provider
// failure.
type Minter interface {
	Mint(ctx context.Context, r Request) (Credential, error)
}

// ErrUnavailable: no credential can be had now; try again later. Errors
// that match it may carry a RetryAfter (see UnavailableError).
var ErrUnavailable = errors.New("mint: no credential available")

// UnavailableError says no credential can be had now and when to try
// again. It matches ErrUnavailable. Minters return it when they won't call
// the provider (breaker open, provider asked to back off).
type UnavailableError struct {
	Err        error
	RetryAfter time.Duration // zero: unknown
}

// Error is the cause's message.
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

// Error is the message for the caller.
func (e *Error) Error() string { return e.Message }
