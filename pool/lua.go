package pool

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/limiter"
)

// The Redis model of one profile p (every key shares the hash tag {p}, so
// each script touches one Cluster slot):
//
//	<prefix>:{p}:ready    ZSET  entry id -> retire time (ms): when it stops being handed out
//	<prefix>:{p}:e        HASH  entry id -> entry body
//	<prefix>:{p}:minting  ZSET  reservation id -> lease deadline (ms)
//	<prefix>:{p}:handed   ZSET  entry id -> retire time (ms): the handout ledger
//	<prefix>:{p}:stats    HASH  counters; the demand rates d_fast, d_slow (per second) at d_at (ms); target
//	<prefix>:{p}:prewarm  HASH  ready, until (ms): a raised floor, expiring at until
//	<prefix>:{p}:claim:<request id>  STRING "<entry id> <retire ms> <body>", or "-" once
//	                                  abandoned; short TTL
//
// Times come from Redis TIME so replicas with skewed clocks agree; a
// script given a non-zero "now" uses it instead (the sizing simulation runs
// on a virtual clock). A retire
// time is the provider's expiry minus a per-entry jitter; an entry is usable
// while retire > now + min remaining (the caller adds its clock-skew margin).

// luaPrelude is shared by the scripts below.
const luaPrelude = limiter.LuaRefundQuota + `
local function fmt(ms)
  return string.format('%d', ms)
end

-- A take's undo record, beside its claim (<claim key>:u, same TTL): the
-- quota sessions it spent, as q = {key, window end, ...}, which undoing
-- the take refunds, and x, the id of its issuance record in the shard's
-- stream, which undoing it deletes: nobody received that credential.
-- (The quota keys are in the take's script only on a single Redis.)

-- undo gives back what the take whose undo record is ukey spent, once.
local function undo(ukey, stream)
  local v = redis.call('GET', ukey)
  if not v then return end
  local u = cjson.decode(v)
  if u.q then
    for i = 1, #u.q, 2 do refund_quota(u.q[i], u.q[i + 1]) end
  end
  if u.x then redis.call('XDEL', stream, u.x) end
  redis.call('DEL', ukey)
end

-- unrecord deletes the issuance record of the take whose undo record is
-- ukey (its entry could not be opened: nobody received it) and keeps the
-- rest of the undo record.
local function unrecord(ukey, stream)
  local v = redis.call('GET', ukey)
  if not v then return end
  local u = cjson.decode(v)
  if not u.x then return end
  redis.call('XDEL', stream, u.x)
  u.x = nil
  redis.call('SET', ukey, cjson.encode(u), 'KEEPTTL')
end

-- void deletes the record a minted handout's marker names, once: its
-- credential goes back to the pool (or is dropped), not to its caller. The
-- marker keeps "-" until at (ms), so a record call that reaches Redis only
-- now writes nothing.
local function void(stream, marker, at)
  local x = redis.call('GET', marker)
  if x and x ~= '-' then redis.call('XDEL', stream, x) end
  redis.call('SET', marker, '-', 'PXAT', at)
end

-- issued appends the issuance record of entry id to stream: the fields
-- ARGV[from .. to] hold after the bound and the retention, then the id.
-- The stream keeps at most about ARGV[from] records and none older than
-- ARGV[from + 1] ms by Redis's clock t (the bound is approximate, the age
-- exact). It returns the record's id.
local function issued(stream, from, to, id, t)
  local fields = {}
  for i = from + 2, to do table.insert(fields, ARGV[i]) end
  table.insert(fields, 'entry')
  table.insert(fields, id)
  local xid = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[from], '*', unpack(fields))
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', stream, 'MINID', fmt(now - tonumber(ARGV[from + 1]))) -- exact: no record outlives the retention
  redis.call('PEXPIRE', stream, ARGV[from + 1]) -- nor one of a stream no record is added to any more
  return xid
end

local function clock(override)
  local o = tonumber(override)
  if o and o > 0 then return o end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- rates returns the demand rates decayed to now.
local function rates(stats, now, tau_fast, tau_slow)
  local v = redis.call('HMGET', stats, 'd_fast', 'd_slow', 'd_at')
  local dt = math.max(0, now - (tonumber(v[3]) or now))
  return (tonumber(v[1]) or 0) * math.exp(-dt / tau_fast), (tonumber(v[2]) or 0) * math.exp(-dt / tau_slow)
end

-- demand counts one request in the demand rates: r = r * e^(-dt/tau) + 1/tau.
local function demand(stats, now, tau_fast, tau_slow)
  local fast, slow = rates(stats, now, tau_fast, tau_slow)
  redis.call('HSET', stats, 'd_fast', tostring(fast + 1000 / tau_fast),
    'd_slow', tostring(slow + 1000 / tau_slow), 'd_at', fmt(now))
end

-- claim splits a claim key's value "<id> <retire ms> <body>".
local function claim(v)
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  return string.sub(v, 1, a - 1), tonumber(string.sub(v, a + 1, b - 1)), string.sub(v, b + 1)
end

-- unclaim puts a claimed entry back: out of the ledger and the handed-out
-- count, into the pool, or counted as waste when it retires by cutoff.
-- It returns 1 pooled, 2 wasted.
local function unclaim(claimed, ready, entries, stats, handed, cutoff)
  local id, retire, body = claim(claimed)
  redis.call('ZREM', handed, id)
  redis.call('HINCRBY', stats, 'handed_out', -1)
  if retire <= cutoff then
    redis.call('HINCRBY', stats, 'wasted', 1)
    return 2
  end
  redis.call('ZADD', ready, fmt(retire), id)
  redis.call('HSET', entries, id, body)
  return 1
end

-- ledgerKept keeps the ledger's TTL past its latest retire time and
-- bounds its size, once an id retiring at retire was added to it. The TTL
-- is set a minute past retire, so that the takes of the next minute of
-- retire times leave it alone. The size is checked by about one take in
-- k, k = bound / 1024 from 1 to 64 (those whose Redis clock's
-- microseconds, us, are a multiple of k): a large ledger may pass its
-- bound by about k ids before it is trimmed back, a small one never.
local function ledgerKept(handed, stats, retire, now, bound, us)
  if redis.call('PTTL', handed) < retire - now then
    redis.call('PEXPIREAT', handed, fmt(retire + 60000))
  end
  if us % math.min(math.max(math.floor(bound / 1024), 1), 64) ~= 0 then return end
  local over = redis.call('ZCARD', handed) - bound
  if over > 0 then
    redis.call('ZREMRANGEBYRANK', handed, 0, over - 1)
    redis.call('HINCRBY', stats, 'ledger_trimmed', over)
  end
end

-- evict drops at most 256 entries that retire at or before cutoff and
-- counts them as waste.
local function evict(ready, entries, stats, cutoff)
  local ids = redis.call('ZRANGEBYSCORE', ready, '-inf', fmt(cutoff), 'LIMIT', 0, 256)
  if #ids == 0 then return 0 end
  redis.call('ZREM', ready, unpack(ids))
  redis.call('HDEL', entries, unpack(ids))
  redis.call('HINCRBY', stats, 'wasted', #ids)
  return #ids
end
`

