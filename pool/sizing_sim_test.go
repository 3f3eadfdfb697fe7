package pool

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/mint"
)

// The sizing simulation: the real take/reserve/put scripts on a real
// Redis, and the real refiller's plan and observe steps, driven on a
// virtual clock. Arrivals follow the scenario's rate; mints complete after
// the simulated provider latency, behind a simulated fleet quota (evenly
// spaced, as upstream.Shared spaces them). Each replica runs a refill
// round after its own takes and mint completions and on a 1s tick, as the
// refiller loop does. Deterministic: one seeded random source.

type simEvent struct {
	at   time.Time
	kind int // evArrive, evMinted, evTick
	rep  int
	res  string        // evMinted: the reservation
	took time.Duration // evMinted: how long the mint took
	seq  int
}

const (
	evArrive = iota
	evMinted
	evTick
	evRound // a round deferred by minRoundGap
)

type simQueue []simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// simConfig is one simulated world.
type simConfig struct {
	replicas     int
	floor        int
	ttl          time.Duration
	minRemaining time.Duration
	mintLatency  time.Duration // one mint (for Orga: both calls)
	quota        float64       // fleet mints per second; 0: unlimited
	poisson      bool          // arrivals at random (exponential gaps) instead of evenly spaced
	slowMints    float64       // share of mints that take 3× the latency (the rest: ±25%)
}

// simSecond counts what happened in one virtual second.
type simSecond struct {
	hits, misses, direct, unavailable, minted, wasted int
	target                                            int
}

type sim struct {
	t     *testing.T
	cfg   simConfig
	start time.Time
	now   time.Time
	q     simQueue
	seq   int
	rng   *rand.Rand
	store *Store
	pools []*Pool

	lastRound []time.Time // per replica: the last refill round
	deferred  []bool      // per replica: an evRound is queued
	nextSlot  time.Time   // the quota's next free slot
	requests  int
	seconds   []simSecond
	shortLife int // handouts with less than minRemaining left (must stay 0)
	minted    int
	mintTimes []time.Time
}

func newSim(t *testing.T, cfg simConfig) *sim {
	t.Helper()
	srv := redistest.New(t)
	s := &sim{t: t, cfg: cfg, rng: rand.New(rand.NewPCG(1, 2))}
	s.start = time.Now().Truncate(time.Second)
	s.now = s.start
	s.nextSlot = s.now
	clock := func() time.Time { return s.now }
	s.store = NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	s.store.clock = clock
	for r := range cfg.replicas {
		p, err := New(Config{
			Store:    s.store,
			Profiles: []Profile{{Name: "p", Minter: &fakeMinter{ttl: cfg.ttl}, Target: cfg.floor, MinRemaining: cfg.minRemaining}},
			Now:      clock,
			NewID:    func() string { s.seq++; return fmt.Sprintf("id%d", s.seq) },
			Logger:   discardLog(),
		})
		if err != nil {
			t.Fatal(err)
		}
		p.random = s.rng.Float64
		p.replicaID = fmt.Sprintf("r%d", r)
		s.pools = append(s.pools, p)
		s.lastRound = append(s.lastRound, time.Time{})
		s.deferred = append(s.deferred, false)
		s.push(simEvent{at: s.now, kind: evTick, rep: r})
	}
	return s
}

func (s *sim) push(e simEvent) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.q, e)
}

func (s *sim) second() *simSecond {
	i := int(s.now.Sub(s.start) / time.Second)
	for len(s.seconds) <= i {
		s.seconds = append(s.seconds, simSecond{})
	}
	return &s.seconds[i]
}

// slot claims the next quota slot not before at; it returns when the
// mint may start.
func (s *sim) slot(at time.Time) time.Time {
	if s.cfg.quota <= 0 {
		return at
	}
	start := at
	if s.nextSlot.After(at) {
		start = s.nextSlot
	}
	s.nextSlot = start.Add(time.Duration(float64(time.Second) / s.cfg.quota))
	return start
}

