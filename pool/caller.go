package pool

import (
	"context"
	"time"
)

// Caller is who a credential is for, carried in the context of a request
// so minters that mint per caller (an Orga account bound to an email) can
// read it. Nothing in it is a secret.
type Caller struct {
	Subject string // "user:<sub>" or "key:<name>"
	Email   string // the JWT's email claim; empty when absent
}

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the Caller ctx carries, if any.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

type requestMintKey struct{}

// RequestWait is the most a request waits, in all, before its mint reaches
// the provider: for a free direct-mint slot, then for the fleet's quota.
// Past it the request answers 503 with Retry-After at once: a caller is
// better served by a quick 503 it can retry than by a slow answer.
const RequestWait = 250 * time.Millisecond

// withRequestMint marks ctx as a mint for a waiting request, not a refill,
// whose waiting must end by waitEnd.
func withRequestMint(ctx context.Context, waitEnd time.Time) context.Context {
	return context.WithValue(ctx, requestMintKey{}, waitEnd)
}

// IsRequestMint reports whether a mint is for a waiting request (a miss or
// an on-demand mint) rather than a refill.
func IsRequestMint(ctx context.Context) bool {
	_, ok := RequestWaitEnd(ctx)
	return ok
}

// RequestWaitEnd is when a mint for a waiting request must stop waiting
// (for a shared quota, say) and fail as unavailable; ok is false for a
// refill, which may wait as long as its deadline allows.
func RequestWaitEnd(ctx context.Context) (end time.Time, ok bool) {
	end, ok = ctx.Value(requestMintKey{}).(time.Time)
	return end, ok
}
