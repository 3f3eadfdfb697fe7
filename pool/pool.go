// Package pool keeps pre-minted provider credentials in Redis and hands each
// one to exactly one caller.
//
// A Pool has one or more profiles (a provider and its session settings).
// Each replica of the daemon runs one refiller that keeps every profile's
// pool at its target; a take is one Redis script call. See DESIGN.md "The
// pool: invariants" for what is promised.
package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// availability is implemented by Minters that know when their provider is
// out of service (an open breaker). Readiness uses it.
type availability interface {
	Available() bool
}

// Profile is one kind of credential the pool keeps.
type Profile struct {
	// Name identifies the profile in requests and in Redis keys:
	// 1–64 of A–Z a–z 0–9 . _ -
	Name string
	// Minter mints this profile's credentials. Required.
	Minter mint.Minter
	// Target is the floor of the pool: the least usable credentials kept
	// ready, shared by all replicas. Demand raises the target above it (see
	// Sizing). 0 keeps no pool: every handout is minted for its request.
	// (DefaultTarget is what a configuration that names none gives.)
	Target int
	// MaxTarget is the ceiling demand or a prewarm can raise the target to.
	// default: DefaultMaxTarget
	MaxTarget int
	// MinRemaining is the least life a handed-out credential has left.
	// default: DefaultMinRemaining
	MinRemaining time.Duration
	// Shards spreads the pool over this many Redis hash slots, so that on
	// a Cluster one busy profile uses several masters (see shard.go):
	// each shard keeps its share of the target, and a take tries a shard
	// at random, then the others. At most MaxShards. default: 1
	Shards int
	// ProviderName names the provider in the issuance ledger's records.
	ProviderName string
}

// MaxShards bounds a profile's shards.
const MaxShards = 64

// The defaults of a Profile and a Config, for what reads configuration
// too (TOKENPOOL_POOL_TARGET and the rest default to them).
const (
	DefaultTarget            = 20   // the floor a configuration gives a profile that names none
	DefaultMaxTarget         = 5000 // Profile.MaxTarget
	DefaultMinRemaining      = 30 * time.Second
	DefaultRefillConcurrency = 32
	DefaultMintTimeout       = 10 * time.Second
	DefaultMaxClockSkew      = 2 * time.Second
)

// Config configures a Pool. Zero values mean the documented default.
type Config struct {
	// Store holds the pool. Required.
	Store *Store
	// Profiles lists the profiles; at least one.
	Profiles []Profile
	// MaxClockSkew is added to each profile's MinRemaining to allow for
	// clocks of provider, daemon and Redis that disagree.
	// default: DefaultMaxClockSkew
	MaxClockSkew time.Duration
	// ExpiryJitter retires each entry early by a random part, up to this
	// fraction, of its usable life, so entries minted together don't all go
	// stale at once. default: 0.1; negative: none
	ExpiryJitter float64
	// RefillConcurrency bounds the mints in flight per profile on this
	// replica; the fleet-wide reservations bound them all.
	// default: DefaultRefillConcurrency
	RefillConcurrency int
	// RefillInterval is how often the refiller looks at every profile when
	// nothing wakes it sooner. default: 1s
	RefillInterval time.Duration
	// MintTimeout is the deadline of one refill mint, retries included.
	// Reservations are leased for MintTimeout + 5s.
	// default: DefaultMintTimeout
	MintTimeout time.Duration
	// DirectMints bounds the concurrent mints for requests (misses and
	// on-demand mints) per profile on this replica. default: 16; negative:
	// never mint on a miss (answer ErrUnavailable at once)
	DirectMints int
	// Logger receives the refiller's logs. default: slog.Default()
	Logger *slog.Logger

	// Headroom and Margin tune demand sizing (see Sizing).
	// default: none and 0.25
	Headroom time.Duration
	Margin   float64
	// Metrics records the pool's metrics. default: none
	Metrics *Metrics
	// TracerProvider receives a span per refill round and per refill
	// mint (the round's child). default: none
	TracerProvider trace.TracerProvider

	// ReplicaID names this replica in reservation ids, so an operator can
	// tell whose mints are in flight. default: host name and a random suffix
	ReplicaID string

	// Now and NewID replace the clock and the id source in tests.
	Now   func() time.Time // default: time.Now
	NewID func() string    // default: uuid.NewString
}