// wake asks replica rep for a refill round, as a take or a finished mint
// wakes the refiller loop: at once, or minRoundGap after the last round.
func (s *sim) wake(rep int) {
	if next := s.lastRound[rep].Add(minRoundGap); s.now.Before(next) {
		if !s.deferred[rep] {
			s.deferred[rep] = true
			s.push(simEvent{at: next, kind: evRound, rep: rep})
		}
		return
	}
	s.round(rep)
}

// round is one refill round of replica rep.
func (s *sim) round(rep int) {
	s.lastRound[rep] = s.now
	p := s.pools[rep]
	pr := p.profiles["p"]
	a, ok := p.refill.plan(pr)
	if !ok {
		return
	}
	res, err := s.store.reserve(context.Background(), "p", a)
	if err != nil {
		s.t.Fatal(err)
	}
	p.refill.observe(pr, res)
	sec := s.second()
	sec.target = res.target
	sec.wasted += int(res.evicted)
	p.refill.state["p"].inFlight += len(res.ids)
	for _, id := range res.ids {
		took := s.mintTime()
		s.push(simEvent{at: s.slot(s.now).Add(took), kind: evMinted, rep: rep, res: id, took: took})
	}
}

// mintTime is how long one mint takes.
func (s *sim) mintTime() time.Duration {
	if s.cfg.slowMints == 0 {
		return s.cfg.mintLatency
	}
	if s.rng.Float64() < s.cfg.slowMints {
		return 3 * s.cfg.mintLatency
	}
	return time.Duration(float64(s.cfg.mintLatency) * (0.75 + 0.5*s.rng.Float64()))
}

func (s *sim) minted1(e simEvent) {
	p := s.pools[e.rep]
	pr := p.profiles["p"]
	st := p.refill.state["p"]
	st.inFlight--
	exp := s.now.Add(s.cfg.ttl)
	p.refill.succeeded("p", e.took, exp.Sub(s.now)-pr.minLife)
	a := putArgs{resID: e.res, entryID: p.newID(), retire: p.refill.retireAt(exp, pr.minLife), cred: mint.Credential{Token: "t", ExpiresAt: exp}}
	if _, _, err := s.store.put(context.Background(), "p", a, pr.minLife); err != nil {
		s.t.Fatal(err)
	}
	s.minted++
	s.mintTimes = append(s.mintTimes, s.now)
	s.second().minted++
	s.wake(e.rep)
}

func (s *sim) arrive(e simEvent) {
	p := s.pools[e.rep]
	pr := p.profiles["p"]
	s.requests++
	sec := s.second()
	h, err := s.store.Take(context.Background(), "p", fmt.Sprintf("req%d", s.requests), pr.minLife)
	switch {
	case err == nil:
		sec.hits++
		if h.ExpiresAt.Sub(s.now) < s.cfg.minRemaining {
			s.shortLife++
		}
	case err == ErrEmpty:
		sec.misses++
		// A miss mints for the request if the quota frees a slot within
		// the request's quota wait; else a fast 503.
		if s.cfg.quota <= 0 || !s.nextSlot.After(s.now.Add(RequestWait)) {
			s.slot(s.now)
			sec.direct++
		} else {
			sec.unavailable++
		}
	default:
		s.t.Fatal(err)
	}
	s.wake(e.rep)
}

// run drives arrivals at rate(t) (per second, t from the start) until end.
func (s *sim) run(rate func(t time.Duration) float64, end time.Duration) {
	next := 0
	arrival := time.Duration(0)
	schedule := func() {
		// Arrivals evenly spaced at the current rate; idle rates probe
		// again a millisecond later.
		for arrival < end {
			r := rate(arrival)
			if r > 0 {
				s.push(simEvent{at: s.start.Add(arrival), kind: evArrive, rep: next % s.cfg.replicas})
				next++
				gap := float64(time.Second) / r
				if s.cfg.poisson {
					gap *= s.rng.ExpFloat64()
				}
				arrival += time.Duration(gap)
				return
			}
			arrival += 10 * time.Millisecond
		}
	}
	schedule()
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(simEvent)
		if e.at.Sub(s.start) > end {
			heap.Push(&s.q, e)
			break
		}
		s.now = e.at
		switch e.kind {
		case evArrive:
			s.arrive(e)
			schedule()
		case evMinted:
			s.minted1(e)
		case evRound:
			s.deferred[e.rep] = false
			s.round(e.rep)
		case evTick:
			s.round(e.rep)
			s.push(simEvent{at: s.now.Add(time.Second), kind: evTick, rep: e.rep})
		}
	}
	s.now = s.start.Add(end)
}