// takeScript applies the caller's limits and, when they allow, hands out
// the usable entry that retires soonest, exactly once, and counts the
// request in the profile's demand: one round trip for a pooled handout.
// Its KEYS and ARGV are takeCall's fields, in the order takeCall.keysArgs
// builds them; its reply is takeReply's, parsed by parseTakeReply.
//
// The claim key holds "<entry id> <retire ms> <body>", or a marker when
// limits were applied: "!<i>" (limit i denied) or "0" (they allowed, and
// nothing was usable). A retried call (same claim key) counts no limit
// again and reports them as they stand, and gets the entry of the first
// call back instead of a second one, if it is still fresh enough; if not,
// nobody received it, so it counts as waste and a fresh entry is taken. An
// id already in the ledger is never handed out again; it is dropped and
// counted as a prevented duplicate. An entry whose body starts with none
// of the given prefixes (sealed with a key this replica lacks) is left in
// place.
var takeScript = redis.NewScript(takeSource)

// takeCall is one call of takeScript, by name.
type takeCall struct {
	record       []any  // the issuance record's bound, retention ms and fields (issuance.args); nil: none
	tag          string // the shard's hash tag
	k            keys   // its keys
	claim        string // KEYS[4] is its claim key
	minRemaining time.Duration
	claimTTL     *sendMark // the claim key's TTL in ms; counts the command's sends
	now          int64     // the scripts' clock in ms; 0: Redis TIME
	ledger       int       // the handout ledger's bound
	counts       int       // what to count besides a handout: countDemand | countMiss | countUnreplicated
	deadline     int64     // by Redis's clock, ms: the latest a take with no claim yet may run (later, nobody waits for it); 0: none
	epoch        string    // the dataset the take is sent to, as last seen ("": any); a take with no claim in another takes nothing
	limitKeys    []string  // the caller's limits, from limiter.ScriptArgs: one key and
	limitArgs    []any     // one (burst, rate, period s) triple per check
	opens        []any     // the body prefixes this replica can open (none: any)
}

