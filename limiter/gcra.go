package limiter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrDenied is matched by the error of a call refused by a limit.
var ErrDenied = errors.New("limiter: denied")

// Check is one limit applied to one key, named for the RateLimit headers.
type Check struct {
	Policy string // names the limit in the headers, e.g. "user"
	Key    string // what is limited, e.g. "user:alice"
	Limit  Limit
	// Quota makes the check a session quota instead of a rate: at most
	// Limit.Rate events per fixed window of Limit.Period (windows start at
	// whole multiples of the period since the Unix epoch, by the Redis
	// clock of the key), spent by a take that hands out or reserves a
	// credential and refunded (RefundQuota) when none is delivered. A
	// quota check is never counted when another quota of the same call
	// refuses: quotas are spent all together or not at all. Quota checks
	// come after the rates in a call.
	Quota bool
}

// LuaGCRA defines limits(kb, ab, n, peek, t) for Redis scripts that apply
// caller limits together with other work in one call (the pool's take
// does): the GCRA of redis_rate (same keys, same values, same answers),
// over n checks whose keys are KEYS[kb+1 .. kb+n] and whose limits are
// ARGV[ab+1 ..] as (burst, rate, period in seconds) triples, in order.
// Each allowed check is counted at once; the first denied one stops, and
// the checks after it are neither counted nor reported. With peek true
// (a retried call that was counted already) nothing is counted and each
// check reports its state. It returns whether every check allowed, and a
// flat list {allowed, remaining, retry after s, reset after s} per check
// reached. t is the script's TIME reply (nil: limits() asks).
//
// A triple whose burst is 0 is a quota (Check.Quota; quotas follow the
// rates): its key holds the window's count and expires when the window
// ends. The quotas are read together and spent together, only when all
// allow; an allowed quota reports its window's end (ms) instead of a
// retry time.
const LuaGCRA = `
-- A quota's key holds "<count> <window end ms>": a count of an earlier
-- window (a key not expired yet) counts as 0.
local function quota_count(key, window)
  local v = redis.call('GET', key)
  if not v then return 0 end
  local c, w = string.match(v, '^(%d+) (%d+)$')
  if tonumber(w) ~= window then return 0 end
  return tonumber(c)
end

local function quotas(kb, ab, q, n, peek, t, out)
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local counts, ends = {}, {}
  for i = q, n do
    local limit, period = tonumber(ARGV[ab + 3*i - 1]), math.floor(tonumber(ARGV[ab + 3*i]) * 1000)
    ends[i] = (math.floor(now / period) + 1) * period
    counts[i] = quota_count(KEYS[kb + i], ends[i])
    if not peek and counts[i] >= limit then
      for j = q, i - 1 do -- reached, not spent: no window to refund
        table.insert(out, 1)
        table.insert(out, tonumber(ARGV[ab + 3*j - 1]) - counts[j])
        table.insert(out, '0')
        table.insert(out, tostring((ends[j] - now) / 1000))
      end
      table.insert(out, 0)
      table.insert(out, 0)
      table.insert(out, tostring((ends[i] - now) / 1000))
      table.insert(out, tostring((ends[i] - now) / 1000))
      return false, out
    end
  end
  for i = q, n do
    local limit = tonumber(ARGV[ab + 3*i - 1])
    if not peek then
      counts[i] = counts[i] + 1
      local w = string.format('%d', ends[i])
      redis.call('SET', KEYS[kb + i], string.format('%d', counts[i]) .. ' ' .. w, 'PXAT', w)
    end
    table.insert(out, 1)
    table.insert(out, math.max(limit - counts[i], 0))
    table.insert(out, string.format('%d', ends[i]))
    table.insert(out, tostring((ends[i] - now) / 1000))
  end
  return true, out
end

local function limits(kb, ab, n, peek, t)
  local out, ok = {}, true
  if n == 0 then return ok, out end
  -- redis_rate's clock: seconds since 2017-01-01, with microseconds.
  t = t or redis.call('TIME')
  local now = (t[1] - 1483228800) + (t[2] / 1000000)
  for i = 1, n do
    local key = KEYS[kb + i]
    local burst, rate, period = tonumber(ARGV[ab + 3*i - 2]), tonumber(ARGV[ab + 3*i - 1]), tonumber(ARGV[ab + 3*i])
    if burst == 0 then return quotas(kb, ab, i, n, peek, t, out) end
    local emission = period / rate
    local tat = tonumber(redis.call('GET', key)) or now
    tat = math.max(tat, now)
    if peek then
      local diff = now - (tat - emission * burst)
      table.insert(out, 1)
      table.insert(out, math.max(diff / emission, 0))
      table.insert(out, '-1')
      table.insert(out, tostring(tat - now))
    else
      local new_tat = tat + emission
      local diff = now - (new_tat - emission * burst)
      if diff < 0 then
        table.insert(out, 0)
        table.insert(out, 0)
        table.insert(out, tostring(-diff))
        table.insert(out, tostring(tat - now))
        return false, out
      end
      local reset = new_tat - now
      if reset > 0 then
        redis.call('SET', key, new_tat, 'EX', math.ceil(reset))
      end
      table.insert(out, 1)
      table.insert(out, diff / emission)
      table.insert(out, '-1')
      table.insert(out, tostring(reset))
    end
  end
  return ok, out
end
`

