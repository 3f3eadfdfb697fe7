package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/tokenpool/tokenpool/internal/backoff"
	"github.com/tokenpool/tokenpool/mint"
)

// DefaultOpenFor is GuardConfig.OpenFor's default.
const DefaultOpenFor = 10 * time.Second

// GuardConfig configures a Guard. Zero values mean the documented default.
type GuardConfig struct {
	// Provider names the provider in logs and errors, e.g. "orga".
	Provider string
	// KeyEnv is the environment variable holding the provider key, named in
	// the log line when the provider rejects it, e.g. "ORGA_API_KEY".
	KeyEnv string
	// Attempts is how many times one mint is tried when the provider fails
	// with a server error or a timeout. default: 3
	Attempts int
	// AttemptTimeout is the deadline of one attempt (both calls of an Orga
	// mint), so a hung provider can't block a half-open probe. default: 5s
	AttemptTimeout time.Duration
	// BackoffBase and BackoffMax bound the jittered wait between attempts.
	// default: 100ms and 2s
	BackoffBase, BackoffMax time.Duration
	// FailuresToOpen consecutive failures open the breaker. default: 5
	FailuresToOpen uint32
	// OpenFor is how long the breaker stays open before one probe is let
	// through. default: DefaultOpenFor
	OpenFor time.Duration
	// MaxPause caps the pause a provider's Retry-After asks for, so a
	// provider's mistake (or an attacker's answer) can't stop minting for
	// years; a capped value is logged. default: 5m
	MaxPause time.Duration
	// Logger receives breaker changes and the bad-key line.
	// default: slog.Default()
	Logger *slog.Logger
	// Shared shares the quota, a 429 pause and an open breaker with the
	// other replicas. default: none (this replica alone)
	Shared *Shared
	// Metrics records calls and the breaker's state. default: none
	Metrics *Metrics
}

// Guard protects one provider: one circuit breaker per provider per
// replica, retries with jittered backoff for server errors and timeouts,
// no retry for a bad key, and a pause honouring a 429's Retry-After. Wrap
// each profile's minter with it. A Guard is safe for concurrent use.
type Guard struct {
	cfg GuardConfig
	cb  *gobreaker.CircuitBreaker[mint.Credential]
	now func() time.Time

	justOpened atomic.Bool // the breaker opened and the fleet is not told yet
	// resumes counts Resume calls, so that a fleet hold read before one
	// is not taken up after it (fleetSays). Changed under mu.
	resumes atomic.Uint64

	mu          sync.Mutex
	openedAt    time.Time // guarded by mu; when the breaker last opened
	pausedUntil time.Time // guarded by mu; no call before this
	pauseReason string    // guarded by mu; why
	// pauseShared: the pause is also the fleet's (a Redis flag), so it is
	// checked again at most every fleetRecheck and ends early when an
	// operator lifts it (Shared.Resume). Guarded by mu.
	pauseShared bool
	checkedAt   time.Time // guarded by mu; when the fleet's flags were last read
	badKey      bool      // guarded by mu; a bad-key line was logged since the last success
}

// fleetRecheck is how often a replica paused by the fleet reads the
// fleet's flags again, so a lifted pause ends everywhere within it.
const fleetRecheck = time.Second

// NewGuard returns a Guard for one provider.
func NewGuard(cfg GuardConfig) *Guard {
	if cfg.Provider == "" {
		cfg.Provider = "provider"
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 5 * time.Second
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 100 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 2 * time.Second
	}
	if cfg.FailuresToOpen == 0 {
		cfg.FailuresToOpen = 5
	}
	if cfg.OpenFor <= 0 {
		cfg.OpenFor = DefaultOpenFor
	}
	if cfg.MaxPause <= 0 {
		cfg.MaxPause = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Guard{cfg: cfg, now: time.Now}
	g.cb = gobreaker.NewCircuitBreaker[mint.Credential](gobreaker.Settings{
		Name:        cfg.Provider,
		MaxRequests: 1,
		Timeout:     cfg.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= cfg.FailuresToOpen },
		IsExcluded:  excluded,
		OnStateChange: func(name string, from, to gobreaker.State) {
			cfg.Metrics.state(name, to)
			if to == gobreaker.StateOpen {
				g.mu.Lock()
				g.openedAt = g.now()
				g.mu.Unlock()
				g.justOpened.Store(true)
				cfg.Logger.Warn("upstream: circuit breaker opened", "provider", name, "from", from.String(), "open_for", cfg.OpenFor.String())
				return
			}
			cfg.Logger.Info("upstream: circuit breaker "+to.String(), "provider", name, "from", from.String())
		},
	})
	cfg.Metrics.state(cfg.Provider, gobreaker.StateClosed)
	cfg.Metrics.known(cfg.Provider)
	return g
}

// Wrap returns m guarded by g. The result is a mint.Minter.
func (g *Guard) Wrap(m mint.Minter) *Guarded {
	return &Guarded{g: g, m: m}
}

// State is the breaker's state: "closed", "half-open" or "open".
func (g *Guard) State() string { return g.cb.State().String() }

