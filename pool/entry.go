package pool

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokenpool/tokenpool/mint"
)

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
	// FallbackFor is the profile the caller asked for, when this handout
	// is a fallback profile's standing in for it (see Pool.Fallback).
	FallbackFor string
	mint.Credential

	claim    string     // the take's claim key suffix, for Return; "" unless pooled
	tag      string     // the hash tag of the shard it was taken from, for Return
	sentAt   time.Time  // when its take was sent, by this host's clock, for Return
	epoch    string     // the dataset it was taken from, for Return
	deadline int64      // its take's deadline by Redis's clock, for Return
	quota    quotaSpend // what its request spent of its quotas, for Return
	record   issuedRef  // a minted handout's issuance record, for Return
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
	Extra      json.RawMessage `json:"e,omitempty"`
	ExpiresAt  int64           `json:"x"` // Unix milliseconds
}

func encodeEntry(c mint.Credential) ([]byte, error) {
	return json.Marshal(entryBody{Token: c.Token, ICEServers: c.ICEServers, Extra: c.Extra, ExpiresAt: c.ExpiresAt.UnixMilli()})
}

func decodeEntry(b []byte) (mint.Credential, error) {
	var e entryBody
	if err := json.Unmarshal(b, &e); err != nil {
		return mint.Credential{}, fmt.Errorf("decode entry: %w", err)
	}
	if e.Token == "" || e.ExpiresAt == 0 {
		return mint.Credential{}, fmt.Errorf("decode entry: missing token or expiry")
	}
	return mint.Credential{Token: e.Token, ICEServers: e.ICEServers, Extra: e.Extra, ExpiresAt: time.UnixMilli(e.ExpiresAt)}, nil
}

// RequestWait is the most a request waits, in all, before its mint reaches
// the provider: for a free direct-mint slot, then for the fleet's quota.
// Past it the request answers 503 with Retry-After at once: a caller is
// better served by a quick 503 it can retry than by a slow answer.
const RequestWait = 250 * time.Millisecond
