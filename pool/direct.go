package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// Credentials minted for one request: on a miss (direct), for settings no
// pool has (on demand); the bound on those mints, and the life a new
// credential must have.

// mintDirect mints a credential for one request on a miss. It is never
// pooled.
func (p *Pool) mintDirect(ctx context.Context, pr *profile, is issuance) (Handout, error) {
	h, err := p.mintFor(ctx, pr, pr.Minter, is.who)
	if err != nil {
		return Handout{}, err
	}
	if err := p.issuedInAny(ctx, pr, is.requestID, "direct", p.store.recordArgs(pr, is, SourceDirect), &h); err != nil {
		p.Return(h) // pooled for the next caller, who gets a record
		return Handout{}, err
	}
	p.metrics.handout(pr.Name, SourceDirect)
	return h, nil
}

// issuedInAny counts h, minted for its request, under counter and records
// it (rec) in a shard that answers, tried as a take tries them. Without
// the ledger, counting is best effort: the credential is minted and the
// caller waits for it. With it, a handout no record names must not go
// out: the error says so, and matches ErrUnavailable.
func (p *Pool) issuedInAny(ctx context.Context, pr *profile, request, counter string, rec []any, h *Handout) error {
	var err error
	p.takeOrder(pr, func(i int) bool {
		err = p.store.issued(ctx, pr.tags[i], request, counter, rec, h)
		// A record is tried in one shard only: a call that failed may
		// have run, and its marker is that shard's.
		return err != nil && ctx.Err() == nil && rec == nil
	})
	if err == nil {
		return nil
	}
	p.log.Warn("pool: counting or recording a minted handout", "profile", pr.Name, "source", string(h.Source), "err", err)
	if rec == nil {
		return nil
	}
	return &mint.UnavailableError{Err: fmt.Errorf("%w: the ledger could not record the handout: %w", ErrUnavailable, err), RetryAfter: time.Second}
}

// countInAny adds n to a counter of pr in a shard that answers, tried as
// a take tries them: a profile's counters are the sum over its shards.
func (p *Pool) countInAny(ctx context.Context, pr *profile, counter string, n int64) error {
	var err error
	p.takeOrder(pr, func(i int) bool {
		err = p.store.count(ctx, pr.tags[i], counter, n)
		return err != nil && ctx.Err() == nil
	})
	return err
}

// MintOnce mints one credential with m for one request of who, behind
// checks (applied first, as GetLimited applies them to a profile without
// a pool), under the named profile's bound on request mints, and never
// pools it: for settings or a key that no pooled profile has. It counts
// the mint under label in the fleet's on-demand counters (OnDemand). The
// credential has the profile's least life left.
func (p *Pool) MintOnce(ctx context.Context, profileName, requestID string, m mint.Minter, who *mint.Caller, label string, checks []limiter.Check) (Handout, []limiter.Decision, error) {
	pr, ok := p.profiles[profileName]
	if !ok {
		return Handout{}, nil, fmt.Errorf("%w %q", ErrUnknownProfile, profileName)
	}
	spent := quotaSpend{checks: checks}
	if len(checks) > 0 {
		var err error
		if spent.ds, err = p.store.limits.AllowAll(ctx, checks); err != nil {
			return Handout{}, nil, storeError("limits", err)
		}
		if !limiter.Allowed(checks, spent.ds) {
			return Handout{}, spent.ds, fmt.Errorf("pool: %w", limiter.ErrDenied)
		}
	}
	h, err := p.mintFor(ctx, pr, m, who)
	if err != nil {
		p.refund(spent)
		return Handout{}, spent.ds, err
	}
	h.Source, h.quota = SourceOnDemand, spent
	if rec := p.store.recordArgs(pr, issuance{requestID: requestID, who: who}, SourceOnDemand); rec != nil {
		if err := p.issuedInAny(ctx, pr, requestID, "", rec, &h); err != nil {
			p.refund(spent) // the credential can't be pooled: it goes unused
			vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
			_ = p.store.unrecord(vctx, h.record) // best effort: a record of a credential nobody got errs on the safe side
			cancel()
			return Handout{}, spent.ds, err
		}
	}
	if err := p.store.countOnDemand(ctx, label); err != nil {
		p.log.Warn("pool: counting an on-demand mint", "label", label, "err", err)
	}
	p.metrics.handout(pr.Name, SourceOnDemand)
	return h, spent.ds, nil
}

