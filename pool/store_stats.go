package pool

import (
	"context"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The counters and the shared snapshot of a profile's pool.

// count adds n to one counter of profile.
func (s *Store) count(ctx context.Context, profile, counter string, n int64) error {
	if err := s.rdb.HIncrBy(ctx, s.keys(profile).stats(), counter, n).Err(); err != nil {
		return storeError("count", err)
	}
	return nil
}

// countOnDemand adds one to the fleet-wide on-demand counter label. The
// key holds no profile's hash tag: it is one key, touched alone.
func (s *Store) countOnDemand(ctx context.Context, label string) error {
	if err := s.rdb.HIncrBy(ctx, s.prefix+":ondemand", label, 1).Err(); err != nil {
		return storeError("count", err)
	}
	return nil
}

func (s *Store) onDemand(ctx context.Context) (map[string]int64, error) {
	m, err := s.rdb.HGetAll(ctx, s.prefix+":ondemand").Result()
	if err != nil {
		return nil, storeError("on-demand counters", err)
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return out, nil
}

// Stats is a snapshot of one profile's pool, shared by every replica.
type Stats struct {
	Ready    int    // entries pooled, including any not yet evicted as unusable
	Usable   int    // entries with at least the minimum life left, by this host's clock
	InFlight int    // mint reservations held by all replicas
	Target   int    // the target last applied by a refiller, prewarm included
	Demand   Demand // the fleet's handout requests per second, now
	// Counters since the keys were created.
	Minted              int64 // credentials minted into the pool
	HandedOut           int64 // handed out from the pool
	Direct              int64 // minted for a request on a miss and handed out
	Wasted              int64 // expired or fell below the minimum life unused
	Misses              int64 // takes that found nothing usable
	Fallbacks           int64 // callers served by a fallback profile instead
	MintFailed          int64 // reservations released after a failed mint
	Lapsed              int64 // reservations whose lease ran out (a replica died, or a mint or its put outlasted the lease)
	DuplicatesPrevented int64 // entries seen again after being handed out
	Discarded           int64 // entries taken that could not be opened (tampered with)
	Unreplicated        int64 // takes no replica acknowledged in time (WaitReplicas)
	Lost                int64 // taken in Redis but never delivered, and not recovered
	Returned            int64 // taken, not delivered, and pooled again
	Surplus             int64 // minted after their reservation lapsed, with no room: counted in Wasted too
	Orphaned            int64 // ids in the ready set without a body (should stay 0)
	LedgerTrimmed       int64 // ledger ids dropped to keep it within LedgerMax
	// Wipes counts the datasets found wiped (a restart without persistence,
	// a flush); Dropped the credentials gone with them: those pooled there,
	// as the replica that found the wipe last saw them, and those sent there
	// and refused since. Both are counted in the new dataset.
	Wipes, Dropped int64
	// Unreachable counts the shards whose Redis did not answer: the
	// figures above leave them out.
	Unreachable int
	// What handouts cost over the last minute and hour (Pool.Stats sets
	// them from this replica's samples of the counters above).
	LastMinute, LastHour Cost
}

// add is s with every figure of t added.
func (s Stats) add(t Stats) Stats {
	return Stats{
		Ready: s.Ready + t.Ready, Usable: s.Usable + t.Usable, InFlight: s.InFlight + t.InFlight, Target: s.Target + t.Target,
		Demand: Demand{Fast: s.Demand.Fast + t.Demand.Fast, Slow: s.Demand.Slow + t.Demand.Slow},
		Minted: s.Minted + t.Minted, HandedOut: s.HandedOut + t.HandedOut, Direct: s.Direct + t.Direct,
		Wasted: s.Wasted + t.Wasted, Misses: s.Misses + t.Misses, Fallbacks: s.Fallbacks + t.Fallbacks, MintFailed: s.MintFailed + t.MintFailed,
		Lapsed: s.Lapsed + t.Lapsed, DuplicatesPrevented: s.DuplicatesPrevented + t.DuplicatesPrevented,
		Discarded: s.Discarded + t.Discarded, Unreplicated: s.Unreplicated + t.Unreplicated, Lost: s.Lost + t.Lost,
		Returned: s.Returned + t.Returned, Surplus: s.Surplus + t.Surplus, Orphaned: s.Orphaned + t.Orphaned,
		LedgerTrimmed: s.LedgerTrimmed + t.LedgerTrimmed, Unreachable: s.Unreachable + t.Unreachable,
		Wipes: s.Wipes + t.Wipes, Dropped: s.Dropped + t.Dropped,
	}
}

// Stats reads profile's snapshot in one round trip. Usable counts the
// entries that retire more than minLife from now.
func (s *Store) Stats(ctx context.Context, profile string, minLife time.Duration) (Stats, error) {
	k := s.keys(profile)
	var (
		ready, usable, minting *redis.IntCmd
		counters               *redis.MapStringStringCmd
	)
	cutoff := "(" + strconv.FormatInt(s.hostNow().Add(minLife).UnixMilli(), 10)
	// All keys share a slot, so this pipeline is one round trip on a
	// Cluster too.
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		ready = p.ZCard(ctx, k.ready())
		usable = p.ZCount(ctx, k.ready(), cutoff, "+inf")
		minting = p.ZCard(ctx, k.minting())
		counters = p.HGetAll(ctx, k.stats())
		return nil
	})
	if err != nil {
		return Stats{}, storeError("stats", err)
	}
	c := counters.Val()
	n := func(name string) int64 { v, _ := strconv.ParseInt(c[name], 10, 64); return v }
	f := func(name string) float64 { v, _ := strconv.ParseFloat(c[name], 64); return v }
	dt := s.hostNow().Sub(time.UnixMilli(n("d_at"))).Seconds()
	if n("d_at") == 0 || dt < 0 {
		dt = 0
	}
	return Stats{
		Target: int(n("target")),
		Demand: Demand{
			Fast: f("d_fast") * math.Exp(-dt/demandTauFast.Seconds()),
			Slow: f("d_slow") * math.Exp(-dt/demandTauSlow.Seconds()),
		},
		Ready: int(ready.Val()), Usable: int(usable.Val()), InFlight: int(minting.Val()),
		Minted: n("minted"), HandedOut: n("handed_out"), Direct: n("direct"),
		Wasted: n("wasted"), Misses: n("misses"), Fallbacks: n("fallbacks"), MintFailed: n("mint_failed"),
		Lapsed: n("lapsed"), DuplicatesPrevented: n("duplicates_prevented"), Discarded: n("discarded"), Unreplicated: n("unreplicated"),
		Lost: n("lost"), Returned: n("returned"), Surplus: n("surplus"), Orphaned: n("orphaned"), LedgerTrimmed: n("ledger_trimmed"),
		Wipes: n("wipes"), Dropped: n("dropped") + n("stale_replays"),
	}, nil
}
