package limiter

import (
	"sync"
	"time"
)

// DenyCache remembers refusals on this replica: a key refused until T is
// refused again until T without asking Redis, so a flood from a refused
// client or user costs no Redis call per request. A remembered refusal
// ends at the retry time Redis gave, when Redis would allow again. It is
// safe for concurrent use.
type DenyCache struct {
	max int
	now func() time.Time

	mu    sync.Mutex
	m     map[string]denial // guarded by mu
	swept time.Time         // last sweep of m; guarded by mu
}

// denial is a refusal remembered: the decision and when it was made.
type denial struct {
	d          Decision
	until, end time.Time // retry and reset times
}

// NewDenyCache returns a cache of at most size refusals (default 100,000)
// on clock now (default time.Now). When it is full, expired refusals are
// dropped, at most once a second; refusals past that are not remembered
// (Redis refuses them).
func NewDenyCache(size int, now func() time.Time) *DenyCache {
	if size <= 0 {
		size = 100_000
	}
	if now == nil {
		now = time.Now
	}
	return &DenyCache{max: size, now: now, m: make(map[string]denial)}
}

func denyKey(policy, key string) string { return policy + "\x00" + key }

// Denied returns the remembered refusal of key under policy, with its
// retry and reset times counted down to now, if one is still in force.
func (c *DenyCache) Denied(policy, key string) (Decision, bool) {
	k := denyKey(policy, key)
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[k]
	if ok && !now.Before(e.until) {
		delete(c.m, k)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return Decision{}, false
	}
	d := e.d
	d.RetryAfter = e.until.Sub(now)
	d.ResetAfter = max(e.end.Sub(now), 0)
	return d, true
}

// Remember keeps the refusals among ds, the decisions of checks, until
// their retry times.
func (c *DenyCache) Remember(checks []Check, ds []Decision) {
	now := c.now()
	for i, d := range ds {
		if d.Allowed || d.RetryAfter <= 0 || i >= len(checks) || d.Quota {
			// A quota's refusal is not kept: its window can last a day,
			// and an operator may reset it on any replica.
			continue
		}
		k := denyKey(checks[i].Policy, checks[i].Key)
		c.mu.Lock()
		if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
			c.sweepLocked(now)
		}
		if _, ok := c.m[k]; ok || len(c.m) < c.max {
			c.m[k] = denial{d: d, until: now.Add(d.RetryAfter), end: now.Add(d.ResetAfter)}
		}
		c.mu.Unlock()
	}
}

// sweepLocked drops the refusals no longer in force, unless it did less
// than a second ago.
func (c *DenyCache) sweepLocked(now time.Time) {
	if now.Sub(c.swept) < time.Second {
		return
	}
	c.swept = now
	for k, e := range c.m {
		if !now.Before(e.until) {
			delete(c.m, k)
		}
	}
}