// Pool hands out credentials. It is safe for concurrent use.
type Pool struct {
	store     *Store
	profiles  map[string]*profile
	names     []string // sorted profile names
	skew      time.Duration
	jitter    float64
	direct    chan struct{} // semaphore of direct mints; nil when disabled
	log       *slog.Logger
	now       func() time.Time
	newID     func() string
	replicaID string
	random    func() float64 // retire jitter; tests make it repeatable
	metrics   *Metrics
	tracer    trace.Tracer

	refill *refiller

	closeOnce sync.Once
	closed    chan struct{}
}

// profile is a Profile with defaults filled in.
type profile struct {
	Profile
	minLife time.Duration // MinRemaining + skew: what Redis scripts check
	sizing  Sizing
	tags    []string      // the hash tags of its shards
	health  []shardHealth // what takes know of each shard
	// direct bounds this profile's mints for requests (misses and on-demand
	// mints) on this replica, so a burst on one profile can't take every
	// slot from the others; nil when direct minting is off.
	direct chan struct{}
	cost   costLog // samples of the fleet's counters, for Stats' cost windows
}

var profileName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidProfileName reports whether name may name a profile: 1–64 of
// A–Z a–z 0–9 . _ - (it is part of the profile's Redis keys).
func ValidProfileName(name string) bool { return profileName.MatchString(name) }

// NewReplicaID names one process of the fleet: its host name (the
// container's, under Docker or Kubernetes) and a random suffix, so replicas
// that share a host name and a pid (pid 1 in containers) still differ.
func NewReplicaID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "tokenpoold"
	}
	return host + "-" + uuid.NewString()[:8]
}

// New checks cfg and returns a Pool. Open starts its refiller.
func New(cfg Config) (*Pool, error) {
	if cfg.Store == nil {
		return nil, errors.New("pool: config: Store is required")
	}
	if len(cfg.Profiles) == 0 {
		return nil, errors.New("pool: config: no profiles")
	}
	if cfg.MaxClockSkew <= 0 {
		cfg.MaxClockSkew = DefaultMaxClockSkew
	}
	if cfg.ExpiryJitter == 0 {
		cfg.ExpiryJitter = 0.1
	}
	if cfg.ExpiryJitter < 0 {
		cfg.ExpiryJitter = 0
	}
	if cfg.ExpiryJitter >= 1 {
		return nil, errors.New("pool: config: ExpiryJitter must be below 1")
	}
	if cfg.RefillConcurrency <= 0 {
		cfg.RefillConcurrency = DefaultRefillConcurrency
	}
	if cfg.RefillInterval <= 0 {
		cfg.RefillInterval = time.Second
	}
	if cfg.MintTimeout <= 0 {
		cfg.MintTimeout = DefaultMintTimeout
	}
	if cfg.DirectMints == 0 {
		cfg.DirectMints = 16
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = uuid.NewString
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = NewReplicaID()
	}

	cfg.Store.use(cfg.Metrics, cfg.Now, cfg.Logger)
	p := &Pool{
		store:     cfg.Store,
		profiles:  make(map[string]*profile, len(cfg.Profiles)),
		skew:      cfg.MaxClockSkew,
		jitter:    cfg.ExpiryJitter,
		log:       cfg.Logger,
		tracer:    cfg.TracerProvider.Tracer("github.com/tokenpool/tokenpool/pool"),
		now:       cfg.Now,
		newID:     cfg.NewID,
		replicaID: cfg.ReplicaID,
		random:    rand.Float64,
		metrics:   cfg.Metrics,
		closed:    make(chan struct{}),
	}
	for _, pr := range cfg.Profiles {
		if !profileName.MatchString(pr.Name) {
			return nil, fmt.Errorf("pool: config: profile name %q: want 1-64 of A-Z a-z 0-9 . _ -", pr.Name)
		}
		if _, dup := p.profiles[pr.Name]; dup {
			return nil, fmt.Errorf("pool: config: profile %q listed twice", pr.Name)
		}
		if pr.Minter == nil {
			return nil, fmt.Errorf("pool: config: profile %q: Minter is required", pr.Name)
		}
		if pr.Target < 0 {
			return nil, fmt.Errorf("pool: config: profile %q: target %d: want 0 (no pool) or more", pr.Name, pr.Target)
		}
		if pr.MinRemaining <= 0 {
			pr.MinRemaining = DefaultMinRemaining
		}
		if pr.Shards <= 0 {
			pr.Shards = 1
		}
		if pr.Shards > MaxShards {
			return nil, fmt.Errorf("pool: config: profile %q: at most %d shards", pr.Name, MaxShards)
		}
		prof := &profile{Profile: pr, tags: shardTags(pr.Name, pr.Shards), health: make([]shardHealth, pr.Shards),
			minLife: pr.MinRemaining + cfg.MaxClockSkew,
			sizing:  Sizing{Floor: pr.Target, Ceiling: pr.MaxTarget, Headroom: cfg.Headroom, Margin: cfg.Margin}.withDefaults()}
		if cfg.DirectMints > 0 {
			prof.direct = make(chan struct{}, cfg.DirectMints)
		}
		p.profiles[pr.Name] = prof
		p.names = append(p.names, pr.Name)
		cfg.Metrics.known(pr.Name)
	}
	sort.Strings(p.names)
	p.refill = newRefiller(p, cfg)
	return p, nil
}

