// Package limiter enforces rate limits shared by every replica with GCRA
// in Redis scripts, and renders them as RateLimit-Policy / RateLimit
// headers (IETF httpapi draft) and Retry-After. Allow is
// github.com/go-redis/redis_rate; AllowAll and LuaGCRA are the same
// algorithm on the same keys, for several checks in one call, alone or
// folded into another script (the pool's take); DenyCache remembers
// refusals so that a refused caller costs no Redis call until its retry
// time.
package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limit is Rate events per Period, with bursts of up to Burst.
type Limit = redis_rate.Limit

// Parse reads a limit such as "10/m", "5/s", "1000/h" or "50/10s": a
// positive count, a slash, and a unit (s, m, h) or a Go duration. The
// burst equals the count. Zero, negative or malformed limits are errors,
// caught at start rather than as Redis script errors later.
func Parse(s string) (Limit, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Limit{}, fmt.Errorf("limit %q: want COUNT/PERIOD, e.g. 10/m", s)
	}
	rate, err := strconv.Atoi(n)
	if err != nil || rate <= 0 {
		return Limit{}, fmt.Errorf("limit %q: count must be a positive whole number", s)
	}
	var period time.Duration
	switch per {
	case "s":
		period = time.Second
	case "m":
		period = time.Minute
	case "h":
		period = time.Hour
	default:
		period, err = time.ParseDuration(per)
		if err != nil || period < time.Millisecond {
			return Limit{}, fmt.Errorf("limit %q: period must be s, m, h or a duration of at least 1ms", s)
		}
	}
	return Limit{Rate: rate, Burst: rate, Period: period}, nil
}

// Limiter checks limits in Redis. It is safe for concurrent use.
type Limiter struct {
	rl     *redis_rate.Limiter
	rdb    redis.UniversalClient
	prefix string
}

// DefaultKeyPrefix starts every Redis key of tokenpool unless told
// otherwise: the limits', the pool's and the fleet's provider state.
const DefaultKeyPrefix = "tp"

// New returns a Limiter whose keys start with prefix (default
// DefaultKeyPrefix).
func New(rdb redis.UniversalClient, prefix string) *Limiter {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return &Limiter{rl: redis_rate.NewLimiter(rdb), rdb: rdb, prefix: prefix + ":rl:"}
}

// Decision is the outcome of one check.
type Decision struct {
	// Policy names the check decided (Check.Policy; empty from Allow).
	Policy  string
	Allowed bool
	Limit   Limit
	// Remaining is how many more events would be allowed right now.
	Remaining int
	// RetryAfter is how long until the next event is allowed, when denied.
	RetryAfter time.Duration
	// ResetAfter is how long until the full burst is available again.
	ResetAfter time.Duration
	// Quota marks a quota's decision (Check.Quota). Window is, when it
	// allowed and spent, the end of the window it spent in (ms by its
	// key's Redis clock), which RefundQuota names; 0 when nothing is left
	// to refund.
	Quota  bool
	Window int64
}

// Allow counts one event for key against lim.
func (l *Limiter) Allow(ctx context.Context, key string, lim Limit) (Decision, error) {
	return l.AllowN(ctx, key, lim, 1)
}

// AllowN counts n events for key against lim, all or none.
func (l *Limiter) AllowN(ctx context.Context, key string, lim Limit, n int) (Decision, error) {
	if lim.Rate <= 0 || lim.Period <= 0 {
		return Decision{}, errors.New("limiter: zero limit")
	}
	res, err := l.rl.AllowN(ctx, l.prefix+key, lim, n)
	if err != nil {
		return Decision{}, fmt.Errorf("limiter: %w", err)
	}
	return Decision{
		Allowed: res.Allowed >= n, Limit: lim, Remaining: res.Remaining,
		RetryAfter: max(res.RetryAfter, 0), ResetAfter: max(res.ResetAfter, 0),
	}, nil
}

// SetHeaders adds this decision as the named policy to h:
//
//	RateLimit-Policy: "user";q=30;w=60
//	RateLimit: "user";r=29;t=2
//
// and, when denied, Retry-After in whole seconds (at least 1).
func (d Decision) SetHeaders(h http.Header, policy string) {
	name := strconv.Quote(policy)
	h.Add("RateLimit-Policy", fmt.Sprintf("%s;q=%d;w=%d", name, d.Limit.Rate, seconds(d.Limit.Period)))
	h.Add("RateLimit", fmt.Sprintf("%s;r=%d;t=%d", name, d.Remaining, seconds(d.ResetAfter)))
	if !d.Allowed {
		h.Set("Retry-After", RetryAfter(d.RetryAfter))
	}
}

// RetryAfter is a Retry-After header's value for a wait of d: whole
// seconds, rounded up, at least 1.
func RetryAfter(d time.Duration) string {
	return strconv.Itoa(max(seconds(d), 1))
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}
