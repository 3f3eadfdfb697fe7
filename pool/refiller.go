package pool

import (
	"context"
	"errors"
	"github.com/tokenpool/tokenpool/internal/backoff"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// refiller keeps every profile at its target. It is one loop goroutine,
// woken by takes (non-blocking send on wakeC) and by a timer, that leases
// reservations in Redis and starts one goroutine per granted mint. It owns
// all of them: stop cancels and waits.
type refiller struct {
	p           *Pool
	concurrency int
	interval    time.Duration
	mintTimeout time.Duration
	lease       time.Duration

	wakeC  chan struct{}
	seq    atomic.Uint64 // reservation id counter
	rounds atomic.Int64  // loop rounds done: tests wait for rounds, not for time

	loopCancel context.CancelFunc // stops the loop: no new reservations
	mintCancel context.CancelFunc // cancels mints in flight
	mintCtx    context.Context
	wg         sync.WaitGroup // the loop and every mint goroutine
	startOnce  sync.Once
	stopOnce   sync.Once

	mu    sync.Mutex
	state map[string]*refillState // guarded by mu
}

// refillState is the refiller's local view of one profile.
type refillState struct {
	healthy   bool                // the last mint succeeded; until then, one mint at a time
	parked    []parked            // minted, but Redis failed the put
	lostWaste int64               // parked entries that expired, not yet counted in Redis
	pending   []*UnrecoveredError // failed takes whose entries are still to recover
	lost      int64               // credentials lost, not yet counted in Redis
	inFlight  int                 // mints running on this replica
	failures  int                 // consecutive failed mints
	notBefore time.Time           // backoff: no reservation before this
	latency   time.Duration       // moving average of a mint's duration
	life      time.Duration       // moving average of a new credential's usable life; 0: none seen
	demand    Demand              // the fleet's demand, as the last reservation round saw it
	shards    []reservation       // what each shard's last reservation round saw
	rounds    int                 // reservation rounds so far
	target    int                 // the target of the last round
	lastLog   time.Time           // last failure logged
	quiet     int                 // failures not logged since lastLog
	targetLog time.Time           // last target change logged
	loggedAt  int                 // the target then
}

// parked is a minted credential whose put failed (Redis down). It is kept
// in memory and put back when Redis answers again, unless it goes stale
// first; then it is counted as waste.
type parked struct {
	tag            string // the shard it goes to
	resID, entryID string
	retire         time.Time
	cred           Credential
}

// maxParked bounds the parked credentials per profile; past it the oldest
// is dropped as waste. Reservations stop while Redis is down, so only the
// mints in flight when it went down can be parked.
const maxParked = 64

// Log rate limits, per profile.
const (
	failureLogEvery = 30 * time.Second
	targetLogEvery  = 10 * time.Second
)

func newRefiller(p *Pool, cfg Config) *refiller {
	r := &refiller{
		p:           p,
		concurrency: cfg.RefillConcurrency,
		interval:    cfg.RefillInterval,
		mintTimeout: cfg.MintTimeout,
		lease:       cfg.MintTimeout + 5*time.Second,
		wakeC:       make(chan struct{}, 1),
		state:       make(map[string]*refillState, len(p.names)),
	}
	for _, name := range p.names {
		r.state[name] = &refillState{latency: 500 * time.Millisecond, shards: make([]reservation, len(p.profiles[name].tags))}
	}
	return r
}

func (r *refiller) start() {
	r.startOnce.Do(func() {
		var loopCtx context.Context
		loopCtx, r.loopCancel = context.WithCancel(context.Background())
		r.mintCtx, r.mintCancel = context.WithCancel(context.Background())
		r.wg.Add(1)
		go r.loop(loopCtx)
	})
}

// stop ends the loop, lets mints in flight finish until ctx is done, then
// cancels them. Cancelled mints release their reservations.
func (r *refiller) stop(ctx context.Context) error {
	var err error
	r.stopOnce.Do(func() {
		if r.loopCancel == nil { // never started
			return
		}
		r.loopCancel()
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
			r.mintCancel()
			<-done
		}
		r.mintCancel()
		r.flush()
	})
	return err
}

