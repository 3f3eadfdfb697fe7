package pool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/limiter"
)

// Store keeps the pool in Redis. Every operation is one script call, so it
// is atomic across replicas. A Store is safe for concurrent use.
type Store struct {
	rdb      redis.UniversalClient
	prefix   string
	claimTTL time.Duration
	sealer   *Sealer
	waitN    int
	waitFor  time.Duration
	ledger   int   // ledgerMax
	opens    []any // body prefixes this Store can open (takeScript)
	limits   *limiter.Limiter

	metrics *Metrics         // set by the Pool using the store
	clock   func() time.Time // tests: a virtual clock for the scripts; nil: Redis TIME
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
		cfg.KeyPrefix = "tp"
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
	return &Store{
		rdb: rdb, prefix: cfg.KeyPrefix, claimTTL: cfg.ClaimTTL, sealer: cfg.Sealer,
		waitN: cfg.WaitReplicas, waitFor: cfg.WaitTimeout, ledger: cfg.LedgerMax, opens: opens,
		limits: limiter.New(rdb, cfg.KeyPrefix),
	}
}

// keys names one profile's keys; all share the hash tag {profile}.
type keys struct{ base string }

func (s *Store) keys(profile string) keys {
	return keys{base: s.prefix + ":{" + profile + "}:"}
}

func (k keys) ready() string          { return k.base + "ready" }
func (k keys) entries() string        { return k.base + "e" }
func (k keys) minting() string        { return k.base + "minting" }
func (k keys) stats() string          { return k.base + "stats" }
func (k keys) handed() string         { return k.base + "handed" }
func (k keys) prewarm() string        { return k.base + "prewarm" }
func (k keys) claim(id string) string { return k.base + "claim:" + id }

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
	countDemand = 1 // the request, in the demand rates
	countMiss   = 2 // a miss, when nothing usable was found
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
		if err != nil {
			return Handout{}, decisions, s.abandon(tag, claim, minRemaining, err)
		}
		cred, err := s.decode(tag, t.id, t.body)
		if err == nil {
			return Handout{ID: t.id, Profile: profileOf(tag), Source: SourcePool, Credential: cred, claim: claim, tag: tag}, decisions, nil
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
	if _, cluster := s.rdb.(*redis.ClusterClient); !cluster || len(checks) == 0 {
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
		return taken{decisions: ds}, &UnrecoveredError{Profile: profile, Claim: claim, MinRemaining: minRemaining, At: time.Now(), Err: storeError("untake", uerr)}
	}
	if lerr != nil {
		return taken{}, storeError("limits", lerr)
	}
	return taken{decisions: ds}, fmt.Errorf("pool: take: %w", limiter.ErrDenied)
}

// maxDiscards bounds the undecodable entries one Take skips.
const maxDiscards = 3

// takeReplicated runs takeScript and WAIT in one pipeline on the
// connection of the master that owns profile's slot, so WAIT covers the
// take's writes and it stays one round trip.
func (s *Store) takeReplicated(ctx context.Context, profile string, keys []string, args []any) (any, error) {
	var node redis.Cmdable = s.rdb
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		c, err := cc.MasterForKey(ctx, keys[0])
		if err != nil {
			return nil, err
		}
		node = c
	}
	for loaded := false; ; loaded = true {
		pipe := node.Pipeline()
		take := pipe.EvalSha(ctx, takeScript.Hash(), keys, args...)
		wait := pipe.Do(ctx, "WAIT", s.waitN, s.waitFor.Milliseconds())
		_, _ = pipe.Exec(ctx)
		if err := take.Err(); err != nil && !loaded && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			if err := takeScript.Load(ctx, node).Err(); err != nil {
				return nil, err
			}
			continue
		}
		if acked, err := wait.Int64(); take.Err() == nil && err == nil && acked < int64(s.waitN) {
			// Best effort: failing the take for its counter would lose
			// the entry it holds.
			_ = s.count(ctx, profile, "unreplicated", 1)
		}
		return take.Result()
	}
}

// taken is what one take script call returned.
type taken struct {
	id, body  string
	decisions []limiter.Decision // of the checks reached; nil when none were applied
	at        int64              // the script's now, ms
}

