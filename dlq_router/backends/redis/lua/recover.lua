-- recover.lua: put dead letters whose lease expired back into the dead-letter list.
--
-- A router that crashed (or stalled past its lease) leaves claim ids in the inflight zset
-- and their dead letters in the claims hash; this returns the dead letters to the right
-- end of the list, oldest lease first in line, where they are claimed next. A late router
-- finds its claim id gone from inflight and skips it (route.lua).
--
-- KEYS[1]  {q}:inflight  zset of claim ids, score = lease expiry (ms)
-- KEYS[2]  {q}:dlq       dead-letter list
-- KEYS[3]  {q}:claims    hash claim id -> leased dead letter
-- ARGV[1]  now           ms since the epoch
-- ARGV[2]  limit         how many to recover at most in this call
--
-- Returns the number of dead letters recovered.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
-- Newest first: RPUSH puts the last one at the right end, where RPOP (claim) takes first.
for i = #ids, 1, -1 do
  local id = ids[i]
  local letter = redis.call('HGET', KEYS[3], id)
  if letter then
    redis.call('HDEL', KEYS[3], id)
  else
    -- Leased by a router before claim ids: the member is "<n>|<dead letter>".
    local bar = string.find(id, '|', 1, true)
    if bar then letter = string.sub(id, bar + 1) end
  end
  if letter then redis.call('RPUSH', KEYS[2], letter) end
  redis.call('ZREM', KEYS[1], id)
end
return #ids
