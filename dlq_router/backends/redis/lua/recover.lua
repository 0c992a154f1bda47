-- recover.lua: put dead letters whose lease expired back into the dead-letter list.
--
-- A router that crashed (or stalled past its lease) leaves claimed dead letters in the
-- inflight zset; this returns them to the right end of the list, where they are claimed
-- next. A late router finds its member gone from inflight and skips it (route.lua).
--
-- KEYS[1]  {q}:inflight  zset of claimed dead letters, score = lease expiry (ms)
-- KEYS[2]  {q}:dlq       dead-letter list
-- ARGV[1]  now           ms since the epoch
-- ARGV[2]  limit         how many to recover at most in this call
--
-- Returns the number of dead letters recovered.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(members) do
  local bar = string.find(member, '|', 1, true)
  redis.call('RPUSH', KEYS[2], string.sub(member, bar + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #members