// take runs takeScript, with checks folded in.
func (s *Store) take(ctx context.Context, profile, claimID string, minRemaining time.Duration, checks []limiter.Check, counts int) (taken, error) {
	k := s.keys(profile)
	keys := []string{k.ready(), k.entries(), k.stats(), k.claim(claimID), k.handed()}
	args := make([]any, 0, 8+3*len(checks)+len(s.opens))
	args = append(args, minRemaining.Milliseconds(), s.claimTTL.Milliseconds(), s.now(),
		demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), s.ledger, len(checks), counts)
	if len(checks) > 0 {
		lkeys, largs := s.limits.ScriptArgs(checks)
		keys = append(keys, lkeys...)
		args = append(args, largs...)
	}
	args = append(args, s.opens...)
	var (
		v   any
		err error
	)
	if s.waitN > 0 {
		v, err = s.takeReplicated(ctx, profile, keys, args)
	} else {
		v, err = takeScript.Run(ctx, s.rdb, keys, args...).Result()
	}
	if err != nil {
		return taken{}, storeError("take", err)
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
	t := taken{id: id, body: body, at: at}
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

// reserveArgs are the inputs of one reservation round.
type reserveArgs struct {
	target       int
	want         int           // reservations the caller could use
	idPrefix     string        // reservation ids are idPrefix followed by firstID, firstID+1, …
	firstID      uint64        // (unique per replica: the prefix names it)
	lease        time.Duration // how long a reservation holds before it lapses
	minRemaining time.Duration
	lead         time.Duration // time a refill takes: entries unusable by then don't count
}

// reservation is what reserveScript granted and saw.
type reservation struct {
	ids      []string // granted reservation ids
	usable   int      // entries still usable after the lead
	inFlight int      // reservations already held, by any replica
	ready    int      // every pooled entry, usable or not yet evicted
	target   int      // the target applied: the asked one, or a prewarm's
	evicted  int64    // entries this round dropped as waste
	demand   Demand   // the fleet's demand, now
}

func (s *Store) reserve(ctx context.Context, profile string, a reserveArgs) (reservation, error) {
	k := s.keys(profile)
	v, err := reserveScript.Run(ctx, s.rdb,
		[]string{k.ready(), k.entries(), k.minting(), k.stats(), k.handed(), k.prewarm()},
		a.target, a.want, a.lease.Milliseconds(), a.minRemaining.Milliseconds(), a.lead.Milliseconds(),
		s.now(), demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), a.idPrefix, a.firstID).Result()
	if err != nil {
		return reservation{}, storeError("reserve", err)
	}
	list, ok := v.([]any)
	if !ok || len(list) != 9 {
		return reservation{}, fmt.Errorf("pool: reserve: unexpected reply %T", v)
	}
	n, err := int64s(list[:7], 7)
	if err != nil {
		return reservation{}, fmt.Errorf("pool: reserve: %w", err)
	}
	fast, err1 := floatString(list[7])
	slow, err2 := floatString(list[8])
	if err1 != nil || err2 != nil {
		return reservation{}, fmt.Errorf("pool: reserve: demand: %v %v", err1, err2)
	}
	s.metrics.waste(profileOf(profile), n[5])
	granted := min(int(n[0]), a.want)
	ids := make([]string, granted)
	for i := range ids {
		ids[i] = a.idPrefix + strconv.FormatUint(a.firstID+uint64(i), 10)
	}
	return reservation{
		ids: ids, usable: int(n[1]), inFlight: int(n[2]), ready: int(n[3]),
		target: int(n[4]), evicted: n[5], demand: Demand{Fast: fast, Slow: slow},
	}, nil
}

func floatString(v any) (float64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("unexpected %T", v)
	}
	return strconv.ParseFloat(s, 64)
}

// SetPrewarm raises profile's floor to ready until the given time, for
// every replica; ready 0 ends a prewarm.
func (s *Store) SetPrewarm(ctx context.Context, profile string, ready int, until time.Time) error {
	return s.setPrewarm(ctx, profile, ready, ready, until)
}