// allowScript applies checks alone, with nothing else in the call.
//
// KEYS: the checks' keys. ARGV: their (burst, rate, period s) triples.
// Reply: the flat list of limits().
var allowScript = redis.NewScript(LuaGCRA + `
local _, out = limits(0, 0, #KEYS, false)
return out
`)

// key is the Redis key of a check: for a rate, redis_rate's own, so
// replicas that check a limit with redis_rate and with LuaGCRA share it.
func (l *Limiter) key(c Check) string {
	if c.Quota {
		return l.quotaPrefix() + c.Key
	}
	return "rate:" + l.prefix + c.Key
}

// quotaPrefix starts every quota's key.
func (l *Limiter) quotaPrefix() string { return strings.TrimSuffix(l.prefix, "rl:") + "quota:" }

// ScriptArgs returns the KEYS and ARGV that LuaGCRA's limits() reads for
// checks, in order.
func (l *Limiter) ScriptArgs(checks []Check) (keys []string, args []any) {
	keys = make([]string, len(checks))
	args = make([]any, 0, 3*len(checks))
	for i, c := range checks {
		keys[i] = l.key(c)
		burst := c.Limit.Burst
		if c.Quota {
			burst = 0
		}
		args = append(args, burst, c.Limit.Rate, c.Limit.Period.Seconds())
	}
	return keys, args
}

// Decisions reads the flat list limits() returned for checks: one
// Decision per check reached.
func Decisions(checks []Check, reply []any) ([]Decision, error) {
	if len(reply)%4 != 0 || len(reply)/4 > len(checks) {
		return nil, fmt.Errorf("limiter: unexpected reply of %d elements for %d checks", len(reply), len(checks))
	}
	out := make([]Decision, len(reply)/4)
	for i := range out {
		r := reply[4*i : 4*i+4]
		ok, okOK := r[0].(int64)
		rem, remOK := r[1].(int64)
		reset, err2 := seconds64(r[3])
		var (
			retry  time.Duration
			window int64
			err1   error
		)
		if checks[i].Quota && ok == 1 {
			window, err1 = windowEnd(r[2])
		} else {
			retry, err1 = seconds64(r[2])
		}
		if !okOK || !remOK || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("limiter: unexpected reply for check %d: %v", i+1, r)
		}
		out[i] = Decision{
			Policy: checks[i].Policy, Allowed: ok == 1, Limit: checks[i].Limit, Remaining: int(rem),
			RetryAfter: max(retry, 0), ResetAfter: max(reset, 0), Quota: checks[i].Quota, Window: window,
		}
	}
	return out, nil
}

// Allowed reports whether ds, the decisions of checks, allow them all:
// every check was reached, and none denied.
func Allowed(checks []Check, ds []Decision) bool {
	if len(ds) != len(checks) {
		return false
	}
	for _, d := range ds {
		if !d.Allowed {
			return false
		}
	}
	return true
}

// windowEnd reads an allowed quota's window end, ms.
func windowEnd(v any) (int64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("unexpected %T", v)
	}
	return strconv.ParseInt(s, 10, 64)
}

// seconds64 reads a script's seconds string as redis_rate does.
func seconds64(v any) (time.Duration, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("unexpected %T", v)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(f * float64(time.Second)), nil
}

// AllowAll counts one event against every check, in order: the first
// check that denies stops, and the checks after it are not counted (as if
// each were asked in turn). It returns one Decision per check reached; an
// error only when Redis fails. On a single Redis it is one script call; on
// a Cluster, whose checks' keys lie in different slots, AllowAtOnce.
func (l *Limiter) AllowAll(ctx context.Context, checks []Check) ([]Decision, error) {
	for _, c := range checks {
		if c.Limit.Rate <= 0 || c.Limit.Period <= 0 {
			return nil, fmt.Errorf("limiter: check %q: zero limit", c.Policy)
		}
	}
	if _, ok := l.rdb.(*redis.ClusterClient); ok {
		return l.AllowAtOnce(ctx, checks)
	}
	return l.allow(ctx, checks)
}

