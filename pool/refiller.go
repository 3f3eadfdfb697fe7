package pool

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenpool/tokenpool/internal/backoff"
	"github.com/tokenpool/tokenpool/mint"
)

// refiller keeps every profile at its target. It is one loop goroutine,
// woken by takes (non-blocking send on wakeC) and by a timer, that leases
// reservations in Redis and starts one goroutine per granted mint. It owns
// all of them: stop cancels and waits.
type refiller struct {
	// What the refiller works with, given by the Pool.
	store      refillStore
	profiles   []*profile // in name order
	now        func() time.Time
	entryID    func(mint.Credential) string
	random     func() float64 // in [0, 1): the retire jitter's draw
	jitter     float64
	replicaID  string
	log        *slog.Logger
	metrics    *Metrics
	tracer     trace.Tracer
	afterRound func(context.Context) // after each round (the Pool samples its costs)

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
	shardOff  []shardBackoff      // each shard's Redis failures: it backs off alone
	reserving []bool              // a sharded profile's reservation under way, per shard
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
	tag string // the shard it goes to
	putArgs
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

// refillStore is what the refiller needs of the Store.
type refillStore interface {
	reserve(ctx context.Context, tag string, a reserveArgs) (reservation, error)
	put(ctx context.Context, tag string, a putArgs, minRemaining time.Duration) (pooled bool, sentTo string, err error)
	release(ctx context.Context, tag, why string, resIDs ...string) error
	count(ctx context.Context, tag, counter string, n int64) error
	recoverClaim(ctx context.Context, e *UnrecoveredError) (int64, error)
	recoveredInTime(e *UnrecoveredError, r int64) bool
	seen(tag string) bool
}

func newRefiller(p *Pool, cfg Config) *refiller {
	r := &refiller{
		store:       p.store,
		now:         p.now,
		entryID:     p.entryID,
		random:      func() float64 { return p.random() },
		jitter:      p.jitter,
		replicaID:   p.replicaID,
		log:         p.log,
		metrics:     p.metrics,
		tracer:      p.tracer,
		afterRound:  p.sampleCosts,
		concurrency: cfg.RefillConcurrency,
		interval:    cfg.RefillInterval,
		mintTimeout: cfg.MintTimeout,
		lease:       cfg.MintTimeout + 5*time.Second,
		wakeC:       make(chan struct{}, 1),
		state:       make(map[string]*refillState, len(p.names)),
	}
	for _, name := range p.names {
		pr := p.profiles[name]
		r.profiles = append(r.profiles, pr)
		n := len(pr.tags)
		r.state[name] = &refillState{latency: 500 * time.Millisecond, shards: make([]reservation, n),
			shardOff: make([]shardBackoff, n), reserving: make([]bool, n)}
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
		for _, pr := range r.profiles {
			r.refillProfile(ctx, pr)
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r.afterRound(sctx)
		cancel()
		r.rounds.Add(1)
		// ±10% so replicas started together don't tick together.
		t.Reset(r.interval*9/10 + rand.N(r.interval/5+1))
	}
}

// refillProfile leases as many reservations as the profile lacks (up to
// the free mint slots on this replica) and starts a mint for each. A shard
// whose Redis fails backs off alone; the others go on.
func (r *refiller) refillProfile(ctx context.Context, pr *profile) {
	if pr.Target == 0 {
		return // no pool
	}
	sr := newShardRound(pr)
	r.recoverPending(pr, sr)
	r.unpark(pr, sr)
	a, ok := r.plan(pr)
	if !ok {
		return
	}
	// A span per round that reserves: its Redis calls are its children,
	// and so are the mints it starts (which outlive it).
	ctx, span := r.tracer.Start(ctx, "pool.refill", trace.WithAttributes(
		attribute.String("tokenpool.profile", pr.Name), attribute.Int("tokenpool.pool.want", a.want)))
	defer span.End()
	// Each shard holds its share of the target; the shards whose Redis
	// fails give theirs to the others.
	n := len(pr.tags)
	r.mu.Lock()
	st := r.state[pr.Name]
	start := st.rounds % n // the first shard to get a slot turns round
	st.rounds++
	var up []int // the shards that answered last time
	for i := range n {
		if st.shardOff[i].failures == 0 {
			up = append(up, i)
		}
	}
	var due []int // the shards to reserve on: not failed or backing off, and no reservation under way
	for k := range n {
		if i := (start + k) % n; !st.reserving[i] && r.shardDueLocked(pr, i, sr) {
			due = append(due, i)
		}
	}
	for _, i := range due {
		st.reserving[i] = n > 1
	}
	r.mu.Unlock()
	shareOf := func(i int) int {
		for j, u := range up {
			if u == i {
				return share(a.target, j, len(up))
			}
		}
		return share(a.target, i, n) // a failing shard, looked at again
	}
	// The mint slots this replica has free are split over those shards,
	// the first getting any extra slot. A sharded profile reserves on each
	// shard in a goroutine of its own, so that a shard whose Redis hangs
	// holds up neither the others nor the next rounds.
	for j, i := range due {
		sa := a
		sa.target, sa.idPrefix = shareOf(i), r.replicaID+"/"+pr.tags[i]+"/"
		sa.want = share(a.want, j, len(due))
		a.firstID += uint64(sa.want)
		r.mu.Lock()
		if sa.want == 0 {
			st.reserving[i] = false
			r.mu.Unlock()
			continue
		}
		st.inFlight += sa.want // held for the reservation, so later rounds can't plan them too
		r.mu.Unlock()
		if n == 1 {
			span.SetAttributes(attribute.Int("tokenpool.pool.reserved", r.reserveShard(ctx, pr, i, sa, sr)))
			break
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.reserveShard(ctx, pr, i, sa, sr)
			r.mu.Lock()
			st.reserving[i] = false
			r.mu.Unlock()
		}()
	}
	var sum reservation
	r.mu.Lock()
	for i, sh := range st.shards {
		if st.shardOff[i].failures > 0 {
			continue // unreachable: what it last saw serves nobody
		}
		sum.usable, sum.inFlight, sum.target = sum.usable+sh.usable, sum.inFlight+sh.inFlight, sum.target+sh.target
		sum.demand.Fast += sh.demand.Fast
		sum.demand.Slow += sh.demand.Slow
	}
	r.mu.Unlock()
	r.observe(pr, sum)
}

// reserveShard leases reservations on shard i of pr as sa asks, starts a
// mint for each, and returns how many. The reservation runs to completion
// even when the loop is told to stop, so no lease is granted that nobody
// knows about.
func (r *refiller) reserveShard(ctx context.Context, pr *profile, i int, sa reserveArgs, sr *shardRound) int {
	tag := pr.tags[i]
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.shardTimeout(pr, i))
	res, err := r.store.reserve(rctx, tag, sa)
	cancel()
	granted := len(res.ids)
	if err == nil && ctx.Err() != nil {
		r.releaseAll(tag, "released", res.ids)
		granted = 0
	}
	r.mu.Lock()
	st := r.state[pr.Name]
	st.inFlight += granted - sa.want // the slots held beyond what was granted
	if err == nil {
		seen := res
		seen.ids = nil
		st.shards[i] = seen
	}
	r.mu.Unlock()
	if err != nil {
		trace.SpanFromContext(ctx).SetStatus(codes.Error, "reserve failed")
		sr.failed[i] = true
		r.shardFailed(pr, i, "reserve", err)
		return 0
	}
	r.shardOK(pr, i)
	for _, id := range res.ids[:granted] {
		r.wg.Add(1)
		go r.mint(trace.SpanContextFromContext(ctx), pr, tag, id)
	}
	return granted
}

// shardProbeTimeout bounds a reservation round on a shard whose Redis
// failed last time.
const shardProbeTimeout = 300 * time.Millisecond

// shardBackoff is one shard's run of Redis failures.
type shardBackoff struct {
	failures  int
	notBefore time.Time
}

// shardFailed backs shard i of pr off alone, and has takes pass over it
// meanwhile.
func (r *refiller) shardFailed(pr *profile, i int, op string, err error) {
	now := r.now()
	r.mu.Lock()
	off := &r.state[pr.Name].shardOff[i]
	off.failures++
	wait := backoffAfter(off.failures)
	off.notBefore = now.Add(wait)
	failures := off.failures
	r.mu.Unlock()
	pr.health[i].fail(now.Add(max(wait, shardRetry)))
	r.logFailure(pr.Name, op, err, failures, wait, "shard", pr.tags[i])
}

// shardOK ends shard i's run of failures.
func (r *refiller) shardOK(pr *profile, i int) {
	r.mu.Lock()
	off := &r.state[pr.Name].shardOff[i]
	was := off.failures
	*off = shardBackoff{}
	r.mu.Unlock()
	pr.health[i].ok()
	if was > 0 {
		r.log.Info("pool: a shard answers again", "profile", pr.Name, "shard", pr.tags[i], "failures", was)
	}
}

// shardRound is what one refill round (or the flush at shutdown) learnt
// of a profile's shards: one that failed in it is not tried again in it.
// A flush tries every shard once, backing off or not.
type shardRound struct {
	failed []bool
	flush  bool
}

func newShardRound(pr *profile) *shardRound { return &shardRound{failed: make([]bool, len(pr.tags))} }

// shardDue reports whether round sr may call shard i of pr: it has not
// failed in this round, and it is not backing off, unless a take found it
// answering since (takes mark it up) or this is the flush.
func (r *refiller) shardDue(pr *profile, i int, sr *shardRound) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shardDueLocked(pr, i, sr)
}

