package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/limiter"
)

// The Store: the pool's Redis keys, its configuration, and the take (one
// script call hands out the entry that retires soonest, behind the
// caller's limits, exactly once per claim). The refill protocol is in
// store_refill.go, the prewarm in store_prewarm.go, the counters and the
// snapshot in store_stats.go.

// Store keeps the pool in Redis. Every operation is one script call, so it
// is atomic across replicas. A Store is safe for concurrent use.
type Store struct {
	rdb      redis.UniversalClient
	cluster  *redis.ClusterClient // rdb, when it is a Cluster client; nil otherwise
	retry    takeRetry            // how rdb retries a command: callTake retries takes so
	prefix   string
	claimTTL time.Duration
	ttlArg   []byte // claimTTL in ms, as takeScript's argument
	sealer   *Sealer
	waitN    int
	waitFor  time.Duration
	ledger   int   // ledgerMax
	opens    []any // body prefixes this Store can open (takeScript)
	limits   *limiter.Limiter

	replicas replicaWatch // with waitN: which primaries have the replicas WAIT needs
	datasets datasets     // each shard's dataset as last seen (dataset.go)

	metrics *Metrics         // set by the Pool using the store
	log     *slog.Logger     // set by the Pool; nil: slog.Default()
	host    func() time.Time // this host's clock, set by the Pool (Config.Now); nil: time.Now
	clock   func() time.Time // tests: a virtual clock for the scripts; nil: Redis TIME
}

// hostNow is the time on this host: the Pool's clock.
func (s *Store) hostNow() time.Time {
	if s.host == nil {
		return time.Now()
	}
	return s.host()
}

// now is the "now" argument of the scripts: 0 for Redis's clock.
func (s *Store) now() int64 {
	if s.clock == nil {
		return 0
	}
	return s.clock().UnixMilli()
}

// DefaultWaitTimeout is StoreConfig.WaitTimeout's default.
const DefaultWaitTimeout = 50 * time.Millisecond

// StoreConfig configures a Store. Zero values mean the documented default.
type StoreConfig struct {
	// KeyPrefix starts every key, so several deployments can share a Redis.
	// default: "tp"
	KeyPrefix string
	// ClaimTTL is how long a take's claim key lets a retried call get the
	// same entry back. default: 10s
	ClaimTTL time.Duration
	// Sealer encrypts entry bodies at rest. default: none (plain JSON); with
	// a Sealer, unsealed entries are discarded.
	Sealer *Sealer
	// WaitReplicas, when positive, makes each take wait (Redis WAIT) until
	// that many replicas have its writes, or WaitTimeout passes, before the
	// entry is handed out: a failover to such a replica can't bring the
	// entry back. Takes no replica acknowledged in time are still handed
	// out, and counted. default: 0 (don't wait)
	WaitReplicas int
	// WaitTimeout bounds that wait. default: DefaultWaitTimeout
	WaitTimeout time.Duration
	// LedgerMax bounds the handout ledger of each profile (ids handed out
	// and not yet retired, which guard against a replayed put). Past it the
	// ids that retire soonest are dropped and counted (ledger_trimmed).
	// default: 1,000,000 (100,000 entry ids take 13.6 MB of Redis memory)
	LedgerMax int
}

// NewStore returns a Store on rdb, a *redis.Client or *redis.ClusterClient.
func NewStore(rdb redis.UniversalClient, cfg StoreConfig) *Store {
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = limiter.DefaultKeyPrefix
	}
	if cfg.ClaimTTL <= 0 {
		cfg.ClaimTTL = 10 * time.Second
	}
	if cfg.WaitTimeout <= 0 {
		cfg.WaitTimeout = DefaultWaitTimeout
	}
	if cfg.LedgerMax <= 0 {
		cfg.LedgerMax = 1_000_000
	}
	opens := []any{"{"} // a plain JSON entry
	if cfg.Sealer != nil {
		opens = cfg.Sealer.prefixes()
	}
	s := &Store{
		rdb: rdb, prefix: cfg.KeyPrefix, claimTTL: cfg.ClaimTTL, sealer: cfg.Sealer,
		ttlArg: strconv.AppendInt(nil, cfg.ClaimTTL.Milliseconds(), 10),
		waitN:  cfg.WaitReplicas, waitFor: cfg.WaitTimeout, ledger: cfg.LedgerMax, opens: opens,
		limits: limiter.New(rdb, cfg.KeyPrefix),
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		s.cluster = c
		o := c.Options()
		s.retry = takeRetry{max(o.MaxRetries, 0), o.MinRetryBackoff, o.MaxRetryBackoff}
	case *redis.Client:
		o := c.Options()
		s.retry = takeRetry{max(o.MaxRetries, 0), o.MinRetryBackoff, o.MaxRetryBackoff}
	}
	return s
}