// AllowAtOnce is AllowAll with every check asked at the same time, each in
// its own call: on a Cluster, where the checks' keys live on different
// nodes, one round trip of wall time. A check it counted that AllowAll
// would not have reached (one after a denial or a failure) is refunded, so
// the outcome is AllowAll's.
func (l *Limiter) AllowAtOnce(ctx context.Context, checks []Check) ([]Decision, error) {
	ds := make([]Decision, len(checks))
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i := 1; i < len(checks); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds[i], errs[i] = l.allowOne(ctx, checks[i])
		}()
	}
	if len(checks) > 0 {
		ds[0], errs[0] = l.allowOne(ctx, checks[0])
	}
	wg.Wait()
	cut := len(checks)
	for i := range checks {
		if errs[i] != nil || !ds[i].Allowed {
			cut = i
			break
		}
	}
	if cut == len(checks) {
		return ds, nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	for j := range checks {
		if j == cut || errs[j] != nil || !ds[j].Allowed || j < cut && !checks[j].Quota {
			continue
		}
		// Best effort: a failed refund costs the caller one event. A
		// quota is refunded wherever it stands, since quotas are spent all
		// together or not at all; a rate only past the cut.
		if checks[j].Quota {
			_ = l.RefundQuota(rctx, checks[j], ds[j].Window)
			ds[j].Window = 0 // given back: a later refund of ds must not give it again
		} else {
			_ = l.Refund(rctx, checks[j])
		}
	}
	if errs[cut] != nil {
		return nil, errs[cut]
	}
	return ds[:cut+1], nil
}

func (l *Limiter) allowOne(ctx context.Context, c Check) (Decision, error) {
	d, err := l.allow(ctx, []Check{c})
	if err != nil {
		return Decision{}, err
	}
	return d[0], nil
}

func (l *Limiter) allow(ctx context.Context, checks []Check) ([]Decision, error) {
	keys, args := l.ScriptArgs(checks)
	v, err := allowScript.Run(ctx, l.rdb, keys, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("limiter: %w", err)
	}
	d, err := Decisions(checks, v)
	return d, err
}

// Refund gives back the event an allowed decision of c counted, for a
// call that counted a check it would not have reached (a Cluster asks its
// checks at once, in different slots). It is GCRA's exact inverse while
// nothing else counted meanwhile, and never more than one event.
func (l *Limiter) Refund(ctx context.Context, c Check) error {
	if err := refundScript.Run(ctx, l.rdb, []string{l.key(c)}, c.Limit.Rate, c.Limit.Period.Seconds()).Err(); err != nil {
		return fmt.Errorf("limiter: refund: %w", err)
	}
	return nil
}

// RefundQuota gives back the session a quota check spent in the window
// ending at window (Decision.Window): nothing when that window is over,
// so a refund never frees a session of a later window.
func (l *Limiter) RefundQuota(ctx context.Context, c Check, window int64) error {
	if err := refundQuotaScript.Run(ctx, l.rdb, []string{l.key(c)}, window).Err(); err != nil {
		return fmt.Errorf("limiter: refund a quota: %w", err)
	}
	return nil
}

// RefundQuotas gives back what the quota decisions among ds, the
// decisions of checks, spent: for a request that delivered nothing.
// Each refund is tried; the first error is returned.
func (l *Limiter) RefundQuotas(ctx context.Context, checks []Check, ds []Decision) error {
	var first error
	for i, d := range ds {
		if i < len(checks) && d.Quota && d.Allowed && d.Window > 0 {
			if err := l.RefundQuota(ctx, checks[i], d.Window); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// LuaRefundQuota defines refund_quota(key, window) for scripts that undo
// a take: the count in key goes down by one if key still counts the
// window ending at window (ms), and the key goes when it reaches 0.
const LuaRefundQuota = `
local function refund_quota(key, window)
  local v = redis.call('GET', key)
  if not v then return 0 end
  local c, w = string.match(v, '^(%d+) (%d+)$')
  if not w or w ~= window or tonumber(window) <= 0 then return 0 end
  c = tonumber(c) - 1
  if c <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%d', c) .. ' ' .. w, 'KEEPTTL')
  end
  return 1
end
`

// refundQuotaScript is refund_quota on KEYS[1], ARGV[1].
var refundQuotaScript = redis.NewScript(LuaRefundQuota + `
return refund_quota(KEYS[1], ARGV[1])
`)

// refundScript moves a key's theoretical arrival time back by one
// emission interval: the event counted last is given back.
//
// KEYS: the check's key. ARGV: rate, period s.
var refundScript = redis.NewScript(`
local t = redis.call('TIME')
local now = (t[1] - 1483228800) + (t[2] / 1000000)
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
tat = tat - tonumber(ARGV[2]) / tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tat, 'EX', math.ceil(tat - now))
end
return 1
`)