// wake asks the loop for a refill round without blocking.
func (r *refiller) wake() {
	select {
	case r.wakeC <- struct{}{}:
	default:
	}
}

// minRoundGap spaces refill rounds: takes wake the loop, but under load
// one round per gap sees them all, instead of a reserve call per take.
const minRoundGap = 20 * time.Millisecond

func (r *refiller) loop(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wakeC:
		case <-t.C:
		}
		if wait := minRoundGap - time.Since(last); wait > 0 {
			select { // wakes meanwhile wait in wakeC for the next round
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
		}
		last = time.Now()
		for _, name := range r.p.names {
			r.refillProfile(ctx, r.p.profiles[name])
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r.p.sampleCosts(sctx)
		cancel()
		r.rounds.Add(1)
		// ±10% so replicas started together don't tick together.
		t.Reset(r.interval*9/10 + rand.N(r.interval/5+1))
	}
}

// refillProfile leases as many reservations as the profile lacks (up to
// the free mint slots on this replica) and starts a mint for each.
func (r *refiller) refillProfile(ctx context.Context, pr *profile) {
	if pr.Target == 0 {
		return // no pool
	}
	if !r.recoverPending(pr) || !r.unpark(pr) {
		return // Redis still fails; don't lease more
	}
	a, ok := r.plan(pr)
	if !ok {
		return
	}
	// A span per round that reserves: its Redis calls are its children,
	// and so are the mints it starts (which outlive it).
	ctx, span := r.p.tracer.Start(ctx, "pool.refill", trace.WithAttributes(
		attribute.String("tokenpool.profile", pr.Name), attribute.Int("tokenpool.pool.want", a.want)))
	defer span.End()
	reserved := 0
	defer func() { span.SetAttributes(attribute.Int("tokenpool.pool.reserved", reserved)) }()
	// Each shard holds its share of the target; the mint slots this
	// replica has free go to the shards in turn.
	n := len(pr.tags)
	r.mu.Lock()
	start := r.state[pr.Name].rounds % n // the first shard to get a slot turns round
	r.state[pr.Name].rounds++
	r.mu.Unlock()
	for k := range n {
		i := (start + k) % n
		tag := pr.tags[i]
		sa := a
		sa.target, sa.idPrefix = share(a.target, i, n), r.p.replicaID+"/"+tag+"/"
		// The reservation round runs to completion even when the loop is
		// told to stop, so no lease is granted that nobody knows about.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		res, err := r.p.store.reserve(rctx, tag, sa)
		cancel()
		if err != nil {
			span.SetStatus(codes.Error, "reserve failed")
			r.failed(pr.Name, "reserve", err)
			return
		}
		seen := res
		seen.ids = nil
		r.mu.Lock()
		r.state[pr.Name].shards[i] = seen
		r.mu.Unlock()
		if ctx.Err() != nil {
			r.releaseAll(tag, "released", res.ids)
			return
		}
		r.mu.Lock()
		r.state[pr.Name].inFlight += len(res.ids)
		r.mu.Unlock()
		reserved += len(res.ids)
		for _, id := range res.ids {
			r.wg.Add(1)
			go r.mint(trace.SpanContextFromContext(ctx), pr, tag, id)
		}
		a.want -= len(res.ids)
		a.firstID += uint64(len(res.ids))
		if a.want <= 0 && k+1 < n {
			break // the other shards are as last seen
		}
	}
	var sum reservation
	r.mu.Lock()
	for _, sh := range r.state[pr.Name].shards {
		sum.usable, sum.inFlight, sum.target = sum.usable+sh.usable, sum.inFlight+sh.inFlight, sum.target+sh.target
		sum.demand.Fast += sh.demand.Fast
		sum.demand.Slow += sh.demand.Slow
	}
	r.mu.Unlock()
	r.observe(pr, sum)
}