// keysArgs are the call's KEYS (ready, entries, stats, claim, handed,
// issued, the claim's undo record, then the limits' keys) and ARGV (min remaining ms, claim TTL
// ms, now ms, the demand taus (fast, slow) ms, ledger bound, the number
// of limits n, what to count, the deadline ms, the epoch, the number m of
// the record's arguments, the m arguments, the n triples, then the
// prefixes).
func (c *takeCall) keysArgs() ([]string, []any) {
	keys := append([]string{c.k.ready(), c.k.entries(), c.k.stats(), c.k.claim(c.claim), c.k.handed(), c.k.issued(), c.k.undo(c.claim)}, c.limitKeys...)
	args := make([]any, 0, 11+len(c.record)+len(c.limitArgs)+len(c.opens))
	args = append(args, c.minRemaining.Milliseconds(), c.claimTTL, c.now, demandTauFast.Milliseconds(),
		demandTauSlow.Milliseconds(), c.ledger, len(c.limitKeys), c.counts, c.deadline, c.epoch, len(c.record))
	args = append(args, c.record...)
	args = append(args, c.limitArgs...)
	return keys, append(args, c.opens...)
}

// takeReply is takeScript's reply: {status, id, body, evicted, foreign,
// limits, now}.
type takeReply struct {
	status   takeStatus
	id, body string // the entry handed out (takeHanded, takeAgain)
	evicted  int64  // entries dropped as waste on the way
	foreign  int64  // usable entries left for a replica that can open them
	limits   []any  // limiter.LuaGCRA's decisions of the checks reached
	now      int64  // the script's clock, ms
}

// takeStatus is what a take did.
type takeStatus int64

const (
	takeNothing   takeStatus = 0 // nothing usable
	takeHanded    takeStatus = 1 // an entry, handed out now
	takeAgain     takeStatus = 2 // the entry an earlier call with this claim took
	takeAbandoned takeStatus = 3 // the claim was recovered: nothing
	takeDenied    takeStatus = 4 // a limit denied: nothing taken
	takeTooLate   takeStatus = 5 // no claim, and past the deadline or in another dataset: nothing taken (an earlier attempt's claim may be gone)
)

func parseTakeReply(v any) (takeReply, error) {
	reply, ok := v.([]any)
	if !ok || len(reply) != 7 {
		return takeReply{}, fmt.Errorf("pool: take: unexpected reply %T", v)
	}
	status, ok0 := reply[0].(int64)
	id, ok1 := reply[1].(string)
	body, ok2 := reply[2].(string)
	evicted, ok3 := reply[3].(int64)
	foreign, ok4 := reply[4].(int64)
	lim, ok5 := reply[5].([]any)
	now, ok6 := reply[6].(int64)
	if !ok0 || !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
		return takeReply{}, fmt.Errorf("pool: take: unexpected reply types %T %T %T %T %T %T %T", reply[0], reply[1], reply[2], reply[3], reply[4], reply[5], reply[6])
	}
	return takeReply{status: takeStatus(status), id: id, body: body, evicted: evicted, foreign: foreign, limits: lim, now: now}, nil
}