func (r *refiller) shardDueLocked(pr *profile, i int, sr *shardRound) bool {
	if i < 0 || sr.failed[i] {
		return false
	}
	now := r.now()
	backingOff := now.Before(r.state[pr.Name].shardOff[i].notBefore)
	return sr.flush || !backingOff || !pr.health[i].down(now)
}

// shardTimeout bounds a call on shard i of pr: short when its Redis failed
// last time, or a take found it failing, so that it can't hold up the
// round for the other shards.
func (r *refiller) shardTimeout(pr *profile, i int) time.Duration {
	r.mu.Lock()
	failing := r.state[pr.Name].shardOff[i].failures > 0
	r.mu.Unlock()
	if failing || pr.health[i].down(r.now()) {
		return shardProbeTimeout
	}
	return 2 * time.Second
}

// shardCall runs call on shard i of pr, when round sr may call it (see
// shardDue), with a short deadline when its Redis failed last time, and
// records the outcome: a failure backs the shard off. It reports whether
// call ran and succeeded.
func (r *refiller) shardCall(pr *profile, i int, sr *shardRound, op string, call func(ctx context.Context) error) bool {
	if !r.shardDue(pr, i, sr) {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.shardTimeout(pr, i))
	defer cancel()
	if err := call(ctx); err != nil {
		sr.failed[i] = true
		r.shardFailed(pr, i, op, err)
		return false
	}
	r.shardOK(pr, i)
	return true
}

