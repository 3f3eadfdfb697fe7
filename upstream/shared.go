package upstream

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/limiter"
)

// Shared is provider state every replica sees through Redis, so the fleet
// acts as one client of the provider:
//
//   - a mint quota (redis_rate, one key per provider), spaced evenly so the
//     provider never sees more than the rate in any second;
//   - a pause: a 429's Retry-After, seen by every replica;
//   - an open breaker: one replica's open breaker stops the others too,
//     for the breaker's cool-down.
//
// The pause and open flags are short-lived keys under one hash tag,
// <prefix>:{upstream:<provider>}:pause|open, read in one round trip before
// each mint attempt. A Shared is safe for concurrent use.
type Shared struct {
	rdb     redis.UniversalClient
	lim     *limiter.Limiter
	quota   limiter.Limit
	prefix  string
	replica string
}

// SharedConfig configures a Shared. Zero values mean the default.
type SharedConfig struct {
	// Redis is the store every replica shares. Required.
	Redis redis.UniversalClient
	// KeyPrefix starts every key. default: limiter.DefaultKeyPrefix
	KeyPrefix string
	// Quota is the fleet's mint rate per provider; its burst is ignored and
	// mints are spaced evenly. default: unlimited
	Quota limiter.Limit
	// Replica names this replica in the open-breaker flag. default: ""
	Replica string
}

// NewShared returns a Shared on cfg.Redis.
func NewShared(cfg SharedConfig) *Shared {
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = limiter.DefaultKeyPrefix
	}
	if cfg.Quota.Rate > 0 {
		cfg.Quota.Burst = 1
	}
	return &Shared{
		rdb: cfg.Redis, lim: limiter.New(cfg.Redis, cfg.KeyPrefix), quota: cfg.Quota,
		prefix: cfg.KeyPrefix, replica: cfg.Replica,
	}
}

func (s *Shared) key(provider, what string) string { return sharedKey(s.prefix, provider, what) }

func sharedKey(prefix, provider, what string) string {
	return cmp.Or(prefix, limiter.DefaultKeyPrefix) + ":{upstream:" + provider + "}:" + what
}

// PauseKey and OpenKey name the fleet's pause and open-breaker flags of
// provider under prefix (SharedConfig.KeyPrefix; "" for the default), for tools and tests
// that read Redis itself.
func PauseKey(prefix, provider string) string { return sharedKey(prefix, provider, "pause") }
func OpenKey(prefix, provider string) string  { return sharedKey(prefix, provider, "open") }

// hold is why minting must wait, and how long.
type hold struct {
	wait   time.Duration
	reason string // "paused" (the provider asked) or "breaker open" (on another replica)
}

// gate reads the pause and open flags in one round trip.
func (s *Shared) gate(ctx context.Context, provider string) (hold, error) {
	var pause, open *redis.DurationCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		pause = p.PTTL(ctx, s.key(provider, "pause"))
		open = p.PTTL(ctx, s.key(provider, "open"))
		return nil
	})
	if err != nil {
		return hold{}, fmt.Errorf("upstream: shared state: %w", err)
	}
	// PTTL is negative for a missing key.
	switch p, o := pause.Val(), open.Val(); {
	case p > 0 && p >= o:
		return hold{wait: p, reason: "paused"}, nil
	case o > 0:
		return hold{wait: o, reason: "breaker open"}, nil
	}
	return hold{}, nil
}

// extendScript sets KEYS[1] to ARGV[1] for ARGV[2] ms unless it already
// lives longer.
var extendScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
`)

// pause asks every replica to stop minting for d.
func (s *Shared) pause(ctx context.Context, provider string, d time.Duration) error {
	return s.extend(ctx, s.key(provider, "pause"), d)
}

// opened tells every replica this replica's breaker opened for d.
func (s *Shared) opened(ctx context.Context, provider string, d time.Duration) error {
	return s.extend(ctx, s.key(provider, "open"), d)
}

func (s *Shared) extend(ctx context.Context, key string, d time.Duration) error {
	if err := extendScript.Run(ctx, s.rdb, []string{key}, s.replica, max(d.Milliseconds(), 1)).Err(); err != nil {
		return fmt.Errorf("upstream: shared state: %w", err)
	}
	return nil
}

// Resume lifts the fleet's pause and open-breaker flags for provider, so
// every replica may mint again (each within fleetRecheck). It returns the
// flags it lifted: "pause", "open".
func (s *Shared) Resume(ctx context.Context, provider string) ([]string, error) {
	var lifted []string
	for _, what := range []string{"pause", "open"} {
		n, err := s.rdb.Del(ctx, s.key(provider, what)).Result()
		if err != nil {
			return lifted, fmt.Errorf("upstream: shared state: %w", err)
		}
		if n > 0 {
			lifted = append(lifted, what)
		}
	}
	return lifted, nil
}

// take claims one mint from the fleet's quota. It returns how long to wait
// before trying again when the quota is spent; zero when claimed.
func (s *Shared) take(ctx context.Context, provider string) (time.Duration, error) {
	if s.quota.Rate <= 0 {
		return 0, nil
	}
	d, err := s.lim.Allow(ctx, "upstream:"+provider, s.quota)
	if err != nil {
		return 0, fmt.Errorf("upstream: mint quota: %w", err)
	}
	if d.Allowed {
		return 0, nil
	}
	return max(d.RetryAfter, time.Millisecond), nil
}
