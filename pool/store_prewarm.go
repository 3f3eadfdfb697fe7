package pool

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The prewarm: a raised floor shared by every replica until a time.

// SetPrewarm raises profile's floor to ready until the given time, for
// every replica; ready 0 ends a prewarm.
func (s *Store) SetPrewarm(ctx context.Context, profile string, ready int, until time.Time) error {
	return s.setPrewarm(ctx, profile, ready, ready, until)
}

// setPrewarm raises one shard's floor to ready, its share of the
// profile's total.
func (s *Store) setPrewarm(ctx context.Context, profile string, ready, total int, until time.Time) error {
	k := s.keys(profile).prewarm()
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if ready <= 0 {
			p.Del(ctx, k)
			return nil
		}
		p.HSet(ctx, k, "ready", ready, "total", total, "until", until.UnixMilli())
		p.PExpireAt(ctx, k, until)
		return nil
	})
	if err != nil {
		return storeError("prewarm", err)
	}
	return nil
}

// Prewarm returns profile's active prewarm; ready is 0 when there is none.
func (s *Store) Prewarm(ctx context.Context, profile string) (ready int, until time.Time, err error) {
	v, err := s.rdb.HMGet(ctx, s.keys(profile).prewarm(), "ready", "until", "total").Result()
	if err != nil {
		return 0, time.Time{}, storeError("prewarm", err)
	}
	r, _ := v[0].(string)
	u, _ := v[1].(string)
	if t, ok := v[2].(string); ok {
		r = t
	}
	ready, _ = strconv.Atoi(r)
	ms, _ := strconv.ParseInt(u, 10, 64)
	if ready <= 0 || ms <= s.hostNow().UnixMilli() {
		return 0, time.Time{}, nil
	}
	return ready, time.UnixMilli(ms), nil
}