// Available reports whether the provider may be called now: the breaker
// is not open and the provider has not asked us to back off.
func (g *Guard) Available() bool {
	wait, _, _ := g.held()
	return g.cb.State() != gobreaker.StateOpen && wait <= 0
}

// Guarded is a minter behind a Guard. It implements mint.Minter.
type Guarded struct {
	g *Guard
	m mint.Minter
}

// Available reports whether the guard would call the provider now.
func (gm *Guarded) Available() bool { return gm.g.Available() }

// Mint mints through the breaker, retrying server errors and timeouts
// with jittered backoff within ctx's deadline. When the breaker is open or
// the provider asked to back off, it returns a *mint.UnavailableError at
// once without calling the provider.
func (gm *Guarded) Mint(ctx context.Context, r mint.Request) (mint.Credential, error) {
	g := gm.g
	for attempt := 1; ; attempt++ {
		if err := g.admit(ctx, r); err != nil {
			return mint.Credential{}, err
		}
		c, err := g.cb.Execute(func() (mint.Credential, error) {
			actx, cancel := context.WithTimeout(ctx, g.cfg.AttemptTimeout)
			defer cancel()
			start := time.Now()
			c, err := gm.m.Mint(actx, r)
			if !excludedFromLatency(err) {
				g.cfg.Metrics.call(g.cfg.Provider, time.Since(start), err)
			}
			if err != nil && ctx.Err() != nil {
				// The caller gave up: not the provider's failure.
				err = &callerGone{err}
			}
			return c, err
		})
		g.publishOpen(ctx)
		if err == nil {
			g.succeeded()
			return c, nil
		}
		var se *StatusError
		switch {
		case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
			return mint.Credential{}, &mint.UnavailableError{
				Err: fmt.Errorf("upstream: %s: circuit breaker open", g.cfg.Provider), RetryAfter: g.openLeft()}
		case ctx.Err() != nil:
			return mint.Credential{}, err
		case errors.Is(err, ErrBadKey):
			g.rejectedKey(err)
			return mint.Credential{}, err
		case errors.As(err, &se) && se.Code == http.StatusTooManyRequests:
			wait := g.pauseFor(se.RetryAfter)
			shared := g.cfg.Shared != nil && g.tellFleet(ctx, "to pause", g.cfg.Shared.pause, wait)
			g.pause(wait, "asked to back off", shared)
			return mint.Credential{}, &mint.UnavailableError{Err: err, RetryAfter: wait}
		case !retryable(err) || attempt >= g.cfg.Attempts:
			return mint.Credential{}, err
		}
		wait := g.backoff(attempt)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return mint.Credential{}, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return mint.Credential{}, err
		}
	}
}

// admit returns nil when the provider may be called now: nothing asked
// this replica or the fleet to hold off, and the fleet's quota has a mint
// to spare, waited for within ctx's deadline. Otherwise it returns a
// *mint.UnavailableError saying how long to wait.
func (g *Guard) admit(ctx context.Context, r mint.Request) error {
	if wait, why, recheck := g.held(); wait > 0 && !recheck {
		return &mint.UnavailableError{Err: fmt.Errorf("upstream: %s: %s", g.cfg.Provider, why), RetryAfter: wait}
	}
	sh := g.cfg.Shared
	if sh == nil {
		return nil
	}
	resumes := g.resumes.Load()
	h, err := sh.gate(ctx, g.cfg.Provider)
	if err != nil {
		return &mint.UnavailableError{Err: err, RetryAfter: time.Second}
	}
	// A hold read across an operator's Resume is stale: not taken up.
	if g.fleetSays(h, resumes) && h.wait > 0 {
		why := h.reason + " (fleet)"
		return &mint.UnavailableError{Err: fmt.Errorf("upstream: %s: %s", g.cfg.Provider, why), RetryAfter: h.wait}
	}
	// A refill waits for the quota as long as its deadline allows; a mint
	// for a waiting request until the end of its wait (pool.RequestWait).
	budget := time.Duration(1<<63 - 1)
	if dl, ok := ctx.Deadline(); ok {
		budget = time.Until(dl)
	}
	if r.ForCaller() {
		budget = min(budget, time.Until(r.WaitEnd))
	}
	for {
		wait, err := sh.take(ctx, g.cfg.Provider)
		if err != nil {
			return &mint.UnavailableError{Err: err, RetryAfter: time.Second}
		}
		if wait == 0 {
			return nil
		}
		// Jittered, so waiters for the next slot don't all ask at once.
		wait += rand.N(wait/2 + 1)
		quotaErr := &mint.UnavailableError{Err: fmt.Errorf("upstream: %s: mint quota spent", g.cfg.Provider), RetryAfter: wait}
		if wait > budget {
			return quotaErr
		}
		budget -= wait
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return quotaErr
		}
	}
}

