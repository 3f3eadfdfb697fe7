package pool

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/mint"
)

// The refill protocol: leased reservations, the put of a minted
// credential, the release of a reservation.

// reserveArgs are the inputs of one reservation round.
type reserveArgs struct {
	target       int
	want         int           // reservations the caller could use
	idPrefix     string        // reservation ids are idPrefix followed by firstID, firstID+1, …
	firstID      uint64        // (unique per replica: the prefix names it)
	lease        time.Duration // how long a reservation holds before it lapses
	minRemaining time.Duration
	lead         time.Duration // time a refill takes: entries unusable by then don't count
}

// reservation is what reserveScript granted and saw.
type reservation struct {
	ids      []string // granted reservation ids
	usable   int      // entries still usable after the lead
	inFlight int      // reservations already held, by any replica
	ready    int      // every pooled entry, usable or not yet evicted
	target   int      // the target applied: the asked one, or a prewarm's
	evicted  int64    // entries this round dropped as waste
	demand   Demand   // the fleet's demand, now
}

func (s *Store) reserve(ctx context.Context, profile string, a reserveArgs) (reservation, error) {
	k := s.keys(profile)
	last := s.datasets.get(profile)
	v, err := reserveScript.Run(ctx, s.rdb,
		[]string{k.ready(), k.entries(), k.minting(), k.stats(), k.handed(), k.prewarm()},
		a.target, a.want, a.lease.Milliseconds(), a.minRemaining.Milliseconds(), a.lead.Milliseconds(),
		s.now(), demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), a.idPrefix, a.firstID,
		newEpoch(), last.epoch, last.ready).Result()
	if err != nil {
		return reservation{}, storeError("reserve", err)
	}
	list, ok := v.([]any)
	if !ok || len(list) != 11 {
		return reservation{}, fmt.Errorf("pool: reserve: unexpected reply %T", v)
	}
	epoch, _ := list[9].(string)
	dropped, _ := list[10].(int64)
	if epoch == "" {
		return reservation{}, fmt.Errorf("pool: reserve: no epoch in the reply")
	}
	if dropped >= 0 {
		s.metrics.wipe(profileOf(profile), dropped)
		s.logger().Warn("pool: the Redis dataset was wiped (a restart without persistence, or a flush): "+
			"what this replica last saw pooled there is counted as dropped", "profile", profileOf(profile),
			"shard", profile, "dropped", dropped)
	}
	n, err := int64s(list[:7], 7)
	if err != nil {
		return reservation{}, fmt.Errorf("pool: reserve: %w", err)
	}
	fast, err1 := floatString(list[7])
	slow, err2 := floatString(list[8])
	if err1 != nil || err2 != nil {
		return reservation{}, fmt.Errorf("pool: reserve: demand: %v %v", err1, err2)
	}
	s.metrics.waste(profileOf(profile), n[5])
	s.datasets.set(profile, dataset{epoch: epoch, ready: n[3]})
	granted := min(int(n[0]), a.want)
	ids := make([]string, granted)
	for i := range ids {
		ids[i] = a.idPrefix + strconv.FormatUint(a.firstID+uint64(i), 10)
	}
	return reservation{
		ids: ids, usable: int(n[1]), inFlight: int(n[2]), ready: int(n[3]),
		target: int(n[4]), evicted: n[5], demand: Demand{Fast: fast, Slow: slow},
	}, nil
}

func floatString(v any) (float64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("unexpected %T", v)
	}
	return strconv.ParseFloat(s, 64)
}

// putArgs is one credential to pool.
type putArgs struct {
	resID   string // its reservation ("": none, pooled only if there is room)
	entryID string
	retire  time.Time
	cred    mint.Credential
	sentTo  string // the epoch an earlier send went to, if it may have run; "": none
	// void names the request whose issuance record the put voids: a
	// credential minted for it that goes back. "": none.
	void string
}

// resendMark is the put's "an earlier send may have run" argument: "1"
// for a credential sent before, and for a first put "0" the first time it
// is written to a connection and "1" after, when go-redis sends it again
// (a retry after a broken connection, EVAL after NOSCRIPT).
type resendMark struct {
	first bool
	sent  atomic.Int32
}

// notRun forgets a send Redis refused before running it (NOSCRIPT), if it
// was the only one.
func (m *resendMark) notRun() { m.sent.CompareAndSwap(1, 0) }

// MarshalBinary returns the argument, and counts a send.
func (m *resendMark) MarshalBinary() ([]byte, error) {
	if m.sent.Add(1) == 1 && m.first {
		return []byte("0"), nil
	}
	return []byte("1"), nil
}

// errNoEpoch refuses a put to a shard whose dataset no reservation has
// seen yet: nothing is sent, and the put can be tried again later.
var errNoEpoch = errors.New("pool: put: the shard's dataset is not known yet")

// put pools a credential in shard tag. It reports whether the entry was
// pooled (false: already unusable, no room, or an earlier send's dataset
// was wiped since: then it is counted, and gone) and, on an error, the
// epoch a resend must name: the dataset last seen there when it may have
// run, else "".
func (s *Store) put(ctx context.Context, tag string, a putArgs, minRemaining time.Duration) (pooled bool, sentTo string, err error) {
	body, err := s.encode(tag, a.entryID, a.cred)
	if err != nil {
		return false, a.sentTo, fmt.Errorf("pool: put: %w", err)
	}
	epoch := a.sentTo
	if epoch == "" {
		epoch = s.datasets.get(tag).epoch
	}
	if epoch == "" {
		// No reservation has seen the shard's dataset: a lost reply could
		// not be told from a wipe.
		return false, "", errNoEpoch
	}
	mark := &resendMark{first: a.sentTo == ""}
	k := s.keys(tag)
	keys := []string{k.ready(), k.entries(), k.minting(), k.stats(), k.handed(), k.issued(), k.issuedMark(a.void)}
	args := []any{a.resID, a.entryID, a.retire.UnixMilli(), body, minRemaining.Milliseconds(), s.now(), epoch, mark,
		boolArg(a.void != ""), markUntil(a.cred.ExpiresAt)}
	n, err := s.rdb.EvalSha(ctx, putScript.Hash(), keys, args...).Int64()
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		mark.notRun()
		n, err = s.rdb.Eval(ctx, putSource, keys, args...).Int64()
	}
	if err != nil {
		if mark.sent.Load() > 0 || a.sentTo != "" {
			return false, epoch, storeError("put", err)
		}
		return false, "", storeError("put", err)
	}
	if n == 2 {
		s.metrics.drop(profileOf(tag))
		s.logger().Warn("pool: a credential resent after its Redis dataset was wiped was not pooled: counted as dropped",
			"profile", profileOf(tag), "shard", tag)
	}
	return n == 1, "", nil
}

// release ends reservations without an entry and adds their number to the
// counter named by why.
func (s *Store) release(ctx context.Context, profile, why string, resIDs ...string) error {
	if len(resIDs) == 0 {
		return nil
	}
	k := s.keys(profile)
	args := make([]any, 0, 1+len(resIDs))
	args = append(args, why)
	for _, id := range resIDs {
		args = append(args, id)
	}
	if err := releaseScript.Run(ctx, s.rdb, []string{k.minting(), k.stats()}, args...).Err(); err != nil {
		return storeError("release", err)
	}
	return nil
}
