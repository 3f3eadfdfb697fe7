package pool

import (
	"math"
	"time"
)

// Demand is a profile's fleet-wide handout rate, in handouts per second,
// as two exponentially decaying event rates kept in Redis by the take
// script: Fast follows a burst within seconds, Slow remembers the last
// minutes.
type Demand struct {
	Fast, Slow float64
}

// Rounded is d to two decimals, for reports and logs.
func (d Demand) Rounded() Demand {
	r := func(f float64) float64 { return math.Round(f*100) / 100 }
	return Demand{Fast: r(d.Fast), Slow: r(d.Slow)}
}

// Time constants of the demand rates (the take script uses the same).
// Fast is the rate a pool is sized by: it reaches 63% of a burst's rate
// within a second and falls as fast when the burst ends. Slow remembers
// the last minutes, and bounds the target by what can be handed out
// before credentials go stale.
const (
	demandTauFast = time.Second
	demandTauSlow = 60 * time.Second
)

// Rate is the demand to plan for: the fast rate, up and down. A pool that
// kept the slow rate's memory after a burst would keep replacing
// credentials that nobody takes any more.
func (d Demand) Rate() float64 { return d.Fast }

// Sizing sets a profile's target from demand. Zero values mean the
// documented default.
type Sizing struct {
	// Floor is the least target: TOKENPOOL_POOL_TARGET. A prewarm raises
	// it for a while.
	Floor int
	// Ceiling is the most target demand raises it to; a prewarm, itself at
	// most Ceiling, raises the floor. default: 5000
	Ceiling int
	// Headroom is demand the pool covers beyond the refill lead, for
	// growth it should absorb without minting: each second of it is a
	// second of demand left over when a burst ends. default: none
	Headroom time.Duration
	// Margin is the share added for a mint slower than the lead expects
	// and a rate still rising. default: 0.25
	Margin float64
}

// spreadSigmas is how many standard deviations of the number of arrivals
// in one refill lead the pool holds beyond their mean: random arrivals
// bunch up, and a pool sized to their mean would miss on every bunch.
const spreadSigmas = 3

func (s Sizing) withDefaults() Sizing {
	if s.Ceiling <= 0 {
		s.Ceiling = DefaultMaxTarget
	}
	s.Headroom = max(s.Headroom, 0)
	if s.Margin <= 0 {
		s.Margin = 0.25
	}
	return s
}

// Target is the number of usable credentials (ready and in flight) to
// keep for demand d:
//
//	pipeline = rate × (lead + headroom) × (1 + margin) + 3 √(rate × lead)
//
// where lead is the time from a take to its replacement being pooled (the
// refiller's reaction to the take plus a mint), so the pool holds what is
// taken until replacements arrive, the bunching of random arrivals (the
// square root: the count of arrivals in a lead is Poisson) and a margin.
// What the pool holds when a burst ends is left over: the target is kept
// to what the refill needs, about half a second of demand at a 200 ms
// mint. It is capped by the waste bound, Slow × the usable life of a
// credential: more could not be handed out before going stale. The result
// lies between Floor and Ceiling; Floor wins over the waste bound, since
// the operator asked for it. usableLife zero means unknown (no cap).
func (s Sizing) Target(d Demand, lead, usableLife time.Duration) int {
	s = s.withDefaults()
	r := d.Rate()
	t := r*(lead+s.Headroom).Seconds()*(1+s.Margin) + spreadSigmas*math.Sqrt(r*lead.Seconds())
	if usableLife > 0 {
		t = math.Min(t, d.Slow*usableLife.Seconds())
	}
	t = math.Min(t, float64(s.Ceiling))
	return max(s.Floor, int(math.Ceil(t)))
}
