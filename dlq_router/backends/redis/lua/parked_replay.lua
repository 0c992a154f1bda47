-- Move a batch of parked messages back to work, atomically: one call = one batch.
--
-- KEYS[1]     {q}:parked        hash  id -> envelope (the parking lot)
-- KEYS[2]     {q}:parked:index  zset  id -> parked-at ms
-- KEYS[3..n]  destination lists (kombu work list, or one of its priority lists)
-- ARGV        pairs: "<destination> <id>" (destination 1 = KEYS[3], 2 = KEYS[4], ...; the
--             id may hold spaces), new envelope
--
-- An id is moved only if it is still parked (a concurrent replay or purge may have taken
-- it: HDEL then returns 0); the new envelope (built by Python: attempts reset, new delivery
-- tag) is LPUSHed, as kombu does, in the same script that removes the parked copy, so
-- nothing is lost or doubled. Returns the ids that were NOT moved (usually none: a short
-- reply keeps the client's parsing cheap).
local gone, moved, pushes = {}, {}, {}
for i = 1, #ARGV, 2 do
    local dest, id = string.match(ARGV[i], '^(%d+) (.*)$')
    if redis.call('HDEL', KEYS[1], id) == 1 then
        moved[#moved + 1] = id
        local list = pushes[dest]
        if list == nil then
            list = {}
            pushes[dest] = list
        end
        list[#list + 1] = ARGV[i + 1]
    else
        gone[#gone + 1] = id
    end
end
-- One ZREM and one LPUSH per destination for the batch (same order as one by one).
if #moved > 0 then
    redis.call('ZREM', KEYS[2], unpack(moved))
end
for dest, list in pairs(pushes) do
    redis.call('LPUSH', KEYS[2 + tonumber(dest)], unpack(list))
end
return gone
