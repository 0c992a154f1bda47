-- expire_parked.lua: drop parked messages older than the route's retention.
--
-- Only runs when the topology sets parking.retention; otherwise parked messages stay until
-- an operator removes or replays them.
--
-- KEYS[1]  {q}:parked         parked messages (hash id -> envelope JSON)
-- KEYS[2]  {q}:parked:index   parked ids (zset, score = parked-at ms)
-- ARGV[1]  cutoff             drop messages parked at or before this ms
-- ARGV[2]  limit              how many to drop at most in this call
--
-- Returns the number of parked messages dropped.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('HDEL', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return #ids
