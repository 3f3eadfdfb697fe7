package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
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
	ledger   int // ledgerMax
	// ledgerCfg is the issuance ledger's (off: no records).
	ledgerCfg ledger.Config
	opens     []any // body prefixes this Store can open (takeScript)
	limits    *limiter.Limiter

	replicas replicaWatch // with waitN: which primaries have the replicas WAIT needs
	datasets datasets     // each shard's dataset as last seen (dataset.go)

	redisAhead sync.Map // by shard tag: *atomic.Int64, its Redis's clock less this host's, ms, as its last take reply showed it

	metrics *Metrics         // the Pool's (use)
	log     *slog.Logger     // the Pool's (use); nil: slog.Default()
	host    func() time.Time // this host's clock, the Pool's (use); nil: time.Now
	clock   func() time.Time // tests: a virtual clock for the scripts; nil: Redis TIME
}

// use makes the Store record into the Pool's metrics and log, and read
// the Pool's clock. New calls it once, before any other call.
func (s *Store) use(m *Metrics, host func() time.Time, log *slog.Logger) {
	s.metrics, s.host, s.log = m, host, log
}

// sawRedisClock notes the clock of shard tag's Redis, now ms by a take's
// reply, against this host's. Per shard: on a Cluster each master has a
// clock of its own. A reply that arrives late makes Redis's clock seem
// behind, which only makes deadlines earlier (a take refused as too late
// teaches the clock again), never later than its claim.
func (s *Store) sawRedisClock(tag string, now int64) {
	v, ok := s.redisAhead.Load(tag)
	if !ok {
		v, _ = s.redisAhead.LoadOrStore(tag, new(atomic.Int64))
	}
	v.(*atomic.Int64).Store(now - s.hostNow().UnixMilli())
}

// redisDeadline is, by the clock of shard tag's Redis, when a take sent at
// sentAt has outlived its recovery horizon: its claim, had it run, may
// have expired. Until a take reply has shown that Redis's clock, this
// host's stands in (a take refused because Redis's runs far ahead teaches
// it).
func (s *Store) redisDeadline(tag string, sentAt time.Time) int64 {
	h := s.recoverHorizon()
	if h <= 0 {
		return 0
	}
	var ahead int64
	if v, ok := s.redisAhead.Load(tag); ok {
		ahead = v.(*atomic.Int64).Load()
	}
	return sentAt.UnixMilli() + ahead + h.Milliseconds()
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
	// ids that retire soonest are dropped and counted (ledger_trimmed); the
	// size is checked by about one handout in k (k = LedgerMax / 1024, from
	// 1 to 64), so a large ledger may pass its bound by about k ids (a
	// thousandth of it) before it is trimmed back.
	// default: 1,000,000 (100,000 entry ids take 13.6 MB of Redis memory)
	LedgerMax int
	// Ledger turns on the issuance ledger (package ledger): a record per
	// handout. Checked by ledger.Config.WithDefaults; NewStore fills in
	// its defaults. default: off
	Ledger ledger.Config
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
	if cfg.Ledger.On() {
		cfg.Ledger, _ = cfg.Ledger.WithDefaults()
	}
	opens := []any{"{"} // a plain JSON entry
	if cfg.Sealer != nil {
		opens = cfg.Sealer.prefixes()
	}
	s := &Store{
		rdb: rdb, prefix: cfg.KeyPrefix, claimTTL: cfg.ClaimTTL, sealer: cfg.Sealer,
		ttlArg: strconv.AppendInt(nil, cfg.ClaimTTL.Milliseconds(), 10),
		waitN:  cfg.WaitReplicas, waitFor: cfg.WaitTimeout, ledger: cfg.LedgerMax, opens: opens,
		limits: limiter.New(rdb, cfg.KeyPrefix), ledgerCfg: cfg.Ledger,
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
func (n KeyNames) Issued() string  { return n.k.issued() }
func (n KeyNames) Pattern() string { return n.k.base + "*" }

func (k keys) ready() string            { return k.base + "ready" }
func (k keys) entries() string          { return k.base + "e" }
func (k keys) minting() string          { return k.base + "minting" }
func (k keys) stats() string            { return k.base + "stats" }
func (k keys) handed() string           { return k.base + "handed" }
func (k keys) prewarm() string          { return k.base + "prewarm" }
func (k keys) claim(id string) string   { return k.base + "claim:" + id }
func (k keys) issued() string           { return k.base + "issued" }
func (k keys) undo(claim string) string { return k.claim(claim) + ":u" }

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
	return &mint.UnavailableError{Err: fmt.Errorf("pool: %s: redis: %w", op, err), RetryAfter: time.Second}
}

// encode turns a credential into the stored body, sealed when configured.
func (s *Store) encode(profile, id string, c mint.Credential) ([]byte, error) {
	b, err := encodeEntry(c)
	if err != nil || s.sealer == nil {
		return b, err
	}
	return s.sealer.seal(profileOf(profile), id, b), nil
}

// OpenEntry decodes an entry body as stored in a profile's entries hash
// under id, for tools that read the pool's keys directly (the chaos run
// records a dataset it is about to wipe).
func (s *Store) OpenEntry(profile, id, body string) (mint.Credential, error) {
	return s.decode(profile, id, body)
}

// decode reverses encode.
func (s *Store) decode(profile, id, body string) (mint.Credential, error) {
	b := []byte(body)
	if s.sealer != nil {
		var err error
		if b, err = s.sealer.open(profileOf(profile), id, b); err != nil {
			return mint.Credential{}, err
		}
	}
	return decodeEntry(b)
}