// OnDemand returns the fleet's on-demand mint counters by label.
func (p *Pool) OnDemand(ctx context.Context) (map[string]int64, error) {
	return p.store.onDemand(ctx)
}

// mintFor mints with m for one request of who, within ctx's deadline and
// pr's bound on request mints.
func (p *Pool) mintFor(ctx context.Context, pr *profile, m mint.Minter, who *mint.Caller) (Handout, error) {
	select {
	case <-p.closed:
		return Handout{}, ErrClosed
	default:
	}
	if pr.direct == nil {
		return Handout{}, &mint.UnavailableError{Err: ErrEmpty, RetryAfter: time.Second}
	}
	// Waiting for a slot and then for the quota share one RequestWait: a
	// burst past what the slots and the quota serve gets fast 503s, not a
	// queue that holds every request to its deadline.
	waitEnd := time.Now().Add(RequestWait)
	t := time.NewTimer(RequestWait)
	defer t.Stop()
	select {
	case pr.direct <- struct{}{}:
		defer func() { <-pr.direct }()
	case <-t.C:
		return Handout{}, &mint.UnavailableError{Err: fmt.Errorf("%w: every mint slot for requests is busy", ErrEmpty), RetryAfter: time.Second}
	case <-ctx.Done():
		return Handout{}, &mint.UnavailableError{Err: fmt.Errorf("%w: waiting to mint: %w", ErrEmpty, ctx.Err()), RetryAfter: time.Second}
	}
	c, err := m.Mint(ctx, mint.Request{Caller: who, WaitEnd: waitEnd})
	p.metrics.mint(pr.Name, "request", err)
	var re *mint.Error
	switch {
	case err == nil:
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.Canceled), errors.As(err, &re):
		return Handout{}, err
	case errors.Is(err, context.DeadlineExceeded):
		return Handout{}, &mint.UnavailableError{Err: fmt.Errorf("%w: minting: %w", ErrEmpty, err), RetryAfter: time.Second}
	default:
		return Handout{}, fmt.Errorf("%w: %w", ErrProvider, err)
	}
	if err := checkLife(c, p.now(), pr.minLife); err != nil {
		return Handout{}, err
	}
	return Handout{ID: p.entryID(c), Profile: pr.Name, Source: SourceDirect, Credential: c}, nil
}

// MaxLife bounds a new credential's life. Providers give minutes to hours
// (OpenAI at most 2 h); an expiry further ahead is a misread answer (say,
// milliseconds taken for seconds) that would keep an entry "fresh" for
// ever, so it is refused as a provider error.
const MaxLife = 24 * time.Hour

// checkLife refuses a new credential that lives less than minLife, or
// more than MaxLife, from now.
func checkLife(c mint.Credential, now time.Time, minLife time.Duration) error {
	if life := c.ExpiresAt.Sub(now); life < minLife {
		return fmt.Errorf("%w: a new credential lives %s, less than the %s a handout needs", ErrProvider, life.Round(time.Second), minLife)
	}
	return checkMaxLife(c, now)
}

// checkMaxLife refuses a new credential that lives more than MaxLife.
func checkMaxLife(c mint.Credential, now time.Time) error {
	if life := c.ExpiresAt.Sub(now); life > MaxLife {
		return fmt.Errorf("%w: a new credential expires %s from now, beyond the %s any provider gives: is its expiry in the wrong unit?",
			ErrProvider, life.Round(time.Hour), MaxLife)
	}
	return nil
}
