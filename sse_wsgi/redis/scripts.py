"""The Lua scripts: add an event to one channel, and read one channel, each in one atomic step."""

from __future__ import annotations

__all__ = ["HOLD", "PUBLISH", "READ"]

# KEYS: meta, stream, ids, held, done (one channel's, one hash slot; done: this publish's idempotency key).
# ARGV: 1 history (entries kept), 2 ttl (ms), 3 an epoch for a channel that has none, 4 the event's tag,
#       5 the payload, 6 the caller's own id ("" for none), 7 PUBLISH or SPUBLISH, 8 the live channel,
#       9 the channel's name, 10 "1" to return the sets of channels held by GRIP proxies on it,
#       11 how long the idempotency key is kept (ms), 12 how long the metadata outlives the history (ms),
#       13 the most held sets returned.
# Returns {epoch, n, tag, the id of the channel's event before ("0": none), its token ("0": none), "1" when
# this publish was done before (same idempotency key: nothing is written again, the first answer is given),
# held sets...}.
# A channel without metadata (new, or lost by Redis) starts a new epoch and drops any history left from the
# old one, so that numbers start again at 1 without a clash. The metadata outlives the history (ARGV[12]),
# so that a client whose last event was the channel's last is not told of a loss once the history expired.
PUBLISH = """
local done = redis.call('GET', KEYS[5])
local answer
if done then
  answer = cjson.decode(done)
  table.insert(answer, '1')
else
  local epoch = redis.call('HGET', KEYS[1], 'e')
  local before = {'0', '0'}
  if not epoch then
    epoch = ARGV[3]
    redis.call('DEL', KEYS[2], KEYS[3])
    redis.call('HSET', KEYS[1], 'e', epoch, 'c', ARGV[9])
  else
    local last = redis.call('HMGET', KEYS[1], 'l', 'p')
    before = {last[1] or '0', last[2] or '0'}
  end
  local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
  local token = epoch .. '-' .. n .. '-' .. ARGV[4]
  local id = token
  if ARGV[6] ~= '' then id = ARGV[6] end
  redis.call('HSET', KEYS[1], 'l', id, 'p', token)
  local now = redis.call('TIME')
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], n .. '-' .. ARGV[4],
    'p', ARGV[5], 't', now[1] .. string.format('%06d', tonumber(now[2])))
  if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[3], n, ARGV[6])
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', n - tonumber(ARGV[1]))
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
  end
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[12]))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call(ARGV[7], ARGV[8], token .. ' ' .. ARGV[5])
  answer = {epoch, tostring(n), ARGV[4], before[1], before[2]}
  redis.call('SET', KEYS[5], cjson.encode(answer), 'PX', ARGV[11])
  table.insert(answer, '0')
end
if ARGV[10] == '1' then
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ms)
  for _, held in ipairs(redis.call('ZRANGE', KEYS[4], 0, tonumber(ARGV[13]) - 1)) do
    table.insert(answer, held)
  end
end
return answer
"""

# KEYS: held (one channel's). ARGV: 1 the set (JSON), 2 how long it stays (ms), 3 the most sets a channel keeps.
# Registers (or renews) a set of several channels held by a GRIP proxy, until ARGV[2] ms from now.
# Returns 0, registering nothing, when the channel already keeps ARGV[3] other sets.
HOLD = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: meta, stream. ARGV: 1 the first entry id to read ("-" for the oldest), 2 how many (0: none).
# Returns {epoch or "", entries from ARGV[1] on, the last event's token or "0", its id or "0"}: one
# consistent read of a channel (the last event is named by the metadata, which outlives the history).
READ = """
local meta = redis.call('HMGET', KEYS[1], 'e', 'p', 'l')
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {meta[1] or '', entries, meta[2] or '0', meta[3] or '0'}
"""
