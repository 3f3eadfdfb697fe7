package limiter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Usage is one quota key's state in its current window.
type Usage struct {
	Key     string    // the check's Key (Check.Key), without the limiter's prefix
	Used    int       // sessions spent in the window
	Resets  time.Time // the window's end, by the key's Redis clock
	Missing bool      // the key expired between the scan and the read
}

// QuotaUsage lists the quota keys matching pattern (a SCAN MATCH pattern
// of Check.Key, with \ escaping), on every master of a Cluster. It reads
// at most max keys (0: no bound) and says whether more matched.
func (l *Limiter) QuotaUsage(ctx context.Context, pattern string, max int) (out []Usage, more bool, err error) {
	prefix := l.quotaPrefix()
	var mu sync.Mutex
	now := time.Now()
	scan := func(ctx context.Context, c redis.Cmdable) error {
		it := c.Scan(ctx, 0, EscapeGlob(prefix)+pattern, 1000).Iterator()
		var keys []string
		for it.Next(ctx) && (max <= 0 || len(keys) <= max) {
			keys = append(keys, it.Val())
		}
		if err := it.Err(); err != nil {
			return err
		}
		us, err := readUsage(ctx, c, prefix, keys, now)
		mu.Lock()
		out = append(out, us...)
		mu.Unlock()
		return err
	}
	if cc, ok := l.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, l.rdb)
	}
	if err != nil {
		return nil, false, fmt.Errorf("limiter: quota usage: %w", err)
	}
	if max > 0 && len(out) > max {
		return out[:max], true, nil
	}
	return out, false, nil
}

// readUsage reads keys' counts and windows in one pipeline on c. A key
// gone, or of a window that has ended, is Missing.
func readUsage(ctx context.Context, c redis.Cmdable, prefix string, keys []string, now time.Time) ([]Usage, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := c.Pipeline()
	gets := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		gets[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	out := make([]Usage, 0, len(keys))
	for i, k := range keys {
		u := Usage{Key: strings.TrimPrefix(k, prefix), Missing: true}
		count, end, ok := strings.Cut(gets[i].Val(), " ")
		n, err1 := strconv.Atoi(count)
		ms, err2 := strconv.ParseInt(end, 10, 64)
		if ok && err1 == nil && err2 == nil && time.UnixMilli(ms).After(now) {
			u.Used, u.Resets, u.Missing = n, time.UnixMilli(ms), false
		}
		out = append(out, u)
	}
	return out, nil
}

// ResetQuotas deletes the quota keys of keys (Check.Key values): their
// windows start over empty. It returns how many existed.
func (l *Limiter) ResetQuotas(ctx context.Context, keys []string) (int, error) {
	n := 0
	for _, k := range keys {
		// One key a call: on a Cluster they lie in different slots.
		d, err := l.rdb.Del(ctx, l.quotaPrefix()+k).Result()
		if err != nil {
			return n, fmt.Errorf("limiter: reset a quota: %w", err)
		}
		n += int(d)
	}
	return n, nil
}

// EscapeGlob escapes s for a SCAN MATCH pattern.
func EscapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
