package pool

import (
	"context"
	"time"
)

// Recovering what a failure left in the middle: a take whose outcome is
// unknown (its reply missed the deadline, the connection broke, the caller
// left) is undone in Redis and its entry pooled again; when Redis can't be
// reached for that either, the refiller tries again until the take's claim
// expires, then counts the entry as lost. At shutdown, whatever the
// refiller still holds is pooled or counted.

// recoverTimeout bounds one attempt to recover a failed take's entry.
const recoverTimeout = time.Second

// UnrecoveredError is a take that failed with an unknown outcome and whose
// recovery failed too (Redis unreachable): its entry, if the take ran, is
// held by the claim until the claim TTL passes. The Pool tries again, and
// counts the entry as lost when the claim is gone. It wraps the take's
// error, so it matches what that matches.
type UnrecoveredError struct {
	// Profile is the hash tag of the shard taken from: the profile's name
	// unless it is sharded.
	Profile, Claim string
	MinRemaining   time.Duration
	// At is when the take was sent, by this host's clock: its claim, if
	// it ran, lives at least the claim TTL from then.
	At       time.Time
	Err      error  // the take's error
	epoch    string // the dataset the take was sent to
	deadline int64  // by Redis's clock, ms: after it the take's claim may have expired; 0: unknown
}

func (e *UnrecoveredError) Error() string { return e.Err.Error() }

// Unwrap returns the take's error.
func (e *UnrecoveredError) Unwrap() error { return e.Err }

// abandon recovers the entry of a failed take t under claim,
// on a context detached from the caller's, which may be what ended. It
// returns cause, or an *UnrecoveredError wrapping it when recovery failed
// too (or came too late to tell).
func (s *Store) abandon(profile, claim string, minRemaining time.Duration, t takeResult, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	defer cancel()
	e := t.unrecovered(profile, claim, minRemaining, cause)
	if r, err := s.recoverClaim(ctx, e); err != nil || !s.recoveredInTime(e, r) {
		return e
	}
	return cause
}

// recoverHorizon is how long after a take was sent its claim surely
// still holds: the claim TTL, less a margin for the clocks of Redis and
// this host.
func (s *Store) recoverHorizon() time.Duration { return s.claimTTL - time.Second }

// recoveredInTime reports whether recovering e's take answered r (a
// recoverScript reply) in time to be believed: "nothing had been taken"
// (0) from a recovery that may have run after the claim expired says
// nothing.
func (s *Store) recoveredInTime(e *UnrecoveredError, r int64) bool {
	switch r {
	case 1, 2:
		return true
	case 0: // judged in time by the script against the deadline, or here when there was none
		return e.deadline > 0 || s.hostNow().Sub(e.At) < s.recoverHorizon()
	}
	return false
}

// tombstoneTTL is how long a recovery's tombstone keeps what it did, so
// that a recovery sent again after an outage (its first reply lost) learns
// it instead of finding nothing: one short key per recovered take.
const tombstoneTTL = 5 * time.Minute

// recoverClaim undoes the take under claim, if one ran, and leaves a
// tombstone so that a take under it that reaches Redis later hands out
// nothing. The script counts what it did (returned, wasted); its reply
// is 0 when no take had run (or its claim expired), 1 pooled, 2 wasted, 3
// the dataset epoch (the one the take was sent to) is gone, 4 no claim and
// Redis's clock past the take's deadline (it may have expired: unknown).
func (s *Store) recoverClaim(ctx context.Context, e *UnrecoveredError) (int64, error) {
	k := s.keys(e.Profile)
	r, err := recoverScript.Run(ctx, s.rdb, []string{k.ready(), k.entries(), k.stats(), k.claim(e.Claim), k.handed(), k.undo(e.Claim), k.issued()},
		e.MinRemaining.Milliseconds(), max(s.claimTTL, tombstoneTTL).Milliseconds(), s.now(), e.epoch, e.deadline).Int64()
	if err != nil {
		return 0, storeError("recover", err)
	}
	return r, nil
}

// flush pools what the refiller still holds, once the loop and every mint
// have ended: parked credentials and failed takes' entries. What Redis
// won't take now is lost: counted in Redis if it answers, in metrics and
// in the log either way.
func (r *refiller) flush() {
	for _, pr := range r.profiles {
		name := pr.Name
		sr := newShardRound(pr)
		sr.flush = true
		r.recoverPending(pr, sr)
		r.unpark(pr, sr)
		r.mu.Lock()
		st := r.state[name]
		lost := int64(len(st.parked)+len(st.pending)) + st.lost
		wasted := st.lostWaste
		st.parked, st.pending, st.lost, st.lostWaste = nil, nil, 0, 0
		r.mu.Unlock()
		if lost == 0 && wasted == 0 {
			continue
		}
		r.metrics.loss(name, lost)
		counted := r.countAny(pr, sr, "", "lost", lost)
		r.log.Warn("pool: stopped holding credentials Redis did not take", "profile", name,
			"lost", lost, "expired_unpooled", wasted, "counted_in_redis", counted)
	}
}

// maxPending bounds the failed takes queued for recovery per profile;
// past it a failed take counts as lost at once.
const maxPending = 4096

// unrecovered queues a failed take for the loop to recover.
func (r *refiller) unrecovered(e *UnrecoveredError) {
	r.mu.Lock()
	if st := r.state[profileOf(e.Profile)]; st != nil {
		if len(st.pending) < maxPending {
			st.pending = append(st.pending, e)
		} else {
			st.lost++
			r.metrics.loss(profileOf(e.Profile), 1)
		}
	}
	r.mu.Unlock()
	r.wake()
}

// recoverPending recovers the entries of failed takes. A recovery that
// finds neither the claim nor an earlier recovery's tombstone after the
// claim may have expired can no longer tell the take from one that never
// ran, and counts it lost. Those whose shard still fails stay queued.
func (r *refiller) recoverPending(pr *profile, sr *shardRound) {
	r.mu.Lock()
	st := r.state[pr.Name]
	list, lost := st.pending, st.lost
	st.pending, st.lost = nil, 0
	r.mu.Unlock()
	if len(list) == 0 && lost == 0 {
		return
	}
	var (
		recovered int
		kept      []*UnrecoveredError
	)
	for _, e := range list {
		var res int64
		if !r.shardCall(pr, shardIndex(pr, e.Profile), sr, "recover", func(ctx context.Context) (err error) {
			res, err = r.store.recoverClaim(ctx, e)
			return err
		}) {
			kept = append(kept, e)
			continue
		}
		if !r.store.recoveredInTime(e, res) {
			lost++ // it ran too late to tell a take that never ran
			r.metrics.loss(pr.Name, 1)
			continue
		}
		recovered++
	}
	if lost > 0 && !r.countAny(pr, sr, "", "lost", lost) {
		r.mu.Lock()
		st.lost += lost
		r.mu.Unlock()
		lost = 0
	}
	if len(kept) > 0 {
		r.mu.Lock()
		st.pending = append(kept, st.pending...)
		r.mu.Unlock()
	}
	if recovered > 0 || lost > 0 {
		r.log.Warn("pool: takes that failed while Redis was failing", "profile", pr.Name,
			"recovered", recovered, "lost", lost, "still_pending", len(kept))
	}
}
