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
	At             time.Time // when the take failed
	Err            error     // the take's error
}

func (e *UnrecoveredError) Error() string { return e.Err.Error() }

// Unwrap returns the take's error.
func (e *UnrecoveredError) Unwrap() error { return e.Err }

// abandon recovers the entry of a failed take under claim, on a context
// detached from the caller's, which may be what ended. It returns cause,
// or an *UnrecoveredError wrapping it when recovery failed too.
func (s *Store) abandon(profile, claim string, minRemaining time.Duration, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	defer cancel()
	if err := s.recoverClaim(ctx, profile, claim, minRemaining); err != nil {
		return &UnrecoveredError{Profile: profile, Claim: claim, MinRemaining: minRemaining, At: s.hostNow(), Err: cause}
	}
	return cause
}

// recoverClaim undoes the take under claim, if one ran, and leaves a
// tombstone so that a take under it that reaches Redis later hands out
// nothing. The script counts what it did (returned, wasted).
func (s *Store) recoverClaim(ctx context.Context, profile, claim string, minRemaining time.Duration) error {
	k := s.keys(profile)
	err := recoverScript.Run(ctx, s.rdb, []string{k.ready(), k.entries(), k.stats(), k.claim(claim), k.handed()},
		minRemaining.Milliseconds(), s.claimTTL.Milliseconds(), s.now()).Err()
	if err != nil {
		return storeError("recover", err)
	}
	return nil
}

// flush pools what the refiller still holds, once the loop and every mint
// have ended: parked credentials and failed takes' entries. What Redis
// won't take now is lost: counted in Redis if it answers, in metrics and
// in the log either way.
func (r *refiller) flush() {
	for _, name := range r.p.names {
		pr := r.p.profiles[name]
		r.recoverPending(pr)
		r.unpark(pr)
		r.mu.Lock()
		st := r.state[name]
		lost := int64(len(st.parked)+len(st.pending)) + st.lost
		wasted := st.lostWaste
		st.parked, st.pending, st.lost, st.lostWaste = nil, nil, 0, 0
		r.mu.Unlock()
		if lost == 0 && wasted == 0 {
			continue
		}
		r.p.metrics.loss(name, lost)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := r.p.store.count(ctx, pr.tags[0], "lost", lost)
		cancel()
		r.p.log.Warn("pool: stopped holding credentials Redis did not take", "profile", name,
			"lost", lost, "expired_unpooled", wasted, "counted_in_redis", err == nil)
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
			r.p.metrics.loss(profileOf(e.Profile), 1)
		}
	}
	r.mu.Unlock()
	r.wake()
}

// recoverPending recovers the entries of failed takes. One whose claim
// may have expired can no longer be told apart from a take that never ran,
// and counts as lost. It reports false when Redis still fails.
func (r *refiller) recoverPending(pr *profile) bool {
	r.mu.Lock()
	st := r.state[pr.Name]
	list, lost := st.pending, st.lost
	st.pending, st.lost = nil, 0
	r.mu.Unlock()
	if len(list) == 0 && lost == 0 {
		return true
	}
	requeue := func(rest []*UnrecoveredError, lost int64) bool {
		r.mu.Lock()
		st.pending = append(rest, st.pending...)
		st.lost += lost
		r.mu.Unlock()
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	horizon := r.p.store.claimTTL - time.Second // a margin for the clocks of Redis and this host
	var recovered int
	for i, e := range list {
		if r.p.now().Sub(e.At) >= horizon {
			lost++
			r.p.metrics.loss(pr.Name, 1)
			continue
		}
		if err := r.p.store.recoverClaim(ctx, e.Profile, e.Claim, e.MinRemaining); err != nil {
			return requeue(list[i:], lost)
		}
		recovered++
	}
	if lost > 0 {
		if err := r.p.store.count(ctx, pr.tags[0], "lost", lost); err != nil {
			return requeue(nil, lost)
		}
	}
	r.p.log.Warn("pool: takes that failed while Redis was failing", "profile", pr.Name,
		"recovered", recovered, "lost", lost)
	return true
}
