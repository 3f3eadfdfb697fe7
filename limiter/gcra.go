package limiter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
const LuaGCRA = `
local function limits(kb, ab, n, peek, t)
  local out, ok = {}, true
  if n == 0 then return ok, out end
  -- redis_rate's clock: seconds since 2017-01-01, with microseconds.
  t = t or redis.call('TIME')
  local now = (t[1] - 1483228800) + (t[2] / 1000000)
  for i = 1, n do
    local key = KEYS[kb + i]
    local burst, rate, period = tonumber(ARGV[ab + 3*i - 2]), tonumber(ARGV[ab + 3*i - 1]), tonumber(ARGV[ab + 3*i])
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

// key is the Redis key of a limited key: redis_rate's own, so replicas
// that check a limit with redis_rate and with LuaGCRA share it.
func (l *Limiter) key(k string) string { return "rate:" + l.prefix + k }

// ScriptArgs returns the KEYS and ARGV that LuaGCRA's limits() reads for
// checks, in order.
func (l *Limiter) ScriptArgs(checks []Check) (keys []string, args []any) {
	keys = make([]string, len(checks))
	args = make([]any, 0, 3*len(checks))
	for i, c := range checks {
		keys[i] = l.key(c.Key)
		args = append(args, c.Limit.Burst, c.Limit.Rate, c.Limit.Period.Seconds())
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
		retry, err1 := seconds64(r[2])
		reset, err2 := seconds64(r[3])
		if !okOK || !remOK || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("limiter: unexpected reply for check %d: %v", i+1, r)
		}
		out[i] = Decision{
			Policy: checks[i].Policy, Allowed: ok == 1, Limit: checks[i].Limit, Remaining: int(rem),
			RetryAfter: max(retry, 0), ResetAfter: max(reset, 0),
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
	for j := cut + 1; j < len(checks); j++ {
		if errs[j] == nil && ds[j].Allowed {
			// Best effort: a failed refund costs the caller one event.
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
	if err := refundScript.Run(ctx, l.rdb, []string{l.key(c.Key)}, c.Limit.Rate, c.Limit.Period.Seconds()).Err(); err != nil {
		return fmt.Errorf("limiter: refund: %w", err)
	}
	return nil
}

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