// fromPool is the share of requests in [from, to) served from the pool.
func (s *sim) fromPool(from, to time.Duration) (share float64, requests int) {
	var hits, all int
	for i := int(from / time.Second); i < int(to/time.Second) && i < len(s.seconds); i++ {
		hits += s.seconds[i].hits
		all += s.seconds[i].hits + s.seconds[i].misses
	}
	if all == 0 {
		return 1, 0
	}
	return float64(hits) / float64(all), all
}

func (s *sim) total(from, to time.Duration, f func(simSecond) int) int {
	n := 0
	for i := int(from / time.Second); i < int(to/time.Second) && i < len(s.seconds); i++ {
		n += f(s.seconds[i])
	}
	return n
}

// TestSizingSimulation runs the burst scenarios through the sizing
// in seconds. The same scenarios run for real with tokenpool-bench.
func TestSizingSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation")
	}
	base := simConfig{replicas: 2, floor: 20, ttl: 120 * time.Second, minRemaining: 30 * time.Second, mintLatency: 200 * time.Millisecond}

	t.Run("ramp 5 to 200/s over 60s, quota 300/s: 99% from the pool after 10s", func(t *testing.T) {
		cfg := base
		cfg.quota = 300
		s := newSim(t, cfg)
		s.run(func(t time.Duration) float64 { return 5 + 195*min(t.Seconds(), 60)/60 }, 60*time.Second)
		share, n := s.fromPool(10*time.Second, 60*time.Second)
		t.Logf("ramp: %.2f%% of %d requests from the pool after 10s; %d minted; target at the end %d",
			share*100, n, s.minted, s.seconds[len(s.seconds)-1].target)
		if share < 0.99 {
			t.Fatalf("%.2f%% from the pool, want ≥ 99%%", share*100)
		}
		if s.shortLife > 0 {
			t.Fatalf("%d handouts with less than the minimum life", s.shortLife)
		}
	})

	t.Run("steady 20/s for 3m wastes at most 5%, then idle 10m mints at the floor's replacement rate", func(t *testing.T) {
		s := newSim(t, base)
		steady := 3 * time.Minute
		s.run(func(t time.Duration) float64 {
			if t < steady {
				return 20
			}
			return 0
		}, steady+10*time.Minute)
		minted := s.total(0, steady, func(x simSecond) int { return x.minted })
		wasted := s.total(0, steady, func(x simSecond) int { return x.wasted })
		share, _ := s.fromPool(10*time.Second, steady)
		t.Logf("steady: %d minted, %d wasted (%.2f%%), %.2f%% from the pool", minted, wasted, 100*float64(wasted)/float64(minted), share*100)
		if float64(wasted) > 0.05*float64(minted) {
			t.Fatalf("wasted %d of %d minted, over 5%%", wasted, minted)
		}
		// After the demand has decayed (the slow rate's time constant is a
		// minute), the pool only replaces its floor as entries go stale:
		// floor per usable life, the life being TTL - min remaining - skew
		// - the refill lead - up to 10% jitter.
		idleFrom := steady + 3*time.Minute
		idleMints := s.total(idleFrom, steady+10*time.Minute, func(x simSecond) int { return x.minted })
		perSecond := float64(idleMints) / (7 * 60)
		life := (base.ttl - base.minRemaining - 2*time.Second).Seconds()
		hi, lo := float64(base.floor)/(life*0.85), float64(base.floor)/base.ttl.Seconds()
		t.Logf("idle: %d mints in the last 7 minutes, %.3f/s (floor replacement %.3f–%.3f/s); all idle: %d",
			idleMints, perSecond, lo, hi, s.total(steady, steady+10*time.Minute, func(x simSecond) int { return x.minted }))
		if perSecond > hi || perSecond < lo {
			t.Fatalf("idle mint rate %.3f/s outside the floor's replacement rate %.3f–%.3f/s", perSecond, lo, hi)
		}
	})

	step := func(t *testing.T, ttl time.Duration, prewarmLead time.Duration) (float64, *sim) {
		cfg := base
		cfg.quota, cfg.ttl = 50, ttl
		s := newSim(t, cfg)
		at := 3 * time.Minute // the step, after a quiet start
		if prewarmLead > 0 {
			s.run(func(time.Duration) float64 { return 0 }, at-prewarmLead)
			if err := s.store.SetPrewarm(context.Background(), "p", 6000, s.start.Add(at+20*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		s.run(func(t time.Duration) float64 {
			if t >= at && t < at+20*time.Second {
				return 300
			}
			return 0
		}, at+20*time.Second)
		share, n := s.fromPool(at, at+20*time.Second)
		direct := s.total(at, at+20*time.Second, func(x simSecond) int { return x.direct })
		fast503 := s.total(at, at+20*time.Second, func(x simSecond) int { return x.unavailable })
		t.Logf("step, TTL %v, prewarm %v before: %.2f%% of %d from the pool; misses: %d minted directly, %d fast 503s",
			ttl, prewarmLead, share*100, n, direct, fast503)
		return share, s
	}
	t.Run("step 0 to 300/s for 20s, quota 50/s", func(t *testing.T) {
		// 20s at 300/s is 6,000 handouts; the quota mints 50/s. With a
		// prewarm a minute before, at most (60+20)×50 = 4,000 can come from
		// the pool: 67%, whatever the sizing does.
		if share, _ := step(t, 120*time.Second, time.Minute); share < 0.95*4000/6000 {
			t.Fatalf("prewarm a minute before: %.2f%%, want near the 67%% bound", share*100)
		}
		// With a 600s TTL (OpenAI's default) and the prewarm set 2 minutes
		// before, the pool covers the step.
		if share, _ := step(t, 600*time.Second, 2*time.Minute); share < 0.99 {
			t.Fatalf("prewarm 2 minutes before: %.2f%%, want ≥ 99%%", share*100)
		}
		// Without a prewarm, misses are minted within the quota or get a
		// fast 503; none waits.
		share, s := step(t, 120*time.Second, 0)
		if s.total(0, time.Hour, func(x simSecond) int { return x.unavailable }) == 0 || share > 0.5 {
			t.Fatalf("without a prewarm: %.2f%% from the pool and no fast 503s: the scenario is not the step", share*100)
		}
	})
}

// burstRun is one load shape's outcome in the simulation: what the load
// got from the pool and what the pool wasted because of it.
type burstRun struct {
	hitRate  float64 // the share of the load's requests served from the pool
	requests int
	// lateHitRate is hitRate after the load's first second, the time a
	// pool at its floor takes to see a burst and mint for it.
	lateHitRate    float64
	handedOut      int64
	minted, wasted int64 // until every credential minted for the load retired
	idleWasted     int64 // the same span with no load: the floor's own waste
}

// wastedShare is the waste the load caused (the run's waste less the
// floor's own over the same span) as a share of the load's handouts.
// A load can waste less than the floor alone (it takes the floor's
// entries before they go stale): that is none.
func (b burstRun) wastedShare() float64 {
	return float64(max(b.wasted-b.idleWasted, 0)) / float64(max(b.handedOut, 1))
}

// runLoad runs a quiet minute at the floor, then rate(t) for load (t from
// the load's start), then idles until every credential minted during the
// load has retired. It compares the waste with an idle run of the same span.
func runLoad(t *testing.T, cfg simConfig, rate func(time.Duration) float64, load time.Duration) burstRun {
	t.Helper()
	quiet := time.Minute
	end := quiet + load + cfg.ttl + 10*time.Second
	stats := func(s *sim) Stats {
		st, err := s.store.Stats(context.Background(), "p", cfg.minRemaining)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	s := newSim(t, cfg)
	s.run(func(t time.Duration) float64 {
		if t < quiet || t >= quiet+load {
			return 0
		}
		return rate(t - quiet)
	}, end)
	var b burstRun
	b.hitRate, b.requests = s.fromPool(quiet, quiet+load)
	b.lateHitRate, _ = s.fromPool(quiet+time.Second, quiet+load)
	st := stats(s)
	b.handedOut, b.minted, b.wasted = st.HandedOut, st.Minted, st.Wasted
	if s.shortLife > 0 {
		t.Fatalf("%d handouts with less than the minimum life", s.shortLife)
	}
	idle := newSim(t, cfg)
	idle.run(func(time.Duration) float64 { return 0 }, end)
	b.idleWasted = stats(idle).Wasted
	return b
}

// TestSizingBursts runs bursts that end: square bursts of 5 s to 5 min at
// 250/s, a spike that decays and a ramp down, each from a pool idling at
// its floor and followed by silence. It prints the table BENCHMARKS.md
// shows.
func TestSizingBursts(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation")
	}
	// Arrivals at random, and one mint in 20 three times as slow as the
	// rest: what evenly spaced arrivals and a fixed latency would hide.
	cfg := simConfig{replicas: 2, floor: 20, ttl: 120 * time.Second, minRemaining: 30 * time.Second,
		mintLatency: 200 * time.Millisecond, quota: 300, poisson: true, slowMints: 0.05}
	square := func(r float64) func(time.Duration) float64 { return func(time.Duration) float64 { return r } }
	cases := []struct {
		name string
		rate func(time.Duration) float64
		load time.Duration
	}{
		{"square 250/s, 5 s", square(250), 5 * time.Second},
		{"square 250/s, 30 s", square(250), 30 * time.Second},
		{"square 250/s, 2 min", square(250), 2 * time.Minute},
		{"square 250/s, 5 min", square(250), 5 * time.Minute},
		{"spike 250/s decaying (τ 10 s), 30 s", func(t time.Duration) float64 { return 250 * math.Exp(-t.Seconds()/10) }, 30 * time.Second},
		{"ramp down 250 → 0/s, 2 min", func(t time.Duration) float64 { return 250 * (1 - t.Seconds()/120) }, 2 * time.Minute},
		{"on and off 250/s, 5 s each, 2 min", func(t time.Duration) float64 {
			if int(t/(5*time.Second))%2 == 0 {
				return 250
			}
			return 0
		}, 2 * time.Minute},
		{"ramp 5 → 200/s, 60 s", func(t time.Duration) float64 { return 5 + 195*t.Seconds()/60 }, time.Minute},
		{"steady 20/s, 3 min", square(20), 3 * time.Minute},
		{"steady 100/s, 3 min", square(100), 3 * time.Minute},
	}
	// Each load runs its own simulation, on its own Redis, in parallel.
	runs := make([]burstRun, len(cases))
	t.Run("loads", func(t *testing.T) {
		for i, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				runs[i] = runLoad(t, cfg, c.rate, c.load)
			})
		}
	})
	t.Logf("| load | from the pool | after its first second | minted | handed out | wasted (the floor alone) | wasted by the load, of its handouts |")
	t.Logf("|---|---|---|---|---|---|---|")
	for i, c := range cases {
		b := runs[i]
		t.Logf("| %s | %.2f%% of %d | %.2f%% | %d | %d | %d (%d) | %.1f%% |", c.name, 100*b.hitRate, b.requests,
			100*b.lateHitRate, b.minted, b.handedOut, b.wasted, b.idleWasted, 100*b.wastedShare())
		// A pool idling at its floor cannot serve a burst's first mint
		// latency; after the first second, it must.
		if b.lateHitRate < 0.99 {
			t.Errorf("%s: %.2f%% from the pool after the first second, want ≥ 99%%", c.name, 100*b.lateHitRate)
		}
		if b.wastedShare() > 0.10 {
			t.Errorf("%s: the load wasted %.1f%% of its handouts, want ≤ 10%%", c.name, 100*b.wastedShare())
		}
	}
}
