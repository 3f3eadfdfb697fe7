package pool

import (
	"context"
	"errors"
	"slices"
	"time"

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

// issuedRef is where a minted handout's record may be, for Return: its
// shard, the request whose marker names it, and until when the marker
// lasts (ms).
type issuedRef struct {
	tag, request string
	until        int64
}

// markUntil is when a minted handout's record marker goes (ms): once its
// credential has expired, so the marker outlives any retry of the record
// call and any put that pools the credential again (a parked one is
// pooled only while it lasts), and at least tombstoneTTL from now.
func markUntil(expires time.Time) int64 {
	return max(expires.UnixMilli(), time.Now().Add(tombstoneTTL).UnixMilli())
}

// issuedMark is the marker of request's record: the record's id, or "-"
// once voided. A record call that runs twice (a retry after a lost reply)
// writes one record.
func (k keys) issuedMark(request string) string { return k.claim(request) + ":r" }

// issuedScript counts a minted handout (ARGV[1], a stats counter; "":
// none) and appends its record, when ARGV holds one (ARGV[2], when the
// marker expires (ms), then recordArgs, then the entry id): once per
// marker, and not after the marker was voided.
//
// KEYS: stats, issued, the request's record marker
// Reply: the record's id, "-" (voided: no record), or "" (none asked).
var issuedScript = redis.NewScript(luaPrelude + `
local mark = redis.call('GET', KEYS[3])
if mark then return mark end -- a retry: counted and recorded, or voided
if ARGV[1] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
if #ARGV < 5 then return '' end
local xid = issued(KEYS[2], 3, #ARGV - 1, ARGV[#ARGV], redis.call('TIME'))
redis.call('SET', KEYS[3], xid, 'PXAT', ARGV[2])
return xid
`)

// voidScript voids a minted handout's record (void()).
//
// KEYS: issued, the request's record marker. ARGV: when the marker
// expires (ms).
var voidScript = redis.NewScript(luaPrelude + `
void(KEYS[1], KEYS[2], ARGV[1])
return 1
`)

// issued counts h, minted for request, under counter in shard tag and
// records it with rec (recordArgs; nil: no record). h.record says where,
// even when the call fails: it may have run.
func (s *Store) issued(ctx context.Context, tag, request, counter string, rec []any, h *Handout) error {
	k := s.keys(tag)
	until := markUntil(h.ExpiresAt)
	args := []any{counter, until}
	args = append(args, rec...)
	if rec != nil {
		args = append(args, h.ID)
		h.record = issuedRef{tag: tag, request: request, until: until}
	}
	id, err := issuedScript.Run(ctx, s.rdb, []string{k.stats(), k.issued(), k.issuedMark(request)}, args...).Text()
	if err == nil && id == "-" {
		err = errors.New("the record was voided") // its credential went back
	}
	if err != nil {
		return storeError("record", err)
	}
	return nil
}

// boolArg is a script's flag argument.
func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// unrecord voids a minted handout's record: its caller never got it.
func (s *Store) unrecord(ctx context.Context, r issuedRef) error {
	if r.request == "" {
		return nil
	}
	k := s.keys(r.tag)
	if err := voidScript.Run(ctx, s.rdb, []string{k.issued(), k.issuedMark(r.request)}, r.until).Err(); err != nil {
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
	ps := make([]Profile, 0, len(p.names))
	for _, name := range p.names {
		ps = append(ps, p.profiles[name].Profile)
	}
	return IssuedStreams(p.store.prefix, ps)
}