// plan decides one reservation round for pr: the target from the demand
// last seen, the lead, and as many candidate reservations as this replica
// has free mint slots. ok is false when there is nothing to do (no slot,
// or backing off).
func (r *refiller) plan(pr *profile) (a reserveArgs, ok bool) {
	now := r.p.now()
	r.mu.Lock()
	st := r.state[pr.Name]
	want := r.concurrency - st.inFlight
	if !st.healthy {
		// Probe: at start and after a failure, one mint at a time, so a
		// rejected key or a dead provider costs one call, not a batch.
		want = 1 - st.inFlight
	}
	// Every take wakes the refiller, so a take's replacement is reserved
	// within a round gap and pooled a mint later; half the latency again
	// covers a slow mint. That is the pipeline the target sizes.
	refillLead := minRoundGap + st.latency*3/2
	target := pr.sizing.Target(st.demand, refillLead, st.life)
	// An entry that goes stale with no take to wake the refiller is seen
	// at the next tick, up to 1.2 intervals away: entries unusable by then
	// and a mint (doubled for a margin) don't count as usable.
	lead := r.interval*6/5 + 2*st.latency
	backingOff := now.Before(st.notBefore)
	r.mu.Unlock()
	if want <= 0 || backingOff {
		return reserveArgs{}, false
	}
	// Reservation ids are this replica's prefix and a counter, made in the
	// script: a round sends two short arguments, not want ids.
	first := r.seq.Add(uint64(want)) - uint64(want) + 1
	return reserveArgs{
		target: target, want: want, idPrefix: r.p.replicaID + "/" + pr.Name + "/", firstID: first,
		lease: r.lease, minRemaining: pr.minLife, lead: lead,
	}, true
}

// observe keeps what a reservation round saw, and logs a target change at
// most every targetLogEvery.
func (r *refiller) observe(pr *profile, res reservation) {
	now := r.p.now()
	r.mu.Lock()
	st := r.state[pr.Name]
	st.demand, st.target = res.demand, res.target
	logIt := res.target != st.loggedAt && now.Sub(st.targetLog) >= targetLogEvery
	from := st.loggedAt
	if logIt {
		st.targetLog, st.loggedAt = now, res.target
	}
	r.mu.Unlock()
	if logIt {
		r.p.log.Info("pool: target changed", "profile", pr.Name, "from", from, "to", res.target,
			"demand_fast", res.demand.Rounded().Fast, "demand_slow", res.demand.Rounded().Slow, "usable", res.usable, "in_flight", res.inFlight)
	}
}

// mint mints one credential for reservation resID of shard tag and pools
// it there; its span is a child of the round's, round.
func (r *refiller) mint(round trace.SpanContext, pr *profile, tag, resID string) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		r.state[pr.Name].inFlight--
		r.mu.Unlock()
		r.wake()
	}()

	ctx, cancel := context.WithTimeout(trace.ContextWithSpanContext(r.mintCtx, round), r.mintTimeout)
	defer cancel()
	ctx, span := r.p.tracer.Start(ctx, "pool.mint", trace.WithAttributes(attribute.String("tokenpool.profile", pr.Name)))
	defer span.End()
	start := time.Now()
	c, err := pr.Minter.Mint(ctx)
	took := time.Since(start)
	if err == nil {
		err = checkMaxLife(c, r.p.now()) // a short life is pooled and counted as waste
	}
	r.p.metrics.mint(pr.Name, "refill", err)
	if err != nil {
		why := "mint_failed"
		if r.mintCtx.Err() != nil {
			why = "released" // shutting down: not the provider's fault
		}
		span.SetStatus(codes.Error, why)
		r.releaseAll(tag, why, []string{resID})
		if why == "mint_failed" {
			r.failed(pr.Name, "mint", err)
		}
		return
	}
	r.succeeded(pr.Name, took, c.ExpiresAt.Sub(r.p.now())-pr.minLife)

	// Pooling must outlive a shutdown's cancellation: the credential is
	// already minted and paid for.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer pcancel()
	e := parked{tag: tag, resID: resID, entryID: r.p.newID(), retire: r.retireAt(c.ExpiresAt, pr.minLife), cred: c}
	if _, err := r.p.store.put(pctx, tag, e.resID, e.entryID, e.retire, e.cred, pr.minLife); err != nil {
		r.park(pr.Name, e)
		r.failed(pr.Name, "put", err)
	}
}

// park keeps a credential whose put failed, dropping the oldest as waste
// when too many are parked.
func (r *refiller) park(profile string, e parked) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.state[profile]
	if len(st.parked) >= maxParked {
		st.parked = st.parked[1:]
		st.lostWaste++
	}
	st.parked = append(st.parked, e)
}

