package pool

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tokenpool/tokenpool/limiter"
)

// The take, in two layers below the Pool: takeFrom (claims, opening what
// was taken, undoing what failed) and callTake (take_call.go: the script
// call by name, its limits, WAIT, and its retries).

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
// denies, nothing is taken and the error matches limiter.ErrDenied. The
// decisions of the checks reached are returned whenever the checks were
// applied, with an error too.
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
	return s.takeFrom(ctx, profile, claimID, minRemaining, checks, countDemand|countMiss, nil)
}

// What a take counts in its shard's stats, besides a handout.
const (
	countDemand       = 1 // the request, in the demand rates
	countMiss         = 2 // a miss, when nothing usable was found
	countUnreplicated = 4 // the handout, as unreplicated (callTake sets it)
)

// maxDiscards bounds the undecodable entries one Take skips.
const maxDiscards = 3

// errTooLate is a take that reached Redis after its claim could have
// expired: it took nothing.
var errTooLate = fmt.Errorf("%w: the take reached Redis too late", ErrUnavailable)

// limitsError is a failure of the caller's limits, which on a Cluster
// live on other masters than the take's shard: not the shard's failure.
type limitsError struct{ err error }

func (e *limitsError) Error() string { return e.err.Error() }
func (e *limitsError) Unwrap() error { return e.err }

// takeFrom is TakeLimited on one shard of a profile (tag: its hash tag),
// counting what counts says, and recording the handout with rec
// (Store.recordArgs; nil: no record).
func (s *Store) takeFrom(ctx context.Context, tag, claimID string, minRemaining time.Duration, checks []limiter.Check, counts int, rec []any) (Handout, []limiter.Decision, error) {
	var decisions []limiter.Decision
	for attempt := 0; ; attempt++ {
		claim := claimID
		if attempt > 0 {
			// A fresh claim: the first one holds the entry that failed.
			// The limits were applied by the first.
			claim, checks = claimID+"#"+strconv.Itoa(attempt), nil
		}
		c := &takeCall{
			tag: tag, k: s.keys(tag), claim: claim, minRemaining: minRemaining, claimTTL: &sendMark{v: s.ttlArg},
			now: s.now(), ledger: s.ledger, counts: counts, opens: s.opens, record: rec,
		}
		t, err := s.callTake(ctx, c, checks)
		if attempt == 0 {
			decisions = t.decisions
		}
		if t.refusedAtOnce(checks) {
			// A take that failed is recovered below like any other: the
			// caller learns the denial from the decisions.
			switch {
			case err == nil || errors.Is(err, ErrEmpty) && t.status == takeNothing:
				return Handout{}, decisions, s.untake(ctx, c, t, err)
			case t.status == takeAbandoned:
				return Handout{}, decisions, t.refusal() // nothing taken, nothing to undo
			}
		}
		switch {
		case errors.Is(err, ErrEmpty), errors.Is(err, limiter.ErrDenied):
			return Handout{}, decisions, err
		case err != nil && !t.ran:
			return Handout{}, decisions, err // it holds nothing
		case err != nil:
			return Handout{}, decisions, s.abandon(tag, claim, minRemaining, t, err)
		}
		cred, err := s.decode(tag, t.id, t.body)
		if err == nil {
			return Handout{ID: t.id, Profile: profileOf(tag), Source: SourcePool, Credential: cred,
				claim: claim, tag: tag, sentAt: t.sentAt, epoch: t.epoch, deadline: t.deadline}, decisions, nil
		}
		k := s.keys(tag)
		if err := discardScript.Run(ctx, s.rdb, []string{k.stats(), k.undo(claim), k.issued()}).Err(); err != nil {
			return Handout{}, decisions, storeError("discard", err)
		}
		if attempt+1 >= maxDiscards {
			return Handout{}, decisions, fmt.Errorf("%w (%d entries in a row could not be opened: %v)", ErrEmpty, maxDiscards, err)
		}
	}
}

// untake undoes a take whose limits, applied at the same time on a
// Cluster, denied it or failed (err: the take's own outcome, nil or
// ErrEmpty): the entry, if one was taken, is pooled again and the request
// is taken out of the counts.
func (s *Store) untake(ctx context.Context, c *takeCall, t takeResult, err error) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
	defer cancel()
	missed := 0 // the take counted a miss
	if c.counts&countMiss != 0 {
		missed = 1
	}
	uerr := untakeScript.Run(uctx, s.rdb, []string{c.k.ready(), c.k.entries(), c.k.stats(), c.k.claim(c.claim), c.k.handed(), c.k.undo(c.claim), c.k.issued()},
		c.minRemaining.Milliseconds(), s.claimTTL.Milliseconds(), s.now(),
		demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), t.now, missed).Err()
	if uerr != nil && err == nil {
		return t.unrecovered(c.tag, c.claim, c.minRemaining, storeError("untake", uerr))
	}
	return t.refusal()
}

// unrecovered is t, under claim in shard tag, failed with err and its
// entry still to recover.
func (t takeResult) unrecovered(tag, claim string, minRemaining time.Duration, err error) *UnrecoveredError {
	return &UnrecoveredError{Profile: tag, Claim: claim, MinRemaining: minRemaining, At: t.sentAt,
		epoch: t.epoch, deadline: t.deadline, Err: err}
}

// refusal is the error of a take its limits, applied beside it, refused.
func (t takeResult) refusal() error {
	if t.limitsErr != nil {
		return storeError("limits", &limitsError{t.limitsErr})
	}
	return fmt.Errorf("pool: take: %w", limiter.ErrDenied)
}