// keys names one profile's keys; all share the hash tag {profile}.
type keys struct{ base string }

func keysOf(prefix, profile string) keys { return keys{base: prefix + ":{" + profile + "}:"} }

func (s *Store) keys(profile string) keys { return keysOf(s.prefix, profile) }

// KeyNames are the names of a profile's Redis keys (one shard's, for a
// sharded profile: its tag), for tools and tests that read Redis itself.
type KeyNames struct{ k keys }

// Keys names profile's keys under prefix (StoreConfig.KeyPrefix; "" for
// the default).
func Keys(prefix, profile string) KeyNames {
	if prefix == "" {
		prefix = limiter.DefaultKeyPrefix
	}
	return KeyNames{keysOf(prefix, profile)}
}

// The keys of KeyNames, and Pattern, a KEYS/SCAN pattern of them all.
func (n KeyNames) Ready() string   { return n.k.ready() }
func (n KeyNames) Entries() string { return n.k.entries() }
func (n KeyNames) Minting() string { return n.k.minting() }
func (n KeyNames) Stats() string   { return n.k.stats() }
func (n KeyNames) Handed() string  { return n.k.handed() }
func (n KeyNames) Prewarm() string { return n.k.prewarm() }
func (n KeyNames) Pattern() string { return n.k.base + "*" }

func (k keys) ready() string          { return k.base + "ready" }
func (k keys) entries() string        { return k.base + "e" }
func (k keys) minting() string        { return k.base + "minting" }
func (k keys) stats() string          { return k.base + "stats" }
func (k keys) handed() string         { return k.base + "handed" }
func (k keys) prewarm() string        { return k.base + "prewarm" }
func (k keys) claim(id string) string { return k.base + "claim:" + id }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return storeError("ping", err)
	}
	return nil
}

// int64s checks that v is a list of at least n integers.
func int64s(v any, n int) ([]int64, error) {
	list, ok := v.([]any)
	if !ok || len(list) < n {
		return nil, fmt.Errorf("unexpected reply %T", v)
	}
	out := make([]int64, len(list))
	for i, x := range list {
		if out[i], ok = x.(int64); !ok {
			return nil, fmt.Errorf("unexpected reply element %d: %T", i, x)
		}
	}
	return out, nil
}

// storeError wraps a Redis failure so callers can tell it from a provider
// failure: it matches ErrUnavailable and asks callers to retry in a second.
func storeError(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("pool: %s: %w", op, err)
	}
	return &UnavailableError{Err: fmt.Errorf("pool: %s: redis: %w", op, err), RetryAfter: time.Second}
}

// Take hands out the usable entry of profile that retires soonest: one with
// more than minRemaining of life left by Redis's clock. claimID (the request
// id) makes the call idempotent: a retry with the same claimID within the
// claim TTL returns the same entry. It returns ErrEmpty when nothing usable
// is pooled.
func (s *Store) Take(ctx context.Context, profile, claimID string, minRemaining time.Duration) (Handout, error) {
	h, _, err := s.TakeLimited(ctx, profile, claimID, minRemaining, nil)
	return h, err
}

// TakeLimited is Take behind the caller's limits: checks are applied in
// order before the take, in the same round trip (on a Cluster, where their
// keys live in other slots, at the same time as the take). When one
// denies, nothing is taken and the error matches limiter.ErrDenied. The decisions of the checks reached are
// returned whenever the checks were applied, with an error too.
//
// Entries sealed with a key this Store lacks are left for a replica that
// has it. An entry that cannot be opened or decoded all the same (tampered
// with) is discarded, counted, and the next one taken, up to maxDiscards
// times.
//
// When the take fails or its outcome is unknown (the reply missed ctx's
// deadline, the connection broke), Take recovers the entry on a short
// context of its own: a take that did run in Redis is undone and its entry
// pooled again, so a failure loses nothing. An error for which even that
// failed matches ErrUnavailable and is an *UnrecoveredError.
func (s *Store) TakeLimited(ctx context.Context, profile, claimID string, minRemaining time.Duration, checks []limiter.Check) (Handout, []limiter.Decision, error) {
	return s.takeIn(ctx, profile, claimID, minRemaining, checks, countDemand|countMiss)
}

