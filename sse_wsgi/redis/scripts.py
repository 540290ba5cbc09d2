"""The Lua scripts: add an event to one channel, and read one channel, each in one atomic step."""

from __future__ import annotations

__all__ = ["HOLD", "PUBLISH", "READ"]

# KEYS: meta, stream, ids, held (one channel's, one hash slot).
# ARGV: 1 history (entries kept), 2 ttl (ms), 3 an epoch for a channel that has none, 4 the event's tag,
#       5 the payload, 6 the caller's own id ("" for none), 7 PUBLISH or SPUBLISH, 8 the live channel,
#       9 the channel's name, 10 "1" to return the sets of channels held by GRIP proxies on it.
# Returns {epoch, n, the id of the channel's event before ("0": none), its token ("0": none), held sets...}.
# A channel without metadata (new, expired, or lost by Redis) starts a new epoch and drops any history
# left from the old one, so that numbers start again at 1 without a clash.
PUBLISH = """
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
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call(ARGV[7], ARGV[8], token .. ' ' .. ARGV[5])
local answer = {epoch, n, before[1], before[2]}
if ARGV[10] == '1' then
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ms)
  for _, held in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    table.insert(answer, held)
  end
end
return answer
"""

# KEYS: held (one channel's). ARGV: 1 the set (JSON), 2 how long it stays (ms).
# Registers a set of several channels held by a GRIP proxy, until ARGV[2] ms from now.
HOLD = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: meta, stream. ARGV: 1 the first entry id to read ("-" for the oldest), 2 how many (0: none).
# Returns {epoch or "", entries from ARGV[1] on, the last entry}: one consistent read of a channel.
READ = """
local epoch = redis.call('HGET', KEYS[1], 'e') or ''
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {epoch, entries, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
"""