// shardIndex is the index of tag among pr's shards, or -1.
func shardIndex(pr *profile, tag string) int {
	for i, t := range pr.tags {
		if t == tag {
			return i
		}
	}
	return -1
}

// plan decides one reservation round for pr: the target from the demand
// last seen, the lead, and as many candidate reservations as this replica
// has free mint slots. ok is false when there is nothing to do (no slot,
// or backing off).
func (r *refiller) plan(pr *profile) (a reserveArgs, ok bool) {
	now := r.now()
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
		target: target, want: want, idPrefix: r.replicaID + "/" + pr.Name + "/", firstID: first,
		lease: r.lease, minRemaining: pr.minLife, lead: lead,
	}, true
}

// observe keeps what a reservation round saw, and logs a target change at
// most every targetLogEvery.
func (r *refiller) observe(pr *profile, res reservation) {
	now := r.now()
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
		r.log.Info("pool: target changed", "profile", pr.Name, "from", from, "to", res.target,
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
	ctx, span := r.tracer.Start(ctx, "pool.mint", trace.WithAttributes(attribute.String("tokenpool.profile", pr.Name)))
	defer span.End()
	start := time.Now()
	c, err := pr.Minter.Mint(ctx, mint.Request{})
	took := time.Since(start)
	if err == nil {
		err = checkMaxLife(c, r.now()) // a short life is pooled and counted as waste
	}
	r.metrics.mint(pr.Name, "refill", err)
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
	r.succeeded(pr.Name, took, c.ExpiresAt.Sub(r.now())-pr.minLife)

	// Pooling must outlive a shutdown's cancellation: the credential is
	// already minted and paid for.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer pcancel()
	e := parked{tag: tag, putArgs: putArgs{resID: resID, entryID: r.entryID(c), retire: r.retireAt(c.ExpiresAt, pr.minLife), cred: c}}
	var err2 error
	if _, e.sentTo, err2 = r.store.put(pctx, tag, e.putArgs, pr.minLife); err2 != nil {
		r.park(pr.Name, e)
		if !errors.Is(err2, errNoEpoch) {
			r.shardFailed(pr, shardIndex(pr, tag), "put", err2)
		}
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
// as waste. One whose shard fails goes to another shard; what no shard
// takes stays parked.
func (r *refiller) unpark(pr *profile, sr *shardRound) {
	r.mu.Lock()
	st := r.state[pr.Name]
	list, lost := st.parked, st.lostWaste
	st.parked, st.lostWaste = nil, 0
	r.mu.Unlock()
	if len(list) == 0 && lost == 0 {
		return
	}
	cutoff := r.now().Add(pr.minLife)
	var pooled int
	var kept []parked
	for _, e := range list {
		if !e.retire.After(cutoff) {
			lost++
			continue
		}
		if r.putAnywhere(pr, &e, sr) {
			pooled++
		} else {
			kept = append(kept, e)
		}
	}
	if lost > 0 && !r.countAny(pr, sr, "", "wasted", lost) {
		r.mu.Lock()
		st.lostWaste += lost
		r.mu.Unlock()
		lost = 0
	}
	if len(kept) > 0 {
		r.mu.Lock()
		st.parked = append(kept, st.parked...)
		r.mu.Unlock()
	}
	if pooled > 0 || lost > 0 {
		r.log.Warn("pool: credentials minted while Redis was failing", "profile", pr.Name,
			"pooled", pooled, "expired_unpooled", lost, "still_parked", len(kept))
	}
}

// putAnywhere pools a parked credential in its own shard or, when that
// shard fails and no earlier put of it may have run there, in another one
// that answers (its reservation lapses where it was leased): one that may
// be pooled in its own shard already must not be pooled twice. It reports
// whether a shard took it; e.sentTo is updated for the next try.
func (r *refiller) putAnywhere(pr *profile, e *parked, sr *shardRound) bool {
	own := max(shardIndex(pr, e.tag), 0)
	n := len(pr.tags)
	for k := range n {
		if k > 0 && (e.sentTo != "" || e.void != "") {
			return false // or its record, which only its own shard's put voids, would stay
		}
		i := (own + k) % n
		if !r.store.seen(pr.tags[i]) {
			continue // no reservation has seen its dataset: a put could not name it
		}
		a := e.putArgs
		if pr.tags[i] != e.tag {
			a.resID = "" // held nowhere here: pooled only if the shard has room
		}
		done := false
		r.shardCall(pr, i, sr, "put", func(ctx context.Context) error {
			_, sentTo, err := r.store.put(ctx, pr.tags[i], a, pr.minLife)
			switch {
			case err == nil:
				done = true
			case sentTo != "":
				e.tag, e.resID, e.sentTo = pr.tags[i], a.resID, sentTo
			}
			return err
		})
		if done {
			return true
		}
	}
	return false
}

// countAny adds n to a counter of pr in shard tag or, when that shard
// fails (or tag is ""), in any shard that answers: a profile's counters
// are the sum over its shards. It reports whether one did.
func (r *refiller) countAny(pr *profile, sr *shardRound, tag, counter string, n int64) bool {
	own := max(shardIndex(pr, tag), 0)
	for k := range len(pr.tags) {
		i := (own + k) % len(pr.tags)
		if r.shardCall(pr, i, sr, "count", func(ctx context.Context) error {
			return r.store.count(ctx, pr.tags[i], counter, n)
		}) {
			return true
		}
	}
	return false
}

// retireAt is when an entry expiring at exp stops being handed out: exp
// less a random part of its usable life, so a batch minted together is
// retired (and replaced) over a spread of time instead of all at once.
func (r *refiller) retireAt(exp time.Time, minLife time.Duration) time.Time {
	usable := exp.Sub(r.now()) - minLife
	if usable <= 0 || r.jitter == 0 {
		return exp
	}
	return exp.Add(-time.Duration(r.random() * r.jitter * float64(usable)))
}

func (r *refiller) releaseAll(tag, why string, ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.store.release(ctx, tag, why, ids...); err != nil {
		// The leases lapse by themselves; nothing is lost.
		r.log.Warn("pool: releasing reservations", "profile", profileOf(tag), "n", len(ids), "err", err)
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
	var u *mint.UnavailableError
	if errors.As(err, &u) && u.RetryAfter > wait {
		wait = min(u.RetryAfter, maxBackoff)
	}
	st.notBefore = r.now().Add(wait)
	failures := st.failures
	r.mu.Unlock()
	r.logFailure(profile, op, err, failures, wait)
}

// logFailure logs a refill failure of profile, at most once per
// failureLogEvery, with the number it kept quiet.
func (r *refiller) logFailure(profile, op string, err error, failures int, wait time.Duration, attrs ...any) {
	now := r.now()
	r.mu.Lock()
	st := r.state[profile]
	logIt := now.Sub(st.lastLog) >= failureLogEvery
	quiet := st.quiet
	if logIt {
		st.lastLog, st.quiet = now, 0
	} else {
		st.quiet++
	}
	r.mu.Unlock()
	if logIt {
		r.log.Warn("pool: refill "+op+" failed", append([]any{"profile", profile, "err", err,
			"consecutive_failures", failures, "backoff", wait.String(), "suppressed", quiet}, attrs...)...)
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