// publishOpen tells the fleet, once, that this replica's breaker opened.
// It runs after Execute, not in OnStateChange, which holds the breaker's
// lock.
func (g *Guard) publishOpen(ctx context.Context) {
	if g.cfg.Shared == nil || !g.justOpened.Swap(false) {
		return
	}
	g.tellFleet(ctx, "the breaker opened", g.cfg.Shared.opened, g.cfg.OpenFor)
}

// tellFleet runs a shared-state update with its own short deadline, so it
// outlives a caller that gave up; a failure is logged, not returned: the
// local guard still holds.
func (g *Guard) tellFleet(ctx context.Context, what string, update func(context.Context, string, time.Duration) error, d time.Duration) bool {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := update(sctx, g.cfg.Provider, d); err != nil {
		g.cfg.Logger.Warn("upstream: telling other replicas "+what, "provider", g.cfg.Provider, "err", err)
		return false
	}
	return true
}

// excludedFromLatency: a request refused before the provider was asked
// is no call.
func excludedFromLatency(err error) bool {
	var re *mint.Error
	return errors.As(err, &re)
}

// callerGone marks a failure caused by the caller cancelling; the breaker
// excludes it.
type callerGone struct{ err error }

func (e *callerGone) Error() string { return e.err.Error() }
func (e *callerGone) Unwrap() error { return e.err }

// excluded: failures that say nothing about the provider's health are
// neither successes nor failures to the breaker: a caller that gave up, a
// request that can't be served as asked, and a 429 (the provider is up;
// the pause handles it).
func excluded(err error) bool {
	var (
		cg *callerGone
		re *mint.Error
		se *StatusError
	)
	return errors.As(err, &cg) || errors.As(err, &re) || (errors.As(err, &se) && se.Code == http.StatusTooManyRequests)
}

// backoff is exponential from BackoffBase, capped, with full jitter in
// its upper half.
func (g *Guard) backoff(attempt int) time.Duration {
	return backoff.Jittered(g.cfg.BackoffBase, g.cfg.BackoffMax, attempt)
}

func (g *Guard) succeeded() {
	g.mu.Lock()
	g.badKey = false
	g.mu.Unlock()
}

// rejectedKey logs one line naming the key's variable per run of bad-key
// answers; the breaker bounds the attempts.
func (g *Guard) rejectedKey(err error) {
	g.mu.Lock()
	first := !g.badKey
	g.badKey = true
	g.mu.Unlock()
	if first {
		var se *StatusError
		code := 0
		if errors.As(err, &se) {
			code = se.Code
		}
		g.cfg.Logger.Error(fmt.Sprintf("upstream: %s rejected the API key: check %s", g.cfg.Provider, g.cfg.KeyEnv),
			"provider", g.cfg.Provider, "status", code, "env", g.cfg.KeyEnv)
	}
}

// pauseFor is the pause a 429's Retry-After asks for: at least a second,
// at most MaxPause (logged when capped).
func (g *Guard) pauseFor(retryAfter time.Duration) time.Duration {
	if retryAfter > g.cfg.MaxPause {
		g.cfg.Logger.Warn("upstream: provider's Retry-After capped", "provider", g.cfg.Provider,
			"retry_after", retryAfter.String(), "capped_to", g.cfg.MaxPause.String())
		return g.cfg.MaxPause
	}
	return max(retryAfter, time.Second)
}

// pause holds off calls for d, for why; shared says the fleet holds the
// same pause.
func (g *Guard) pause(d time.Duration, why string, shared bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if until := now.Add(d); until.After(g.pausedUntil) {
		g.pausedUntil, g.pauseReason, g.pauseShared, g.checkedAt = until, why, shared, now
	}
}

// fleetSays takes the fleet's hold as this replica's: a new or longer
// one holds calls off here too; none ends a pause that was the fleet's
// (an operator lifted it). A hold read before a Resume that has happened
// since (resumes is the count of them when the read began) is stale: it
// is dropped, and fleetSays reports false.
func (g *Guard) fleetSays(h hold, resumes uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.resumes.Load() != resumes {
		return false
	}
	now := g.now()
	g.checkedAt = now
	switch {
	case h.wait > 0:
		if until := now.Add(h.wait); g.pauseShared || until.After(g.pausedUntil) {
			g.pausedUntil, g.pauseReason, g.pauseShared = until, h.reason+" (fleet)", true
		}
	case g.pauseShared:
		g.pausedUntil = time.Time{}
	}
	return true
}

// Resume ends this replica's pause at once; Shared.Resume ends the
// fleet's, which the other replicas see within fleetRecheck.
func (g *Guard) Resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.resumes.Add(1)
	g.pausedUntil = time.Time{}
}

// held returns how long calls are still held off and why, and whether
// the fleet's flags are due to be read again first.
func (g *Guard) held() (wait time.Duration, why string, recheck bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	return g.pausedUntil.Sub(now), g.pauseReason, g.pauseShared && now.Sub(g.checkedAt) >= fleetRecheck
}

// openLeft is how long the breaker stays open, at least a second.
func (g *Guard) openLeft() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return max(g.openedAt.Add(g.cfg.OpenFor).Sub(g.now()), time.Second)
}