// Open starts the refiller. Call Close to stop it.
func (p *Pool) Open() {
	p.refill.start()
}

// Drain stops the refiller while the pool keeps handing out: no new mints
// start, mints in flight finish and are pooled until ctx is done, then they
// are cancelled and their reservations released; credentials it still
// holds (parked while Redis failed) are pooled, or counted as lost. Drain
// is idempotent; Close calls it.
func (p *Pool) Drain(ctx context.Context) error {
	return p.refill.stop(ctx)
}

// Close drains the refiller (see Drain) and closes the pool: Get answers
// ErrClosed. Close is idempotent.
func (p *Pool) Close(ctx context.Context) error {
	p.closeOnce.Do(func() { close(p.closed) })
	return p.refill.stop(ctx)
}

// Profiles returns the profile names, sorted.
func (p *Pool) Profiles() []string { return append([]string(nil), p.names...) }

// Get hands one credential of the named profile to one caller. requestID
// must be unique per request and not chosen by the caller: a retried Redis
// call with the same requestID gets the same credential back.
//
// On a miss it mints directly within ctx's deadline. It returns an error
// matching ErrUnknownProfile, ErrUnavailable (with RetryAfter), ErrProvider
// or ErrClosed.
func (p *Pool) Get(ctx context.Context, profileName, requestID string) (Handout, error) {
	h, _, err := p.GetLimited(ctx, profileName, requestID, nil, nil)
	return h, err
}

// GetLimited is Get for a caller, behind its limits: a credential minted
// for it is minted for who (which a profile that binds credentials to
// their caller needs), and checks are applied in order first, in the same
// Redis round trip as the take. When one denies,
// nothing is taken or minted and the error matches limiter.ErrDenied. It
// returns the decisions of the checks reached whenever they were applied,
// with an error too, for the caller's RateLimit headers.
func (p *Pool) GetLimited(ctx context.Context, profileName, requestID string, who *mint.Caller, checks []limiter.Check) (Handout, []limiter.Decision, error) {
	pr, ok := p.profiles[profileName]
	if !ok {
		return Handout{}, nil, fmt.Errorf("%w %q", ErrUnknownProfile, profileName)
	}
	return p.handOut(ctx, pr, issuance{requestID: requestID, who: who}, checks)
}

// handOut is GetLimited on pr, for the request is.
func (p *Pool) handOut(ctx context.Context, pr *profile, is issuance, checks []limiter.Check) (Handout, []limiter.Decision, error) {
	select {
	case <-p.closed:
		return Handout{}, nil, ErrClosed
	default:
	}
	h, spent, err := p.getLimited(ctx, pr, is, checks)
	if err != nil && !errors.Is(err, limiter.ErrDenied) {
		p.refund(spent) // nothing delivered: its quotas' sessions go back
		return Handout{}, spent.ds, err
	}
	h.quota = spent
	return h, spent.ds, err
}

