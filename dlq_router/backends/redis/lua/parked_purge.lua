-- Delete a batch of parked messages: the hash entry and its index entry together.
--
-- KEYS[1]  {q}:parked        hash  id -> envelope
-- KEYS[2]  {q}:parked:index  zset  id -> parked-at ms
-- ARGV     ids to delete
--
-- Returns the ids that were deleted (ids already gone are left out).
local deleted = {}
for i = 1, #ARGV do
    if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
        redis.call('ZREM', KEYS[2], ARGV[i])
        deleted[#deleted + 1] = ARGV[i]
    end
end
return deleted