// takeSource is takeScript's source, which a take sends with EVAL when
// Redis lacks the script. (A var, as recoverSource is, only so that the
// chaos run's injected bugs, built with -tags chaosbug, can patch it.)
var takeSource = luaPrelude + limiter.LuaGCRA + `
-- KEYS and ARGV by name, in takeCall.keysArgs's order; the caller's
-- limits' keys follow KEYS[7]; the issuance record's m arguments follow
-- ARGV[11], the limits' triples them, the prefixes the triples.
local ready, entries, stats, claim_key, handed, issued_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local undo_key = KEYS[7]
local min_remaining, claim_ttl, now_arg = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local tau_fast, tau_slow, ledger_max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n, counts, deadline, epoch = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local m = tonumber(ARGV[11])
local limit_keys_after, limit_args_after = 7, 11 + m
local opens_from = limit_args_after + 1 + 3 * n
-- Reply statuses (takeStatus)
local NOTHING, HANDED, AGAIN, ABANDONED, DENIED, TOO_LATE = 0, 1, 2, 3, 4, 5

local t = redis.call('TIME')
local now = now_arg
if not now or now <= 0 then now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end
local cutoff = now + min_remaining
local claimed = redis.call('GET', claim_key)
if claimed and string.sub(claimed, 1, 1) == '-' then return {ABANDONED, '', '', 0, 0, {}, now} end
-- The counters this take moves, and the demand, are read once (with the
-- dataset's epoch) and written once, at the end.
local st = redis.call('HMGET', stats, 'd_fast', 'd_slow', 'd_at', 'handed_out', 'misses', 'unreplicated', 'epoch')
if not claimed and (deadline > 0 and now > deadline or epoch ~= '' and st[7] ~= epoch) then
  -- Sent too long ago (Redis stalled, or the network held it), or to a
  -- dataset since wiped: nobody waits for it, and an earlier attempt's
  -- claim may be gone.
  return {TOO_LATE, '', '', 0, 0, {}, now}
end
local ok, lim = limits(limit_keys_after, limit_args_after, n, claimed ~= false, t)
if claimed and string.sub(claimed, 1, 1) == '!' then
  -- denied before: report that limit as denied, and nothing after it
  local i = tonumber(string.sub(claimed, 2))
  for j = #lim, 4 * i + 1, -1 do lim[j] = nil end
  lim[4 * i - 3] = 0
  return {DENIED, '', '', 0, 0, lim, now}
end
if not ok then
  redis.call('SET', claim_key, '!' .. fmt(#lim / 4), 'PX', claim_ttl)
  return {DENIED, '', '', 0, 0, lim, now}
end
-- What undoing this take gives back: the quota sessions its first call
-- spent (a quota's decision reports its window's end).
local spent = {}
if not claimed then
  for i = 1, n do
    if tonumber(ARGV[limit_args_after + 3 * i - 2]) == 0 and lim[4 * i - 3] == 1 then
      table.insert(spent, KEYS[limit_keys_after + i])
      table.insert(spent, lim[4 * i - 1])
    end
  end
end
-- keep_undo writes the undo record: what this call spent (a first call's
-- quotas) and its record xid. A retry keeps what the first call spent and
-- deletes the record of the first call's entry, which nobody received (it
-- went stale; a retry that finds it fresh hands it out again instead).
local function keep_undo(xid)
  local u = {}
  if claimed then
    local v = redis.call('GET', undo_key)
    if v then u = cjson.decode(v) end
    if u.x then
      redis.call('XDEL', issued_key, u.x)
      u.x = nil
    end
  end
  if #spent > 0 then u.q = spent end
  if xid then u.x = xid end
  if next(u) == nil then return end
  redis.call('SET', undo_key, cjson.encode(u), 'PX', claim_ttl)
end
if claimed and claimed ~= '0' then
  local id, retire, body = claim(claimed)
  if retire > cutoff then return {AGAIN, id, body, 0, 0, lim, now} end
  st[4] = redis.call('HINCRBY', stats, 'handed_out', -1) -- st is written back at the end
  redis.call('HINCRBY', stats, 'wasted', 1)
end
local function opens(body)
  if #ARGV < opens_from then return true end
  for i = opens_from, #ARGV do
    if string.sub(body, 1, #ARGV[i]) == ARGV[i] then return true end
  end
  return false
end
-- Pop the entry that retires soonest; entries too close to retiring are
-- waste. Most takes pop once.
local evicted, foreign, examined = 0, 0, 0
local left = {} -- entries popped for a replica that can open them: put back
local hit, hit_retire, hit_body
while examined < 16 do
  local e = redis.call('ZPOPMIN', ready)
  if #e == 0 then break end
  local id, retire = e[1], tonumber(e[2])
  if retire <= cutoff then
    redis.call('HDEL', entries, id)
    redis.call('HINCRBY', stats, 'wasted', 1)
    evicted = evicted + 1 + evict(ready, entries, stats, cutoff)
    if evicted > 512 then break end -- the refill sweeps evict the rest
  else
    examined = examined + 1
    local body = redis.call('HGET', entries, id)
    if not body then
      redis.call('HINCRBY', stats, 'orphaned', 1)
    elseif not opens(body) then
      foreign = foreign + 1
      table.insert(left, retire)
      table.insert(left, id)
    else
      redis.call('HDEL', entries, id)
      if redis.call('ZADD', handed, 'NX', fmt(retire), id) == 0 then
        redis.call('HINCRBY', stats, 'duplicates_prevented', 1)
      else
        hit, hit_retire, hit_body = id, retire, body
        break
      end
    end
  end
end
if #left > 0 then redis.call('ZADD', ready, unpack(left)) end
local fields = {}
if counts % 2 == 1 and not claimed then
  local dt = math.max(0, now - (tonumber(st[3]) or now))
  table.insert(fields, 'd_fast')
  table.insert(fields, tostring((tonumber(st[1]) or 0) * math.exp(-dt / tau_fast) + 1000 / tau_fast))
  table.insert(fields, 'd_slow')
  table.insert(fields, tostring((tonumber(st[2]) or 0) * math.exp(-dt / tau_slow) + 1000 / tau_slow))
  table.insert(fields, 'd_at')
  table.insert(fields, fmt(now))
end
if hit then
  ledgerKept(handed, stats, hit_retire, now, ledger_max, tonumber(t[2]))
  table.insert(fields, 'handed_out')
  table.insert(fields, fmt((tonumber(st[4]) or 0) + 1))
  if math.floor(counts / 4) % 2 == 1 then
    table.insert(fields, 'unreplicated')
    table.insert(fields, fmt((tonumber(st[6]) or 0) + 1))
  end
  redis.call('HSET', stats, unpack(fields))
  redis.call('SET', claim_key, hit .. ' ' .. fmt(hit_retire) .. ' ' .. hit_body, 'PX', claim_ttl)
  local xid = nil
  if m > 0 then xid = issued(issued_key, 12, 11 + m, hit, t) end
  keep_undo(xid)
  return {HANDED, hit, hit_body, evicted, foreign, lim, now}
end
if n > 0 then redis.call('SET', claim_key, '0', 'PX', claim_ttl) end
keep_undo() -- the sessions are held for the request's direct mint
if math.floor(counts / 2) % 2 == 1 then
  table.insert(fields, 'misses')
  table.insert(fields, fmt((tonumber(st[5]) or 0) + 1))
end
if #fields > 0 then redis.call('HSET', stats, unpack(fields)) end
return {NOTHING, '', '', evicted, foreign, lim, now}
`

