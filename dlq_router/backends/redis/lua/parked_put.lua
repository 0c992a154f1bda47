-- Park a batch of messages (import): envelope into the hash, id into the index.
--
-- KEYS[1]  {q}:parked        hash  id -> envelope
-- KEYS[2]  {q}:parked:index  zset  id -> parked-at ms
-- ARGV     triples: id, parked-at ms, envelope
--
-- An id that is already parked is left as it is (importing the same file twice adds
-- nothing). Returns the ids that were added.
local added = {}
for i = 1, #ARGV, 3 do
    if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 2]) == 1 then
        redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
        added[#added + 1] = ARGV[i]
    end
end
return added
