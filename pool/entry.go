package pool

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"
)

// Credential is one set of short-lived session credentials from a provider:
// the ephemeral token and, for WebRTC providers, the ICE servers to use with
// it. The pool treats the ICE servers as opaque JSON.
//
// Token and ICEServers are secrets: a Credential logs as its expiry only.
type Credential struct {
	Token      string
	ICEServers json.RawMessage // a JSON array, or nil when the provider has none
	ExpiresAt  time.Time       // by the provider's clock
}

// LogValue keeps the token and TURN credentials out of logs.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.Time("expires_at", c.ExpiresAt))
}

// Source says where a handed-out credential came from.
type Source string

// Sources of a handout.
const (
	SourcePool     Source = "pool"      // taken from the Redis pool
	SourceDirect   Source = "direct"    // minted for this request on a miss
	SourceOnDemand Source = "on_demand" // minted for settings or a key no pool has
)

// Handout is a credential handed to exactly one caller.
type Handout struct {
	ID      string // entry id, unique per credential
	Profile string
	Source  Source
	Credential

	claim    string    // the take's claim key suffix, for Return; "" unless pooled
	tag      string    // the hash tag of the shard it was taken from, for Return
	sentAt   time.Time // when its take was sent, by this host's clock, for Return
	epoch    string    // the dataset it was taken from, for Return
	deadline int64     // its take's deadline by Redis's clock, for Return
}

// LogValue keeps the credential out of logs.
func (h Handout) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", h.ID), slog.String("profile", h.Profile),
		slog.String("source", string(h.Source)), slog.Time("expires_at", h.ExpiresAt))
}

// entryBody is how an entry is stored in Redis.
type entryBody struct {
	Token      string          `json:"t"`
	ICEServers json.RawMessage `json:"i,omitempty"`
	ExpiresAt  int64           `json:"x"` // Unix milliseconds
}

func encodeEntry(c Credential) ([]byte, error) {
	return json.Marshal(entryBody{Token: c.Token, ICEServers: c.ICEServers, ExpiresAt: c.ExpiresAt.UnixMilli()})
}

func decodeEntry(b []byte) (Credential, error) {
	var e entryBody
	if err := json.Unmarshal(b, &e); err != nil {
		return Credential{}, fmt.Errorf("decode entry: %w", err)
	}
	if e.Token == "" || e.ExpiresAt == 0 {
		return Credential{}, fmt.Errorf("decode entry: missing token or expiry")
	}
	return Credential{Token: e.Token, ICEServers: e.ICEServers, ExpiresAt: time.UnixMilli(e.ExpiresAt)}, nil
}

// Caller is who a credential is for, carried in the context of a request
// so minters that mint per caller (an Orga account bound to an email) can
// read it. Nothing in it is a secret.
type Caller struct {
	Subject string // "user:<sub>" or "key:<name>"
	Email   string // the JWT's email, when verified (email_verified true or "true", or an issuer assumed to verify); else empty
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