// recoverScript undoes a take whose entry never reached its caller (the
// reply missed the deadline, the connection broke, the caller left). It
// leaves a tombstone in the claim key, "-" and its reply, so a take with
// that claim that reaches Redis only now hands out nothing, and a
// recovery sent again (its first reply lost) learns what the first did.
//
// KEYS: ready, entries, stats, claim, handed, the claim's undo record, the
// shard's issued stream
// ARGV: min remaining ms, the tombstone's TTL ms, now ms (0: TIME), the
// epoch the take was sent to ("": any), the take's deadline by Redis's
// clock ms (0: unknown)
// Reply: 0 nothing had been taken, 1 the entry is pooled again, 2 it was
// no longer usable and counts as waste, 3 no claim, and the take's
// dataset is gone (wiped), 4 no claim, past the take's deadline (its claim
// may have expired): for 3 and 4 nobody can tell whether it ran.
var recoverScript = redis.NewScript(recoverSource)

var recoverSource = luaPrelude + `
local claimed = redis.call('GET', KEYS[4])
if claimed and string.sub(claimed, 1, 1) == '-' then
  return tonumber(string.sub(claimed, 2)) or 0 -- recovered before: what that found
end
local r = 0
if not claimed and ARGV[4] ~= '' and redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[4] then
  r = 3
elseif not claimed and tonumber(ARGV[5]) > 0 and clock(ARGV[3]) > tonumber(ARGV[5]) then
  r = 4 -- nothing, found after the take's claim may have expired
elseif claimed and claimed ~= '0' and string.sub(claimed, 1, 1) ~= '!' then
  r = unclaim(claimed, KEYS[1], KEYS[2], KEYS[3], KEYS[5], clock(ARGV[3]) + tonumber(ARGV[1]))
  if r == 1 then redis.call('HINCRBY', KEYS[3], 'returned', 1) end
end
if claimed then undo(KEYS[6], KEYS[7]) end
redis.call('SET', KEYS[4], '-' .. r, 'PX', ARGV[2])
return r
`

