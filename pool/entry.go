package pool

import (
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

	claim string // the take's claim key suffix, for Return; "" unless pooled
	tag   string // the hash tag of the shard it was taken from, for Return
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