// getLimited is GetLimited on pr: it returns what the request spent of
// its quotas with the handout or the error.
func (p *Pool) getLimited(ctx context.Context, pr *profile, is issuance, checks []limiter.Check) (Handout, quotaSpend, error) {
	spent := quotaSpend{checks: checks}
	if pr.Target > 0 {
		h, taken, tag, err := p.take(ctx, pr, is, checks)
		p.refill.wake()
		spent.ds, spent.tag, spent.claim = taken, tag, is.requestID
		if !errors.Is(err, ErrEmpty) {
			return h, spent, err
		}
	} else if len(checks) > 0 {
		var err error
		if spent.ds, err = p.store.limits.AllowAll(ctx, checks); err != nil {
			return Handout{}, spent, storeError("limits", err)
		}
		if !limiter.Allowed(checks, spent.ds) {
			return Handout{}, spent, fmt.Errorf("pool: %w", limiter.ErrDenied)
		}
	}
	h, err := p.mintDirect(ctx, pr, is)
	return h, spent, err
}

// take takes from pr's pool behind checks: from one shard picked at
// random, then from the others in turn while they are empty or failing
// (see takeOrder). The first take that reaches Redis applies the checks
// and counts the demand; a miss is counted once, when every shard that
// answered was empty. It fails only when no shard answered. spentIn is
// the shard whose take script applied the checks (its undo record holds
// the quotas they spent), "" when they were applied beside the takes.
func (p *Pool) take(ctx context.Context, pr *profile, is issuance, checks []limiter.Check) (_ Handout, _ []limiter.Decision, spentIn string, _ error) {
	rec := p.store.recordArgs(pr, is, SourcePool)
	counts := countDemand | countMiss
	if len(pr.tags) > 1 {
		counts = countDemand
	}
	var (
		h        Handout
		ds       []limiter.Decision
		err      error
		answered = -1 // the first shard that answered
	)
	p.takeOrder(pr, func(i int) bool {
		c, cnt := checks, counts
		if answered >= 0 || ds != nil {
			c, cnt = nil, 0 // applied by an earlier shard's take
		}
		var taken []limiter.Decision
		h, taken, err = p.store.takeFrom(ctx, pr.tags[i], is.requestID, pr.minLife, c, cnt, rec)
		if ds == nil {
			ds = taken
			if taken != nil && p.store.cluster == nil {
				spentIn = pr.tags[i]
			}
		}
		var ue *UnrecoveredError
		if errors.As(err, &ue) {
			p.refill.unrecovered(ue)
		}
		switch {
		case len(c) > 0 && taken != nil && !limiter.Allowed(c, taken):
			return false // denied: whatever this take's own outcome, no other shard may serve
		case err == nil:
			pr.health[i].ok()
			return false
		case errors.Is(err, ErrEmpty):
			pr.health[i].ok()
			if answered < 0 {
				answered = i
			}
			return true
		case errors.As(err, new(*limitsError)):
			return false // the limits' Redis failed, not the shard's
		case errors.Is(err, ErrUnavailable) && ctx.Err() == nil:
			// This shard's Redis failed: the others may serve.
			pr.health[i].fail(p.now().Add(shardRetry))
			return true
		}
		return false // denied, or the request ended
	})
	if err == nil {
		p.metrics.handout(pr.Name, SourcePool)
		return h, ds, spentIn, nil
	}
	if answered < 0 || ctx.Err() != nil || !errors.Is(err, ErrEmpty) && !errors.Is(err, ErrUnavailable) {
		return Handout{}, ds, spentIn, err // no shard answered, or denied, or the request ended
	}
	if len(pr.tags) > 1 {
		// Best effort: a counter.
		_ = p.store.count(ctx, pr.tags[answered], "misses", 1)
	}
	p.metrics.miss(pr.Name)
	return Handout{}, ds, spentIn, ErrEmpty
}