// untakeScript undoes a take that ran at the same time as the caller's
// limits (on a Cluster) when a limit denied it: the entry, if one was
// taken, is pooled again, a miss it counted is uncounted, and the
// request's demand is taken out of the rates, so a denied request leaves
// the pool as it was. The claim is left as a tombstone.
//
// KEYS: ready, entries, stats, claim, handed, the claim's undo record, the
// shard's issued stream
// ARGV: min remaining ms, claim TTL ms, now ms (0: TIME), demand taus
// (fast, slow) ms, the take's now ms, 1 if the take counted a miss
// Reply: as recoverScript's.
var untakeScript = redis.NewScript(luaPrelude + `
local claimed = redis.call('GET', KEYS[4])
if claimed and string.sub(claimed, 1, 1) == '-' then return 0 end -- recovered: nothing to undo
redis.call('SET', KEYS[4], '-', 'PX', ARGV[2])
local v = redis.call('HMGET', KEYS[3], 'd_fast', 'd_slow', 'd_at')
local at = tonumber(v[3])
if at then
  local since = at - tonumber(ARGV[6])
  local fast = (tonumber(v[1]) or 0) - 1000 / tonumber(ARGV[4]) * math.exp(-since / tonumber(ARGV[4]))
  local slow = (tonumber(v[2]) or 0) - 1000 / tonumber(ARGV[5]) * math.exp(-since / tonumber(ARGV[5]))
  redis.call('HSET', KEYS[3], 'd_fast', tostring(math.max(fast, 0)), 'd_slow', tostring(math.max(slow, 0)))
end
if not claimed then
  if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[3], 'misses', -1) end
  return 0
end
undo(KEYS[6], KEYS[7])
return unclaim(claimed, KEYS[1], KEYS[2], KEYS[3], KEYS[5], clock(ARGV[3]) + tonumber(ARGV[1]))
`)

// discardScript counts an entry that was taken but could not be opened
// (tampered with, or not an entry): discarded, not handed out. Its id stays
// in the ledger, so it is never pooled again; its issuance record goes.
//
// KEYS: stats, the take's undo record, the shard's issued stream
var discardScript = redis.NewScript(luaPrelude + `
unrecord(KEYS[2], KEYS[3])
redis.call('HINCRBY', KEYS[1], 'handed_out', -1)
return redis.call('HINCRBY', KEYS[1], 'discarded', 1)
`)

// reserveScript leases mint reservations so that, across every replica,
// usable entries + in-flight mints never exceed the target. It also sweeps:
// lapsed leases (a crashed replica's), unusable entries (waste) and ledger
// entries past their retire time. An active prewarm raises the target.
//
// KEYS: ready, entries, minting, stats, handed, prewarm
// ARGV: target, want, lease ms, min remaining ms, lead ms, now ms (0: TIME),
// demand taus (fast, slow) ms, reservation id prefix, first id number (the
// granted ids are the prefix followed by first, first+1, …), a fresh
// epoch, the epoch the caller last saw ("" none) and the entries it saw
// pooled then
// Reply: {granted, usable, in flight before granting, ready total, target,
// evicted, lapsed, fast demand, slow demand (per second, as strings),
// epoch, dropped}: dropped is -1, or, when the caller's epoch was gone and
// this call wrote the new one, the entries it last saw (counted as
// dropped, and the wipe in wipes).
//
// "usable" counts only entries still usable lead ms from now, the time a
// refill takes, so replacements are minted before old entries go stale.
var reserveScript = redis.NewScript(luaPrelude + `
local epoch, dropped = redis.call('HGET', KEYS[4], 'epoch'), -1
if not epoch then
  epoch = ARGV[11]
  redis.call('HSET', KEYS[4], 'epoch', epoch)
  if ARGV[12] ~= '' then
    dropped = tonumber(ARGV[13])
    redis.call('HINCRBY', KEYS[4], 'wipes', 1)
    redis.call('HINCRBY', KEYS[4], 'dropped', dropped)
  end
end
local now = clock(ARGV[6])
local lapsed = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now))
if lapsed > 0 then redis.call('HINCRBY', KEYS[4], 'lapsed', lapsed) end
local cutoff = now + tonumber(ARGV[4])
local evicted = evict(KEYS[1], KEYS[2], KEYS[4], cutoff)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now))
local target = tonumber(ARGV[1])
local pw = redis.call('HMGET', KEYS[6], 'ready', 'until')
if tonumber(pw[2]) and tonumber(pw[2]) > now then
  target = math.max(target, tonumber(pw[1]) or 0)
end
redis.call('HSET', KEYS[4], 'target', target)
local usable = redis.call('ZCOUNT', KEYS[1], '(' .. fmt(cutoff + tonumber(ARGV[5])), '+inf')
local inflight = redis.call('ZCARD', KEYS[3])
local grant = math.min(tonumber(ARGV[2]), target - usable - inflight)
if grant < 0 then grant = 0 end
local lease = fmt(now + tonumber(ARGV[3]))
for i = 0, grant - 1 do
  redis.call('ZADD', KEYS[3], lease, ARGV[9] .. fmt(tonumber(ARGV[10]) + i))
end
local fast, slow = rates(KEYS[4], now, tonumber(ARGV[7]), tonumber(ARGV[8]))
return {grant, usable, inflight, redis.call('ZCARD', KEYS[1]), target, evicted, lapsed, tostring(fast), tostring(slow), epoch, dropped}
`)