// setPrewarm raises one shard's floor to ready, its share of the
// profile's total.
func (s *Store) setPrewarm(ctx context.Context, profile string, ready, total int, until time.Time) error {
	k := s.keys(profile).prewarm()
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if ready <= 0 {
			p.Del(ctx, k)
			return nil
		}
		p.HSet(ctx, k, "ready", ready, "total", total, "until", until.UnixMilli())
		p.PExpireAt(ctx, k, until)
		return nil
	})
	if err != nil {
		return storeError("prewarm", err)
	}
	return nil
}

// Prewarm returns profile's active prewarm; ready is 0 when there is none.
func (s *Store) Prewarm(ctx context.Context, profile string) (ready int, until time.Time, err error) {
	v, err := s.rdb.HMGet(ctx, s.keys(profile).prewarm(), "ready", "until", "total").Result()
	if err != nil {
		return 0, time.Time{}, storeError("prewarm", err)
	}
	r, _ := v[0].(string)
	u, _ := v[1].(string)
	if t, ok := v[2].(string); ok {
		r = t
	}
	ready, _ = strconv.Atoi(r)
	ms, _ := strconv.ParseInt(u, 10, 64)
	if ready <= 0 || ms <= time.Now().UnixMilli() {
		return 0, time.Time{}, nil
	}
	return ready, time.UnixMilli(ms), nil
}

// put pools a minted credential under entryID and ends reservation resID.
// It reports whether the entry was pooled (false: already unusable).
func (s *Store) put(ctx context.Context, profile, resID, entryID string, retire time.Time, c Credential, minRemaining time.Duration) (bool, error) {
	body, err := s.encode(profile, entryID, c)
	if err != nil {
		return false, fmt.Errorf("pool: put: %w", err)
	}
	k := s.keys(profile)
	n, err := putScript.Run(ctx, s.rdb,
		[]string{k.ready(), k.entries(), k.minting(), k.stats(), k.handed()},
		resID, entryID, retire.UnixMilli(), body, minRemaining.Milliseconds(), s.now()).Int64()
	if err != nil {
		return false, storeError("put", err)
	}
	return n == 1, nil
}

// release ends reservations without an entry and adds their number to the
// counter named by why.
func (s *Store) release(ctx context.Context, profile, why string, resIDs ...string) error {
	if len(resIDs) == 0 {
		return nil
	}
	k := s.keys(profile)
	args := make([]any, 0, 1+len(resIDs))
	args = append(args, why)
	for _, id := range resIDs {
		args = append(args, id)
	}
	if err := releaseScript.Run(ctx, s.rdb, []string{k.minting(), k.stats()}, args...).Err(); err != nil {
		return storeError("release", err)
	}
	return nil
}

// count adds n to one counter of profile.
func (s *Store) count(ctx context.Context, profile, counter string, n int64) error {
	if err := s.rdb.HIncrBy(ctx, s.keys(profile).stats(), counter, n).Err(); err != nil {
		return storeError("count", err)
	}
	return nil
}

// countOnDemand adds one to the fleet-wide on-demand counter label. The
// key holds no profile's hash tag: it is one key, touched alone.
func (s *Store) countOnDemand(ctx context.Context, label string) error {
	if err := s.rdb.HIncrBy(ctx, s.prefix+":ondemand", label, 1).Err(); err != nil {
		return storeError("count", err)
	}
	return nil
}

