-- Move a batch of parked messages back to work, atomically: one call = one batch.
--
-- KEYS[1]     {q}:parked        hash  id -> envelope (the parking lot)
-- KEYS[2]     {q}:parked:index  zset  id -> parked-at ms
-- KEYS[3..n]  destination lists (kombu work list, or one of its priority lists)
-- ARGV        triples: id, destination (1 = KEYS[3], 2 = KEYS[4], ...), new envelope
--
-- An id is moved only if it is still parked (a concurrent replay or purge may have taken
-- it: HDEL then returns 0); the new envelope (built by Python: attempts reset, new delivery
-- tag) is LPUSHed, as kombu does, in the same script that removes the parked copy, so
-- nothing is lost or doubled. Returns the ids that were NOT moved (usually none: a short
-- reply keeps the client's parsing cheap).
local gone = {}
for i = 1, #ARGV, 3 do
    local id = ARGV[i]
    if redis.call('HDEL', KEYS[1], id) == 1 then
        redis.call('ZREM', KEYS[2], id)
        redis.call('LPUSH', KEYS[2 + tonumber(ARGV[i + 1])], ARGV[i + 2])
    else
        gone[#gone + 1] = id
    end
end
return gone