// putScript adds a minted entry and ends its reservation. It is safe to
// retry: an entry already pooled or already handed out is not added again.
// An entry whose reservation is gone (its lease lapsed, so another mint
// may have taken its place) is pooled only if the pool has room for it:
// usable + in flight stays within the target. (With no target recorded,
// as after a Redis restart without persistence, it is pooled.)
//
// A resend (an earlier send may have run) names the epoch of the dataset
// that send went to. When that dataset is gone (wiped since) and this one
// has never seen the entry, the earlier send may have pooled it there and
// another replica handed it out: it is refused and counted
// (stale_replays). A first send goes to whatever dataset is there.
//
// A credential minted for a request that goes back (its caller gone, or
// its record not confirmed) voids that request's issuance record in the
// same call, whatever the put does with it.
//
// KEYS: ready, entries, minting, stats, handed, issued, the request's
// record marker
// ARGV: reservation id, entry id, retire ms, body, min remaining ms, now ms
// (0: TIME), epoch, 1 if an earlier send may have run (else 0), 1 to void
// the record (else 0), when the marker expires (ms)
// Reply: 1 pooled, 0 wasted (already unusable, or no room) or already
// handed out, 2 refused: its dataset is gone.
var putScript = redis.NewScript(putSource)

// putSource is putScript's source: put sends it with EVAL when Redis
// lacks the script.
var putSource = luaPrelude + `
if ARGV[9] == '1' then void(KEYS[6], KEYS[7], ARGV[10]) end
if ARGV[8] == '1' and redis.call('HGET', KEYS[4], 'epoch') ~= ARGV[7]
    and not redis.call('ZSCORE', KEYS[5], ARGV[2]) and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  redis.call('HINCRBY', KEYS[4], 'stale_replays', 1)
  return 2
end
if redis.call('ZSCORE', KEYS[5], ARGV[2]) then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 1 end
local held = redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'minted', 1)
local cutoff = clock(ARGV[6]) + tonumber(ARGV[5])
if tonumber(ARGV[3]) <= cutoff then
  redis.call('HINCRBY', KEYS[4], 'wasted', 1)
  return 0
end
local target = tonumber(redis.call('HGET', KEYS[4], 'target'))
if held == 0 and target then
  local usable = redis.call('ZCOUNT', KEYS[1], '(' .. fmt(cutoff), '+inf')
  if usable + redis.call('ZCARD', KEYS[3]) >= target then
    redis.call('HINCRBY', KEYS[4], 'wasted', 1)
    redis.call('HINCRBY', KEYS[4], 'surplus', 1)
    return 0
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
`

// releaseScript ends reservations whose mints failed or were abandoned,
// and counts those it ended (a lapsed one was counted when it lapsed).
//
// KEYS: minting, stats
// ARGV: counter to increment, reservation ids...
var releaseScript = redis.NewScript(`
local n = redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
if n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], n) end
return n
`)