func (s *Store) onDemand(ctx context.Context) (map[string]int64, error) {
	m, err := s.rdb.HGetAll(ctx, s.prefix+":ondemand").Result()
	if err != nil {
		return nil, storeError("on-demand counters", err)
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return out, nil
}

// Stats is a snapshot of one profile's pool, shared by every replica.
type Stats struct {
	Ready    int    // entries pooled, including any not yet evicted as unusable
	Usable   int    // entries with at least the minimum life left, by this host's clock
	InFlight int    // mint reservations held by all replicas
	Target   int    // the target last applied by a refiller, prewarm included
	Demand   Demand // the fleet's handout requests per second, now
	// Counters since the keys were created.
	Minted              int64 // credentials minted into the pool
	HandedOut           int64 // handed out from the pool
	Direct              int64 // minted for a request on a miss and handed out
	Wasted              int64 // expired or fell below the minimum life unused
	Misses              int64 // takes that found nothing usable
	MintFailed          int64 // reservations released after a failed mint
	Lapsed              int64 // reservations whose lease ran out (a replica died, or a mint or its put outlasted the lease)
	DuplicatesPrevented int64 // entries seen again after being handed out
	Discarded           int64 // entries taken that could not be opened (tampered with)
	Unreplicated        int64 // takes no replica acknowledged in time (WaitReplicas)
	Lost                int64 // taken in Redis but never delivered, and not recovered
	Returned            int64 // taken, not delivered, and pooled again
	Surplus             int64 // minted after their reservation lapsed, with no room: counted in Wasted too
	Orphaned            int64 // ids in the ready set without a body (should stay 0)
	LedgerTrimmed       int64 // ledger ids dropped to keep it within LedgerMax
}

// add is s with every figure of t added.
func (s Stats) add(t Stats) Stats {
	return Stats{
		Ready: s.Ready + t.Ready, Usable: s.Usable + t.Usable, InFlight: s.InFlight + t.InFlight, Target: s.Target + t.Target,
		Demand: Demand{Fast: s.Demand.Fast + t.Demand.Fast, Slow: s.Demand.Slow + t.Demand.Slow},
		Minted: s.Minted + t.Minted, HandedOut: s.HandedOut + t.HandedOut, Direct: s.Direct + t.Direct,
		Wasted: s.Wasted + t.Wasted, Misses: s.Misses + t.Misses, MintFailed: s.MintFailed + t.MintFailed,
		Lapsed: s.Lapsed + t.Lapsed, DuplicatesPrevented: s.DuplicatesPrevented + t.DuplicatesPrevented,
		Discarded: s.Discarded + t.Discarded, Unreplicated: s.Unreplicated + t.Unreplicated, Lost: s.Lost + t.Lost,
		Returned: s.Returned + t.Returned, Surplus: s.Surplus + t.Surplus, Orphaned: s.Orphaned + t.Orphaned,
		LedgerTrimmed: s.LedgerTrimmed + t.LedgerTrimmed,
	}
}

// Stats reads profile's snapshot in one round trip. Usable counts the
// entries that retire more than minLife from now.
func (s *Store) Stats(ctx context.Context, profile string, minLife time.Duration) (Stats, error) {
	k := s.keys(profile)
	var (
		ready, usable, minting *redis.IntCmd
		counters               *redis.MapStringStringCmd
	)
	cutoff := "(" + strconv.FormatInt(time.Now().Add(minLife).UnixMilli(), 10)
	// All keys share a slot, so this pipeline is one round trip on a
	// Cluster too.
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		ready = p.ZCard(ctx, k.ready())
		usable = p.ZCount(ctx, k.ready(), cutoff, "+inf")
		minting = p.ZCard(ctx, k.minting())
		counters = p.HGetAll(ctx, k.stats())
		return nil
	})
	if err != nil {
		return Stats{}, storeError("stats", err)
	}
	c := counters.Val()
	n := func(name string) int64 { v, _ := strconv.ParseInt(c[name], 10, 64); return v }
	f := func(name string) float64 { v, _ := strconv.ParseFloat(c[name], 64); return v }
	dt := time.Since(time.UnixMilli(n("d_at"))).Seconds()
	if n("d_at") == 0 || dt < 0 {
		dt = 0
	}
	return Stats{
		Target: int(n("target")),
		Demand: Demand{
			Fast: f("d_fast") * math.Exp(-dt/demandTauFast.Seconds()),
			Slow: f("d_slow") * math.Exp(-dt/demandTauSlow.Seconds()),
		},
		Ready: int(ready.Val()), Usable: int(usable.Val()), InFlight: int(minting.Val()),
		Minted: n("minted"), HandedOut: n("handed_out"), Direct: n("direct"),
		Wasted: n("wasted"), Misses: n("misses"), MintFailed: n("mint_failed"),
		Lapsed: n("lapsed"), DuplicatesPrevented: n("duplicates_prevented"), Discarded: n("discarded"), Unreplicated: n("unreplicated"),
		Lost: n("lost"), Returned: n("returned"), Surplus: n("surplus"), Orphaned: n("orphaned"), LedgerTrimmed: n("ledger_trimmed"),
	}, nil
}

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