// Return puts back a handout whose caller never received it (the client
// had gone before the answer could be written): a pooled one is pooled
// again if still usable, else counted as waste; one minted for its request
// is pooled if the pool has room for it, else counted as waste. Return runs
// on a short context of its own, since the request's is usually what ended.
// On-demand handouts (settings no pool has) can't be pooled.
func (p *Pool) Return(h Handout) {
	if !h.quota.inTake(h) {
		p.refund(h.quota) // else recovering the take refunds them
	}
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	defer cancel()
	pr, ok := p.profiles[h.Profile]
	if h.Source == SourceOnDemand || h.Source == SourceDirect && (!ok || pr.Target == 0) {
		// Not pooled: void its record here (a pooled one's goes with its
		// take's recovery, a direct one's with its put).
		if err := p.store.unrecord(ctx, h.record); err != nil {
			p.log.Warn("pool: voiding the record of a handout nobody received", "profile", h.Profile, "err", err)
		}
	}
	if !ok || pr.Target == 0 {
		return
	}
	switch h.Source {
	case SourcePool:
		p.metrics.returned(pr.Name)
		e := &UnrecoveredError{Profile: h.tag, Claim: h.claim, MinRemaining: pr.minLife, At: h.sentAt, epoch: h.epoch, deadline: h.deadline}
		r, err := p.store.recoverClaim(ctx, e)
		if err != nil || !p.store.recoveredInTime(e, r) {
			e.Err = cmp.Or(err, errors.New("pool: return: recovered too late to tell"))
			p.refill.unrecovered(e)
		}
	case SourceDirect:
		p.metrics.returned(pr.Name)
		e := parked{tag: pr.tags[rand.N(len(pr.tags))],
			putArgs: putArgs{entryID: h.ID, retire: p.refill.retireAt(h.ExpiresAt, pr.minLife), cred: h.Credential, void: h.record.request}}
		if h.record.request != "" {
			e.tag = h.record.tag // where its record is, which the put voids
		}
		var err error
		if _, e.sentTo, err = p.store.put(ctx, e.tag, e.putArgs, pr.minLife); err != nil {
			p.refill.park(pr.Name, e)
		}
	}
}

// Ready reports whether the pool can serve: Redis answers, and for every
// profile the provider is available or the pool holds entries.
func (p *Pool) Ready(ctx context.Context) error {
	if err := p.store.Ping(ctx); err != nil {
		return err
	}
	for _, name := range p.names {
		a, ok := p.profiles[name].Minter.(availability)
		if !ok || a.Available() {
			continue
		}
		st, err := p.Stats(ctx, name)
		if err != nil {
			return err
		}
		if st.Usable == 0 {
			return fmt.Errorf("pool: profile %q: provider unavailable and pool empty", name)
		}
	}
	return nil
}

// SetPrewarm raises the named profile's floor to ready, for every
// replica, until the given time; ready 0 ends a prewarm.
func (p *Pool) SetPrewarm(ctx context.Context, profileName string, ready int, until time.Time) error {
	pr, ok := p.profiles[profileName]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownProfile, profileName)
	}
	if pr.Target == 0 {
		return &mint.Error{Code: mint.CodeInvalid, Message: "this profile keeps no pool"}
	}
	if ready > pr.sizing.Ceiling {
		return &mint.Error{Code: mint.CodeInvalid, Message: fmt.Sprintf(
			"ready: at most %d, this profile's ceiling (max_target, TOKENPOOL_POOL_MAX)", pr.sizing.Ceiling)}
	}
	for i, tag := range pr.tags {
		if err := p.store.setPrewarm(ctx, tag, share(ready, i, len(pr.tags)), ready, until); err != nil {
			return err
		}
	}
	p.refill.wake()
	return nil
}

// Prewarm returns the named profile's active prewarm (ready 0: none).
func (p *Pool) Prewarm(ctx context.Context, profileName string) (int, time.Time, error) {
	pr, ok := p.profiles[profileName]
	if !ok {
		return 0, time.Time{}, fmt.Errorf("%w %q", ErrUnknownProfile, profileName)
	}
	return p.store.Prewarm(ctx, pr.tags[0])
}

// Stats returns the named profile's shared snapshot, its shards' added up.
// A shard whose Redis fails is left out and counted in Unreachable; Stats
// fails only when no shard answers.
func (p *Pool) Stats(ctx context.Context, profileName string) (Stats, error) {
	pr, ok := p.profiles[profileName]
	if !ok {
		return Stats{}, fmt.Errorf("%w %q", ErrUnknownProfile, profileName)
	}
	var (
		sum     Stats
		lastErr error
	)
	for _, tag := range pr.tags {
		st, err := p.store.Stats(ctx, tag, pr.minLife)
		if err != nil {
			sum.Unreachable++
			lastErr = err
			continue
		}
		sum = sum.add(st)
	}
	if sum.Unreachable == len(pr.tags) {
		return Stats{}, lastErr
	}
	p.costs(pr, &sum)
	return sum, nil
}
