"""The Redis side of the session store: each operation one Lua script, so it runs atomically
and costs one round trip.

Layout under a prefix P (`gatehouse:`):
- `P session:<id>`: a hash: `model`, `version`, `token` (sha256 of the secret, hex), `created`
  (wall clock, s), `used` (Redis clock, ms), `history`, `feeds`, `rev` (bumped by every feed:
  the compare-and-set counter), and once fed `state`, `shape`, `parts`, `dtype`. Its Redis
  expiry is its idle deadline, moved on every use.
- `P sessions`: a sorted set of every session id scored by that deadline (ms): its size is the
  count `max_sessions` bounds, its lowest member the least recently used session.
- `P sessions:model:<name>`: the same per model, for the per-model gauge;
  `P session-models` the set of those names.

Times come from Redis's own clock (`TIME`), so replicas whose clocks differ agree on expiry.
The scripts name keys they derive (the evicted session, the per-model sets) from the prefix,
so the store needs one Redis (or a primary with replicas, Sentinel), not Redis Cluster.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: session, index, its model's index, models set.
# ARGV: id, ttl ms, max sessions, model, version, token hash, created, session prefix,
#       model index prefix.
# Returns {evicted, expired, sessions of this model, deadline ms}.
CREATE = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local evicted = 0
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])[1]
  local victim = ARGV[8] .. oldest
  local model = redis.call('HGET', victim, 'model')
  redis.call('DEL', victim)
  if model then redis.call('ZREM', ARGV[9] .. model, oldest) end
  evicted = evicted + 1
end
redis.call('HSET', KEYS[1], 'model', ARGV[4], 'version', ARGV[5], 'token', ARGV[6],
           'created', ARGV[7], 'used', now, 'history', 0, 'feeds', 0, 'rev', 0)
redis.call('PEXPIREAT', KEYS[1], now + ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return {evicted, expired, redis.call('ZCARD', KEYS[3]), now + ttl}
"""
)

# A lookup that counts as use (as the in-memory store's): the hash, its deadline moved.
# KEYS: session, index. ARGV: ttl ms, id, model index prefix. Returns the hash's fields
# and values, flat, or nil when the session is gone.
FETCH = (
    """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
"""
    + _NOW
    + """
local at = now + tonumber(ARGV[1])
redis.call('PEXPIREAT', KEYS[1], at)
redis.call('HSET', KEYS[1], 'used', now)
redis.call('ZADD', KEYS[2], at, ARGV[2])
redis.call('ZADD', ARGV[3] .. redis.call('HGET', KEYS[1], 'model'), at, ARGV[2])
return h
"""
)

# Keep a feed's new state only if no other feed was kept since this one read the session.
# KEYS: session, index. ARGV: rev read, ttl ms, id, model index prefix, tokens fed, state,
# shape, parts, dtype. Returns 1 (kept), 0 (another feed won: read again and redo) or -1 (the
# session is gone: deleted, evicted or expired meanwhile).
COMMIT = (
    """
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return -1 end
if rev ~= ARGV[1] then return 0 end
"""
    + _NOW
    + """
local at = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'rev', tonumber(rev) + 1, 'used', now, 'state', ARGV[6],
           'shape', ARGV[7], 'parts', ARGV[8], 'dtype', ARGV[9])
redis.call('HINCRBY', KEYS[1], 'history', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'feeds', 1)
redis.call('PEXPIREAT', KEYS[1], at)
redis.call('ZADD', KEYS[2], at, ARGV[3])
redis.call('ZADD', ARGV[4] .. redis.call('HGET', KEYS[1], 'model'), at, ARGV[3])
return 1
"""
)

# KEYS: session, index. ARGV: id, model index prefix.
# Returns {deleted (0 or 1), model or false, sessions of that model left}.
DELETE = (
    _NOW
    + """
local model = redis.call('HGET', KEYS[1], 'model')
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not model then return {deleted, false, 0} end
local k = ARGV[2] .. model
redis.call('ZREM', k, ARGV[1])
redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
return {deleted, model, redis.call('ZCARD', k)}
"""
)

# Drop the index entries of sessions past their deadline (Redis has expired their hashes).
# KEYS: index, models set. ARGV: model index prefix.
# Returns {expired, model1, count1, model2, count2, ...}.
SWEEP = (
    _NOW
    + """
local out = {redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local k = ARGV[1] .. m
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  table.insert(out, m)
  table.insert(out, redis.call('ZCARD', k))
end
return out
"""
)