// What a take counts in its shard's stats, besides a handout.
const (
	countDemand       = 1 // the request, in the demand rates
	countMiss         = 2 // a miss, when nothing usable was found
	countUnreplicated = 4 // the handout, as unreplicated (callTake sets it)
)

// takeIn is TakeLimited on one shard of a profile (tag: its hash tag),
// counting what counts says.
func (s *Store) takeIn(ctx context.Context, tag, claimID string, minRemaining time.Duration, checks []limiter.Check, counts int) (Handout, []limiter.Decision, error) {
	var decisions []limiter.Decision
	for attempt := 0; ; attempt++ {
		claim := claimID
		if attempt > 0 {
			// A fresh claim: the first one holds the entry that failed.
			// The limits were applied by the first.
			claim, checks = claimID+"#"+strconv.Itoa(attempt), nil
		}
		t, err := s.takeLimited(ctx, tag, claim, minRemaining, checks, counts)
		if attempt == 0 {
			decisions = t.decisions
		}
		if errors.Is(err, ErrEmpty) {
			return Handout{}, decisions, err
		}
		if errors.Is(err, limiter.ErrDenied) {
			return Handout{}, decisions, err
		}
		if err != nil && !t.ran {
			return Handout{}, decisions, err // it holds nothing
		}
		if err != nil {
			return Handout{}, decisions, s.abandon(tag, claim, minRemaining, t, err)
		}
		cred, err := s.decode(tag, t.id, t.body)
		if err == nil {
			return Handout{ID: t.id, Profile: profileOf(tag), Source: SourcePool, Credential: cred, claim: claim, tag: tag, sentAt: t.sentAt, epoch: t.epoch}, decisions, nil
		}
		if err := discardScript.Run(ctx, s.rdb, []string{s.keys(tag).stats()}).Err(); err != nil {
			return Handout{}, decisions, storeError("discard", err)
		}
		if attempt+1 >= maxDiscards {
			return Handout{}, decisions, fmt.Errorf("%w (%d entries in a row could not be opened: %v)", ErrEmpty, maxDiscards, err)
		}
	}
}

// takeLimited runs one take behind checks: in the take's own script where
// every key may share it (a single Redis), else at the same time as the
// take, which is undone when a check denies.
func (s *Store) takeLimited(ctx context.Context, profile, claim string, minRemaining time.Duration, checks []limiter.Check, counts int) (taken, error) {
	if s.cluster == nil || len(checks) == 0 {
		return s.take(ctx, profile, claim, minRemaining, checks, counts)
	}
	var (
		ds   []limiter.Decision
		lerr error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		ds, lerr = s.limits.AllowAtOnce(ctx, checks)
	}()
	t, err := s.take(ctx, profile, claim, minRemaining, nil, counts)
	<-done
	t.decisions = ds
	if lerr == nil && limiter.Allowed(checks, ds) {
		return t, err
	}
	if err != nil && err != ErrEmpty {
		return t, err // Take recovers the claim
	}
	// Refused, or the limits failed: undo what the take did.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
	defer cancel()
	k := s.keys(profile)
	uerr := untakeScript.Run(uctx, s.rdb, []string{k.ready(), k.entries(), k.stats(), k.claim(claim), k.handed()},
		minRemaining.Milliseconds(), s.claimTTL.Milliseconds(), s.now(),
		demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), t.at).Err()
	if uerr != nil && err == nil {
		return taken{decisions: ds}, &UnrecoveredError{Profile: profile, Claim: claim, MinRemaining: minRemaining, At: t.sentAt, epoch: t.epoch, Err: storeError("untake", uerr)}
	}
	if lerr != nil {
		return taken{}, storeError("limits", &limitsError{lerr})
	}
	return taken{decisions: ds}, fmt.Errorf("pool: take: %w", limiter.ErrDenied)
}

// limitsError is a failure of the caller's limits, which on a Cluster
// live on other masters than the take's shard: not the shard's failure.
type limitsError struct{ err error }

func (e *limitsError) Error() string { return e.err.Error() }
func (e *limitsError) Unwrap() error { return e.err }

// errTooLate is a take that reached Redis after its claim could have
// expired: it took nothing.
var errTooLate = fmt.Errorf("%w: the take reached Redis too late", ErrUnavailable)

