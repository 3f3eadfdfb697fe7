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
const (
	demandTauFast = 5 * time.Second
	demandTauSlow = 60 * time.Second
)

// Rate is the demand to plan for: rising with Fast, falling with Slow.
func (d Demand) Rate() float64 { return math.Max(d.Fast, d.Slow) }

// Sizing sets a profile's target from demand. Zero values mean the
// documented default.
type Sizing struct {
	// Floor is the least target: TOKENPOOL_POOL_TARGET. A prewarm raises
	// it for a while.
	Floor int
	// Ceiling is the most target demand raises it to; a prewarm, itself at
	// most Ceiling, raises the floor. default: 5000
	Ceiling int
	// Headroom is how much demand growth the pool absorbs: the target
	// covers demand × (refill lead + Headroom). default: 2s
	Headroom time.Duration
	// Margin is extra on top, for a rate that is still rising while the
	// pool refills. default: 0.25
	Margin float64
}

func (s Sizing) withDefaults() Sizing {
	if s.Ceiling <= 0 {
		s.Ceiling = DefaultMaxTarget
	}
	if s.Headroom <= 0 {
		s.Headroom = 2 * time.Second
	}
	if s.Margin <= 0 {
		s.Margin = 0.25
	}
	return s
}

// Target is the number of usable credentials (ready and in flight) to
// keep for demand d:
//
//	pipeline = rate × (lead + headroom) × (1 + margin)
//
// where lead is the time a refill takes (the refiller's reaction plus a
// mint), so the pool covers the demand until replacements arrive and a
// burst's growth on top. It is capped by the waste bound, Slow × the
// usable life of a credential: more could not be handed out before going
// stale. The result lies between Floor and Ceiling; Floor wins over the
// waste bound, since the operator asked for it. usableLife zero means
// unknown (no cap).
func (s Sizing) Target(d Demand, lead, usableLife time.Duration) int {
	s = s.withDefaults()
	t := d.Rate() * (lead + s.Headroom).Seconds() * (1 + s.Margin)
	if usableLife > 0 {
		t = math.Min(t, d.Slow*usableLife.Seconds())
	}
	t = math.Min(t, float64(s.Ceiling))
	return max(s.Floor, int(math.Ceil(t)))
}
