package pool

import (
	"context"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// The issuance ledger (package ledger): with StoreConfig.Ledger on, each
// handout appends one record to its shard's stream (<prefix>:{tag}:issued)
// in the call that hands it out: the take's script for a pooled entry, the
// call that counts a direct mint for a minted one. Undoing a handout
// deletes its record: nobody received that credential. Entries are named
// by ledger.EntryID, so the take's script records a credential's
// fingerprint and expiry without opening it.

// issuance is what a request's record says besides the credential.
type issuance struct {
	requestID   string
	who         *mint.Caller // nil: a caller the ledger can't name (Store.Take)
	fallbackFor string
}

// recordArgs are a record's arguments for the scripts' issued(): the
// stream's bound, the retention ms, then its fields for pr, from source;
// nil when the ledger is off.
func (s *Store) recordArgs(pr *profile, is issuance, source Source) []any {
	if !s.ledgerCfg.On() {
		return nil
	}
	var sub, tenant string
	if is.who != nil {
		sub, tenant = is.who.Subject, is.who.Tenant
	}
	if is.fallbackFor != "" {
		source = "fallback"
	}
	args := []any{max(s.ledgerCfg.MaxRecords/len(pr.tags), 1), s.ledgerCfg.Retention.Milliseconds(),
		ledger.FieldRequest, is.requestID, ledger.FieldSubject, sub, ledger.FieldTenant, tenant,
		ledger.FieldProfile, pr.Name, ledger.FieldProvider, pr.ProviderName, ledger.FieldSource, string(source)}
	if is.fallbackFor != "" {
		args = append(args, ledger.FieldFor, is.fallbackFor)
	}
	return args
}

// entryID names a new credential: by its fingerprint and expiry while the
// ledger is on, else a fresh id.
func (p *Pool) entryID(c mint.Credential) string {
	if p.store.ledgerCfg.On() {
		return ledger.EntryID(ledger.Fingerprint(p.store.ledgerCfg.Key, c.Token), c.ExpiresAt)
	}
	return p.newID()
}

// issuedRef is where a minted handout's record is, for Return.
type issuedRef struct{ tag, id string }

// issuedScript counts a minted handout (ARGV[1], a stats counter; "":
// none) and appends its record, when ARGV holds one (recordArgs, then the
// entry id).
//
// KEYS: stats, issued
// Reply: the record's id, or "".
var issuedScript = redis.NewScript(luaPrelude + `
if ARGV[1] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
if #ARGV < 4 then return '' end
return issued(KEYS[2], 2, #ARGV - 1, ARGV[#ARGV], redis.call('TIME'))
`)

// issued counts h, minted for its request, under counter in shard tag and
// records it with rec (recordArgs; nil: no record).
func (s *Store) issued(ctx context.Context, tag, counter string, rec []any, h *Handout) error {
	k := s.keys(tag)
	args := append([]any{counter}, rec...)
	if rec != nil {
		args = append(args, h.ID)
	}
	id, err := issuedScript.Run(ctx, s.rdb, []string{k.stats(), k.issued()}, args...).Text()
	if err != nil {
		return storeError("record", err)
	}
	if id != "" {
		h.record = issuedRef{tag: tag, id: id}
	}
	return nil
}

// unrecord deletes a minted handout's record: its caller never got it.
func (s *Store) unrecord(ctx context.Context, r issuedRef) error {
	if r.id == "" {
		return nil
	}
	if err := s.rdb.XDel(ctx, s.keys(r.tag).issued(), r.id).Err(); err != nil {
		return storeError("unrecord", err)
	}
	return nil
}

// streamOf names shard tag's stream, for readers.
func (s *Store) streamOf(tag string) string { return s.keys(tag).issued() }

// IssuedStreams names the issuance ledger's streams of profiles under
// prefix (StoreConfig.KeyPrefix; "": the default), one per shard, sorted.
func IssuedStreams(prefix string, profiles []Profile) []string {
	if prefix == "" {
		prefix = limiter.DefaultKeyPrefix
	}
	var out []string
	for _, pr := range profiles {
		for _, tag := range shardTags(pr.Name, max(pr.Shards, 1)) {
			out = append(out, keysOf(prefix, tag).issued())
		}
	}
	slices.Sort(out)
	return out
}

// IssuedStreams names the streams of p's profiles.
func (p *Pool) IssuedStreams() []string {
	var out []string
	for _, name := range p.names {
		for _, tag := range p.profiles[name].tags {
			out = append(out, p.store.streamOf(tag))
		}
	}
	slices.Sort(out)
	return out
}
