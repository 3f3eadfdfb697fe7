// Package ledger is the issuance ledger: one record per credential handed
// out (who received it, when, from which request, profile, provider and
// source, when it expires) and a fingerprint of its token, an HMAC-SHA256
// under a key of the operator's, never the token itself. The pool writes
// a record in the same Redis script as the take, into a Redis Stream in
// the shard's own slot; this package names what a record holds, and reads
// the streams: a page of them, a token found leaked, an export for a SIEM.
package ledger

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Config turns the ledger on.
type Config struct {
	// Key is the fingerprints' HMAC key (TOKENPOOL_LEDGER_KEY); nil: the
	// ledger is off.
	Key []byte
	// Retention is how long a record is kept. default: DefaultRetention
	Retention time.Duration
	// MaxRecords bounds each profile's records (split over its shards):
	// past it the oldest go first. default: DefaultMaxRecords
	MaxRecords int
}

// The defaults of a Config.
const (
	DefaultRetention  = 7 * 24 * time.Hour
	DefaultMaxRecords = 1_000_000
	// MinKeyBytes is the shortest Key accepted.
	MinKeyBytes = 16
)

// On reports whether the ledger is on.
func (c Config) On() bool { return len(c.Key) > 0 }

// WithDefaults checks c and fills in its defaults.
func (c Config) WithDefaults() (Config, error) {
	if !c.On() {
		return c, nil
	}
	if len(c.Key) < MinKeyBytes {
		return c, fmt.Errorf("ledger: the key must be at least %d bytes (e.g. openssl rand -base64 32)", MinKeyBytes)
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.MaxRecords == 0 {
		c.MaxRecords = DefaultMaxRecords
	}
	if c.Retention < time.Minute || c.MaxRecords < 1 {
		return c, errors.New("ledger: want a retention of at least 1m and a positive record bound")
	}
	return c, nil
}

// Fingerprint is token's fingerprint under key: HMAC-SHA256, unpadded
// base64url (43 characters). Without the key it tells nothing of the
// token; with it, a leaked token's fingerprint finds its record.
func Fingerprint(key []byte, token string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(token))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// EntryID is the pool's id of a credential while the ledger is on: its
// fingerprint and its expiry (Unix ms), which the take's script records
// without opening the entry.
func EntryID(fingerprint string, expires time.Time) string {
	return fingerprint + "." + strconv.FormatInt(expires.UnixMilli(), 10)
}

// ParseEntryID reads an EntryID; ok is false for an id of an entry pooled
// while the ledger was off (a UUID).
func ParseEntryID(id string) (fingerprint string, expires time.Time, ok bool) {
	fp, ms, found := strings.Cut(id, ".")
	if !found || len(fp) != 43 {
		return "", time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	return fp, time.UnixMilli(n), true
}

// Record is one handout.
type Record struct {
	// ID is the record's stream id ("<ms>-<seq>") and Stream the stream
	// it is in: together they order records (see Cursor).
	ID     string `json:"id"`
	Stream string `json:"stream"`
	// Time is when the take ran, by Redis's clock (the id's ms).
	Time      time.Time `json:"time"`
	RequestID string    `json:"requestId"`
	Subject   string    `json:"subject"`
	Tenant    string    `json:"tenant,omitempty"`
	Profile   string    `json:"profile"`
	Provider  string    `json:"provider"`
	// Source is pool, direct, on_demand or fallback.
	Source string `json:"source"`
	// FallbackFor is the profile the caller asked for, for a fallback.
	FallbackFor string    `json:"fallbackFor,omitempty"`
	ExpiresAt   time.Time `json:"expiresAt,omitzero"`
	// Fingerprint is the token's (Fingerprint); "" for an entry pooled
	// before the ledger was on.
	Fingerprint string `json:"fingerprint,omitempty"`
}

// The fields of a record in its stream, in the order written.
const (
	FieldRequest  = "rid"
	FieldSubject  = "sub"
	FieldTenant   = "tenant"
	FieldProfile  = "profile"
	FieldProvider = "provider"
	FieldSource   = "source"
	FieldFor      = "for"
	FieldEntry    = "entry" // the EntryID
)

// FromStream reads the record id of stream holds as values.
func FromStream(stream, id string, values map[string]any) Record {
	str := func(k string) string { s, _ := values[k].(string); return s }
	r := Record{ID: id, Stream: stream, RequestID: str(FieldRequest), Subject: str(FieldSubject),
		Tenant: str(FieldTenant), Profile: str(FieldProfile), Provider: str(FieldProvider),
		Source: str(FieldSource), FallbackFor: str(FieldFor)}
	if ms, _, ok := strings.Cut(id, "-"); ok {
		if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
			r.Time = time.UnixMilli(n).UTC()
		}
	}
	if fp, exp, ok := ParseEntryID(str(FieldEntry)); ok {
		r.Fingerprint, r.ExpiresAt = fp, exp.UTC()
	}
	return r
}
