package pool

import (
	"context"
	"fmt"
	"strconv"
	"time"
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
	v, err := reserveScript.Run(ctx, s.rdb,
		[]string{k.ready(), k.entries(), k.minting(), k.stats(), k.handed(), k.prewarm()},
		a.target, a.want, a.lease.Milliseconds(), a.minRemaining.Milliseconds(), a.lead.Milliseconds(),
		s.now(), demandTauFast.Milliseconds(), demandTauSlow.Milliseconds(), a.idPrefix, a.firstID).Result()
	if err != nil {
		return reservation{}, storeError("reserve", err)
	}
	list, ok := v.([]any)
	if !ok || len(list) != 9 {
		return reservation{}, fmt.Errorf("pool: reserve: unexpected reply %T", v)
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

// put pools a minted credential under entryID and ends reservation resID.
// It reports whether the entry was pooled (false: already unusable).
func (s *Store) put(ctx context.Context, profile, resID, entryID string, retire time.Time, c Credential, minRemaining time.Duration) (bool, error) {
	body, err := s.encode(profile, entryID, c)
	if err != nil {
		return false, fmt.Errorf("pool: put: %w", err)
	}
	k := s.keys(profile)
	n, err := putScript.Run(ctx, s.rdb,
		[]string{k.ready(), k.entries(), k.minting(), k.stats(), k.handed()},
		resID, entryID, retire.UnixMilli(), body, minRemaining.Milliseconds(), s.now()).Int64()
	if err != nil {
		return false, storeError("put", err)
	}
	return n == 1, nil
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
