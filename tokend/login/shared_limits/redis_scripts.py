"""What tokend keeps in Redis: the sorted set of each throttle key, the news channel, and the
Lua scripts that record a failure, a success or an unlock, and look failures up (each one
round trip, atomic).
"""

from __future__ import annotations

NAMESPACE = "tokend:throttle:"
CHANNEL = NAMESPACE + "news"

FAILED_SCRIPT = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[4 + 2 * i])
  redis.call('ZADD', key, ARGV[1], ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', key, 0, -limit - 1)
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return #KEYS
"""
"""KEYS: the sorted sets; ARGV: now, window, channel, sealed message, then per key its member
(the failure's exact time, a nonce, a MAC) and its limit."""

SUCCEEDED_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
"""KEYS: the account's set; ARGV: the success's time, channel, sealed message."""

UNLOCK_SCRIPT = """
local cleared = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1])
return {cleared, redis.call('PUBLISH', ARGV[1], ARGV[2])}
"""
"""KEYS: the set; ARGV: channel, sealed message. Answers the failures dropped and how many
subscribers (this daemon's own included) heard of it."""

LOOKUP_SCRIPT = """
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('ZRANGEBYSCORE', key, ARGV[1], '+inf')
end
return found
"""


def redis_key(table: str, key: str) -> str:
    """The sorted set of a throttle key (itself a keyed hash: bounded length, no name)."""
    return f"{NAMESPACE}{table}:{key}"