// maxDiscards bounds the undecodable entries one Take skips.
const maxDiscards = 3

// argCounts is the index of takeScript's "what to count" argument, which
// callTake may change.
const argCounts = 7

// handedOut reports whether a takeScript reply handed out a new entry
// (status 1): only those count as unreplicated.
func handedOut(v any) bool {
	reply, ok := v.([]any)
	return ok && len(reply) > 0 && reply[0] == int64(1)
}

// taken is what one take script call returned.
type taken struct {
	id, body  string
	decisions []limiter.Decision // of the checks reached; nil when none were applied
	at        int64              // the script's now, ms
	sentAt    time.Time          // this host's clock when the take was sent
	epoch     string             // the dataset it was sent to, as last seen
	ran       bool               // a failed take may have run in Redis (else it holds nothing)
}

// take runs takeScript, with checks folded in.
func (s *Store) take(ctx context.Context, profile, claimID string, minRemaining time.Duration, checks []limiter.Check, counts int) (taken, error) {
	k := s.keys(profile)
	keys := []string{k.ready(), k.entries(), k.stats(), k.claim(claimID), k.handed()}
	mark := &sendMark{v: s.ttlArg}
	sentAt, epoch := s.hostNow(), s.datasets.get(profile).epoch
	args := make([]any, 0, 9+3*len(checks)+len(s.opens))
	args = append(args, minRemaining.Milliseconds(), mark, s.now(),
		demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), s.ledger, len(checks), counts,
		sentAt.Add(s.recoverHorizon()).UnixMilli())
	// args[1], the claim TTL, is mark; args[argCounts] is counts.
	if len(checks) > 0 {
		lkeys, largs := s.limits.ScriptArgs(checks)
		keys = append(keys, lkeys...)
		args = append(args, largs...)
	}
	args = append(args, s.opens...)
	v, ran, err := s.callTake(ctx, profile, keys, args, mark)
	if err != nil {
		return taken{sentAt: sentAt, epoch: epoch, ran: ran}, storeError("take", err)
	}
	reply, ok := v.([]any)
	if !ok || len(reply) != 7 {
		return taken{}, fmt.Errorf("pool: take: unexpected reply %T", v)
	}
	status, ok0 := reply[0].(int64)
	id, ok1 := reply[1].(string)
	body, ok2 := reply[2].(string)
	evicted, ok3 := reply[3].(int64)
	lim, ok4 := reply[5].([]any)
	at, ok5 := reply[6].(int64)
	if !ok0 || !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return taken{}, fmt.Errorf("pool: take: unexpected reply types %T %T %T %T %T %T", reply[0], reply[1], reply[2], reply[3], reply[5], reply[6])
	}
	s.metrics.waste(profileOf(profile), evicted)
	t := taken{id: id, body: body, at: at, sentAt: sentAt, epoch: epoch}
	if len(checks) > 0 {
		if t.decisions, err = limiter.Decisions(checks, lim); err != nil {
			return taken{}, fmt.Errorf("pool: take: %w", err)
		}
	}
	switch status {
	case 0:
		return t, ErrEmpty
	case 3:
		return t, fmt.Errorf("%w: the claim was abandoned", ErrEmpty)
	case 5:
		t.ran = ran // an earlier attempt's entry may be gone with its claim
		return t, errTooLate
	case 4:
		return t, fmt.Errorf("pool: take: %w", limiter.ErrDenied)
	}
	return t, nil
}

// encode turns a credential into the stored body, sealed when configured.
func (s *Store) encode(profile, id string, c Credential) ([]byte, error) {
	b, err := encodeEntry(c)
	if err != nil || s.sealer == nil {
		return b, err
	}
	return s.sealer.seal(profileOf(profile), id, b), nil
}

// OpenEntry decodes an entry body as stored in a profile's entries hash
// under id, for tools that read the pool's keys directly (the chaos run
// records a dataset it is about to wipe).
func (s *Store) OpenEntry(profile, id, body string) (Credential, error) {
	return s.decode(profile, id, body)
}

// decode reverses encode.
func (s *Store) decode(profile, id, body string) (Credential, error) {
	b := []byte(body)
	if s.sealer != nil {
		var err error
		if b, err = s.sealer.open(profileOf(profile), id, b); err != nil {
			return Credential{}, err
		}
	}
	return decodeEntry(b)
}
