#!lua name=cag
--[[
Redis Functions library of the call admission gateway (SPEC section 4).

Why server-side: the per-callee checks (consent, DNC, daily caps) and their
counting must be atomic, or two workers admitting calls to the same callee at
the same moment could both see "2 of 3 used" and both count. One FCALL per
hash slot per INVITE also keeps the hot path to one round trip.

Every function touches keys of ONE hash slot only (callee, caller number,
trunk, enterprise or reference data), so the library runs unchanged on a
single server and on Redis Cluster.

Idempotency: a function that counts stores its result under a per-transaction
key (Call-ID + top Via branch) for TXN_TTL seconds; a repeated or late call
with the same transaction returns the stored result and counts nothing again.

The consent / DNC logic mirrors policy/rules/consent.py (check_consent,
check_dnc) exactly: same order, same reason codes. tests/integration/
test_store_parity.py runs one table of cases through both.
--]]

local LIB_VERSION = 4

local function is_set(v)
  return v ~= false and v ~= nil and v ~= ''
end

local function num(v)
  if is_set(v) then return tonumber(v) end
  return nil
end

-- Consent checks (check_consent); returns the reason code or '' when it passes.
-- c: HGETALL of the consent hash as a table, or nil when absent. The callee
-- is implied by the key (the token index that names another callee lives on
-- another slot: the engine turns consent_unknown into consent_other_callee).
-- purpose: the declared purpose, already normalised (strip + lower) by the
-- engine; c.np is the consent's normalised purpose. allowed: the enterprise's
-- purposes, normalised and space-separated. The effective purpose (declared,
-- else the consent's) is never marketing and must be one of allowed (R1/R6).
local function consent_reason(c, token, enterprise, purpose, allowed, now_ms)
  if not is_set(token) then return 'consent_missing' end
  if c == nil then return 'consent_unknown' end
  if c.ent ~= enterprise then return 'consent_other_enterprise' end
  local consented = c.np or ''
  if is_set(purpose) and purpose ~= consented then return 'purpose_not_allowed' end
  local effective = consented
  if is_set(purpose) then effective = purpose end
  if effective == 'marketing' then return 'purpose_marketing' end
  -- allowed is nil only when a gateway older than this library calls it (rolling
  -- upgrade): it still gets the marketing refusal, not a refusal of every call.
  if allowed ~= nil then
    local ok = false
    for p in string.gmatch(allowed, '%S+') do
      if p == effective then ok = true break end
    end
    if not ok then return 'purpose_not_allowed' end
  end
  local revoked = num(c.rv)
  if revoked ~= nil and revoked <= now_ms then return 'consent_revoked' end
  local granted = num(c.gr)
  if granted ~= nil and now_ms < granted then return 'consent_unknown' end
  local expires = num(c.ex)
  if expires ~= nil and now_ms >= expires then return 'consent_expired' end
  local maxc = num(c.max)
  if maxc ~= nil and (tonumber(c.used) or 0) >= maxc then return 'consent_exhausted' end
  return ''
end

-- DNC check (check_dnc); returns the reason code or ''.
-- A commercial-only registration does not bar a consented callback: the
-- callee asked for that call.
local function dnc_reason(scope, consent_ok, consent_purpose)
  if not is_set(scope) then return '' end
  if scope == 'commercial' and consent_ok and consent_purpose == 'callback' then return '' end
  return 'callee_dnc'
end

local function hash_table(flat)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function store_txn(key, result, counted, ttl)
  redis.call('HSET', key, 'r', cmsgpack.pack(result), 'c', counted)
  redis.call('EXPIRE', key, ttl)
end

-- The stored result of a transaction already decided (a retransmission, or a
-- retry after a budget timeout), flagged as a replay at result[at] and, when
-- it was refunded, at result[at + 1]; nil when this is the first call.
local function replayed(key, at)
  local stored = redis.call('HMGET', key, 'r', 'f')
  if not stored[1] then return nil end
  local res = cmsgpack.unpack(stored[1])
  res[at] = 1
  if stored[2] then res[at + 1] = 1 end
  return res
end

-- A consent from its stored msgpack array (policy/layout.py pack_consent).
local function consent_of(v)
  local a = cmsgpack.unpack(v)
  return {ent = a[1], np = a[2], gr = a[4], ex = a[5], max = a[6], ev = a[7], rv = a[8]}
end

-- The first layer (top first) holding field: its value, or nil. A tombstone
-- ('') hides the layers below it.
local function layered(keys, first, count, field)
  for i = first, first + count - 1 do
    local v = redis.call('HGET', keys[i], field)
    if v then
      if v == '' then return nil end
      return v
    end
  end
  return nil
end

--[[ cag_admit: consent, DNC, quiet hours (flag computed by the caller) and the
per-callee daily caps, counted atomically when everything passes.
KEYS: 1 txn, 2 day counter (callee, enterprise), 3 day counter (callee, all
      enterprises), 4 consent use counts of the bucket, 5 operator
      revocations of the bucket, then ARGV 14 consent layers and ARGV 15 DNC
      layers of the bucket (top first; policy/layout.py)
ARGV: 1 token, 2 enterprise id, 3 declared purpose, 4 now (epoch ms),
      5 quiet hours fail (0/1), 6 callee_daily limit (0 none),
      7 callee_total_daily limit (0 none), 8 day key ttl (s), 9 dry run (0/1),
      10 txn ttl (s), 11 the enterprise's purposes (normalised, space-separated),
      12 consent field (suffix:token), 13 DNC field (suffix),
      14 number of consent layers, 15 number of DNC layers
Returns {consent_reason, dnc_reason, used, evidence_ref, consent_purpose,
         day_count, total_count, counted (0/1), replay (0/1), refunded (0/1)}
Counts are the values BEFORE this call. A replay whose transaction was
refunded says so: the overall decision then was a rejection even if every
slot passed (fail-closed after the budget ran out), and the engine repeats it.
--]]
local function cag_admit(keys, args)
  local dry = args[9] == '1'
  if not dry then
    local res = replayed(keys[1], 9)
    if res then return res end
  end
  local token, enterprise, purpose = args[1], args[2], args[3]
  local now_ms = tonumber(args[4])
  local cfield, dfield = args[12], args[13]
  local nc, nd = tonumber(args[14]) or 0, tonumber(args[15]) or 0
  local c = nil
  if is_set(token) then
    local v = layered(keys, 6, nc, cfield)
    if v then
      c = consent_of(v)
      local rvo = num(redis.call('HGET', keys[5], cfield))
      local rv = num(c.rv)
      if rvo ~= nil and (rv == nil or rvo < rv) then c.rv = rvo end
      c.used = redis.call('HGET', keys[4], cfield)
    end
  end
  local creason = consent_reason(c, token, enterprise, purpose, args[11], now_ms)
  local cpurpose = ''
  local used = 0
  local evidence = ''
  if c ~= nil then
    cpurpose = c.np or ''
    used = tonumber(c.used) or 0
    evidence = c.ev or ''
  end
  local scope = nil
  local dv = layered(keys, 6 + nc, nd, dfield)
  if dv then
    if (tonumber(dv) or 0) % 2 == 1 then scope = 'commercial' else scope = 'all' end
  end
  local dreason = dnc_reason(scope, creason == '', cpurpose)
  local day = tonumber(redis.call('GET', keys[2]) or '0')
  local total = tonumber(redis.call('GET', keys[3]) or '0')
  local lim_day, lim_total = tonumber(args[6]), tonumber(args[7])
  local pass = creason == '' and dreason == '' and args[5] ~= '1'
      and (lim_day == 0 or day < lim_day) and (lim_total == 0 or total < lim_total)
  local counted = 0
  if pass and not dry then
    local ttl = tonumber(args[8])
    redis.call('INCR', keys[2])
    redis.call('EXPIRE', keys[2], ttl)
    redis.call('INCR', keys[3])
    redis.call('EXPIRE', keys[3], ttl)
    if c ~= nil then redis.call('HINCRBY', keys[4], cfield, 1) end
    counted = 1
  end
  local res = {creason, dreason, used, evidence, cpurpose, day, total, counted, 0, 0}
  if not dry then
    store_txn(keys[1], res, counted, tonumber(args[10]))
    if counted == 1 and c ~= nil then redis.call('HSET', keys[1], 'u', cfield) end
  end
  return res
end

--[[ cag_rate: per-second counter and optional concurrency set on one slot
(a caller number or a trunk).
KEYS: 1 txn, 2 per-second counter, 3 concurrency zset (call-id -> expiry ms)
ARGV: 1 per-second limit (0 none), 2 max concurrent (0 none), 3 now (ms),
      4 call-id, 5 concurrency timeout (ms), 6 dry run (0/1), 7 txn ttl (s)
Returns {rate_count, concurrent_count, counted (0/1), replay (0/1), refunded (0/1)}
--]]
local function cag_rate(keys, args)
  local dry = args[6] == '1'
  if not dry then
    local res = replayed(keys[1], 4)
    if res then return res end
  end
  local limit, maxc, now_ms = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local rate = 0
  if limit > 0 then rate = tonumber(redis.call('GET', keys[2]) or '0') end
  local conc = 0
  if maxc > 0 then
    if not dry then redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', now_ms) end
    conc = redis.call('ZCOUNT', keys[3], '(' .. now_ms, '+inf')
  end
  local pass = (limit == 0 or rate < limit) and (maxc == 0 or conc < maxc)
  local counted = 0
  if pass and not dry then
    if limit > 0 then
      redis.call('INCR', keys[2])
      redis.call('EXPIRE', keys[2], 2)
    end
    if maxc > 0 then
      local timeout = tonumber(args[5])
      redis.call('ZADD', keys[3], now_ms + timeout, args[4])
      redis.call('PEXPIRE', keys[3], timeout)
    end
    counted = 1
  end
  local res = {rate, conc, counted, 0, 0}
  if not dry then store_txn(keys[1], res, counted, tonumber(args[7])) end
  return res
end

--[[ cag_refund: undo what a transaction counted when the overall decision was
a rejection (e.g. the callee script counted but trunk_rate rejected).
Marks the transaction so it never refunds twice.
KEYS: cag_rate's keys, or cag_admit's first four (txn, day, total, use counts)
ARGV: 1 'admit' or 'rate', 2 call-id
Returns 1 when something was refunded, else 0.
--]]
local function cag_refund(keys, args)
  local st = redis.call('HMGET', keys[1], 'c', 'f')
  if st[1] ~= '1' or st[2] then return 0 end
  redis.call('HSET', keys[1], 'f', 1)
  local function decr(key)
    local v = tonumber(redis.call('GET', key) or '0')
    if v > 0 then redis.call('DECR', key) end
  end
  if args[1] == 'admit' then
    decr(keys[2])
    decr(keys[3])
    local field = redis.call('HGET', keys[1], 'u')
    if field then
      local used = tonumber(redis.call('HGET', keys[4], field) or '0')
      if used > 0 then redis.call('HINCRBY', keys[4], field, -1) end
    end
  else
    decr(keys[2])
    if keys[3] then redis.call('ZREM', keys[3], args[2]) end
  end
  return 1
end

--[[ cag_release: a call ended (BYE, CANCEL, final error): free its
concurrency slot. KEYS: 1 concurrency zset. ARGV: 1 call-id. --]]
local function cag_release(keys, args)
  return redis.call('ZREM', keys[1], args[1])
end

--[[ cag_unconsented: count one unconsented attempt of an enterprise (R6).
A fixed window that starts at the first attempt; when the count reaches the
threshold the window is reset and 1 is returned (exactly one caller sees the
crossing, so the enterprise is suspended once).
KEYS: 1 counter. ARGV: 1 threshold, 2 window (s).
Returns {count, crossed (0/1)}. --]]
local function cag_unconsented(keys, args)
  local n = redis.call('INCR', keys[1])
  if n == 1 then redis.call('EXPIRE', keys[1], tonumber(args[2])) end
  if n >= tonumber(args[1]) then
    redis.call('DEL', keys[1])
    return {n, 1}
  end
  return {n, 0}
end

--[[ cag_ref_cas: compare-and-set one reference record (a suspension) and bump
the reference version, so a concurrent file load is never overwritten blind.
KEYS: 1 record hash, 2 version counter. ARGV: 1 field, 2 expected value, 3 new value.
Returns the new version, or -1 when the record changed meanwhile. --]]
local function cag_ref_cas(keys, args)
  local cur = redis.call('HGET', keys[1], args[1])
  if cur ~= args[2] then return -1 end
  redis.call('HSET', keys[1], args[1], args[3])
  return redis.call('INCR', keys[2])
end

--[[ cag_token: the callee a token was granted for, from the token index
layers (top first). KEYS: the layers of the token's shard. ARGV: 1 token.
Returns the callee or false. --]]
local function cag_token(keys, args)
  local v = layered(keys, 1, #keys, args[1])
  if v then return v end
  return false
end

--[[ cag_revoke: record an operator revocation, only while the consent exists
in some layer (never for an unknown token). Operator state: a reload of the
consent file does not undo it.
KEYS: 1 revocations of the bucket, then the consent layers.
ARGV: 1 field (suffix:token), 2 revoked at (epoch ms). Returns 1, or 0. --]]
local function cag_revoke(keys, args)
  if not layered(keys, 2, #keys - 1, args[1]) then return 0 end
  redis.call('HSET', keys[1], args[1], args[2])
  return 1
end

--[[ cag_merge: copy the fields of KEYS[1] that KEYS[2] lacks (an upsert layer
taking over the layer it replaces: the file's rows win). Bounded: a bucket
holds the numbers of one 1,000-number block. Returns the number of fields copied. --]]
local function cag_merge(keys, args)
  local flat = redis.call('HGETALL', keys[1])
  local n = 0
  for i = 1, #flat, 2 do
    n = n + redis.call('HSETNX', keys[2], flat[i], flat[i + 1])
  end
  return n
end

--[[ cag_hsetnx: HSETNX of many field/value pairs on one hash, one round trip.
KEYS: 1 hash. ARGV: field, value, ... Returns the number set. --]]
local function cag_hsetnx(keys, args)
  local n = 0
  for i = 1, #args, 2 do
    n = n + redis.call('HSETNX', keys[1], args[i], args[i + 1])
  end
  return n
end

--[[ cag_gen_switch: the commit point of a consent/DNC load. Switches the
kind's layer pointer from what the loader saw when it started to the new
layers and queues the replaced layers for deletion after a grace period.
The reference version is NOT bumped: that would make every worker re-read
all reference data; workers re-read the pointer with every version poll.
KEYS: 1 pointer hash, 2 gc zset, 3 version counter.
ARGV: 1 kind, 2 expected layers, 3 new layers, 4 delete-after (epoch s),
      then the generations to retire.
Returns the reference version, or -1 when another load switched meanwhile. --]]
local function cag_gen_switch(keys, args)
  local cur = redis.call('HGET', keys[1], args[1]) or ''
  if cur ~= args[2] then return -1 end
  redis.call('HSET', keys[1], args[1], args[3])
  for g in string.gmatch(args[3], '%d+') do  -- no longer pending (a dead loader's is deleted later)
    redis.call('ZREM', keys[2], args[1] .. ':' .. g)
  end
  for i = 5, #args do
    redis.call('ZADD', keys[2], tonumber(args[4]), args[1] .. ':' .. args[i])
  end
  return tonumber(redis.call('GET', keys[3]) or '0')
end

--[[ cag_ref_op: operator status of a trunk or enterprise (suspend/resume),
kept apart from the loaded record so a reload does not lift it.
KEYS: 1 record hash, 2 operator hash, 3 version counter.
ARGV: 1 record id, 2 operator field, 3 new operator value ('' removes it).
Returns the new version, or -1 when the record does not exist. --]]
local function cag_ref_op(keys, args)
  if redis.call('HEXISTS', keys[1], args[1]) == 0 then return -1 end
  if args[3] == '' then
    redis.call('HDEL', keys[2], args[2])
  else
    redis.call('HSET', keys[2], args[2], args[3])
  end
  return redis.call('INCR', keys[3])
end

local function cag_version()
  return LIB_VERSION
end

redis.register_function('cag_admit', cag_admit)
redis.register_function('cag_rate', cag_rate)
redis.register_function('cag_refund', cag_refund)
redis.register_function('cag_release', cag_release)
redis.register_function('cag_unconsented', cag_unconsented)
redis.register_function('cag_ref_cas', cag_ref_cas)
redis.register_function{function_name = 'cag_token', callback = cag_token, flags = {'no-writes'}}
redis.register_function('cag_revoke', cag_revoke)
redis.register_function('cag_merge', cag_merge)
redis.register_function('cag_hsetnx', cag_hsetnx)
redis.register_function('cag_gen_switch', cag_gen_switch)
redis.register_function('cag_ref_op', cag_ref_op)
redis.register_function{function_name = 'cag_version', callback = cag_version, flags = {'no-writes'}}