// unpark puts parked credentials back into Redis, dropping the stale ones
// as waste. It reports false when Redis still fails.
func (r *refiller) unpark(pr *profile) bool {
	r.mu.Lock()
	st := r.state[pr.Name]
	list, lost := st.parked, st.lostWaste
	st.parked, st.lostWaste = nil, 0
	r.mu.Unlock()
	if len(list) == 0 && lost == 0 {
		return true
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cutoff := r.p.now().Add(pr.minLife)
	var pooled int
	for i, e := range list {
		if !e.retire.After(cutoff) {
			lost++
			continue
		}
		if _, err := r.p.store.put(ctx, e.tag, e.resID, e.entryID, e.retire, e.cred, pr.minLife); err != nil {
			r.mu.Lock()
			st.parked = append(list[i:], st.parked...)
			st.lostWaste += lost
			r.mu.Unlock()
			return false
		}
		pooled++
	}
	if lost > 0 {
		if err := r.p.store.count(ctx, pr.tags[0], "wasted", lost); err != nil {
			r.mu.Lock()
			st.lostWaste += lost
			r.mu.Unlock()
			return false
		}
	}
	r.p.log.Warn("pool: credentials minted while Redis was failing", "profile", pr.Name,
		"pooled", pooled, "expired_unpooled", lost)
	return true
}

// retireAt is when an entry expiring at exp stops being handed out: exp
// less a random part of its usable life, so a batch minted together is
// retired (and replaced) over a spread of time instead of all at once.
func (r *refiller) retireAt(exp time.Time, minLife time.Duration) time.Time {
	usable := exp.Sub(r.p.now()) - minLife
	if usable <= 0 || r.p.jitter == 0 {
		return exp
	}
	return exp.Add(-time.Duration(r.p.random() * r.p.jitter * float64(usable)))
}

func (r *refiller) releaseAll(tag, why string, ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.p.store.release(ctx, tag, why, ids...); err != nil {
		// The leases lapse by themselves; nothing is lost.
		r.p.log.Warn("pool: releasing reservations", "profile", profileOf(tag), "n", len(ids), "err", err)
	}
}

func (r *refiller) succeeded(profile string, took, life time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.state[profile]
	st.failures = 0
	st.healthy = true
	st.notBefore = time.Time{}
	st.latency = (st.latency*4 + took) / 5
	if st.life == 0 {
		st.life = life
	} else {
		st.life = (st.life*4 + life) / 5
	}
}

// failed backs the profile off: capped exponential backoff with jitter, or
// longer when the error says when to retry, up to maxBackoff: the minter
// itself refuses calls for as long as the provider asked (without calling
// it), so looking again every few seconds costs nothing and notices a
// pause an operator lifted. Logs are rate-limited.
func (r *refiller) failed(profile, op string, err error) {
	r.mu.Lock()
	st := r.state[profile]
	st.failures++
	st.healthy = false
	wait := backoffAfter(st.failures)
	var u *UnavailableError
	if errors.As(err, &u) && u.RetryAfter > wait {
		wait = min(u.RetryAfter, maxBackoff)
	}
	now := r.p.now()
	st.notBefore = now.Add(wait)
	logIt := now.Sub(st.lastLog) >= failureLogEvery
	quiet, failures := st.quiet, st.failures
	if logIt {
		st.lastLog, st.quiet = now, 0
	} else {
		st.quiet++
	}
	r.mu.Unlock()
	if logIt {
		r.p.log.Warn("pool: refill "+op+" failed", "profile", profile, "err", err,
			"consecutive_failures", failures, "backoff", wait.String(), "suppressed", quiet)
	}
}

// maxBackoff caps how long a failing profile waits before it tries again.
const maxBackoff = 5 * time.Second

// backoffAfter is 200ms doubled per consecutive failure, capped at 5s, with
// the upper half jittered. The cap is low because a provider that fails is
// paced by its breaker and Retry-After (errors carrying a longer wait win);
// what is left is mostly Redis, and the pool should refill soon after it
// returns.
func backoffAfter(failures int) time.Duration {
	return backoff.Jittered(200*time.Millisecond, maxBackoff, failures)
}
