-- move.lua: move due retries back to the work list, in one atomic batch.
--
-- ZRANGEBYSCORE + LPUSH + ZREM in one script, so replicas never both move a retry and a
-- crash never loses one. A retry member is one priority-step digit ("0", "3", "6", "9")
-- followed by the kombu envelope; the envelope is pushed the way kombu's Redis transport
-- publishes (LPUSH; workers BRPOP from the right), to the list of that priority step.
--
-- KEYS[1]  {q}:retry      waiting retries (zset, score = due ms * 4096 + seq % 4096)
-- KEYS[2]  q              kombu work list (priority step 0)
-- KEYS[3..5] (optional)   q\x06\x163, q\x06\x166, q\x06\x169: kombu's priority lists. Left
--          out on Redis Cluster (they hash to other slots): everything goes to KEYS[2].
-- ARGV[1]  max_score      move members scoring up to this ((now_ms + 1) * 4096 - 1)
-- ARGV[2]  batch          how many to move at most
--
-- Returns {moved, next_score}: next_score is the lowest remaining score (a string), or ""
-- when no retry is waiting.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local lists = {['0'] = {}, ['3'] = {}, ['6'] = {}, ['9'] = {}}
local keys = {['0'] = KEYS[2], ['3'] = KEYS[3], ['6'] = KEYS[4], ['9'] = KEYS[5]}
for _, member in ipairs(members) do
  local step = string.sub(member, 1, 1)
  if keys[step] == nil then step = '0' end
  local list = lists[step]
  list[#list + 1] = string.sub(member, 2)
end
for step, list in pairs(lists) do
  if #list > 0 then
    redis.call('LPUSH', keys[step], unpack(list))
  end
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_score = ''
if #head > 0 then next_score = head[2] end
return {#members, next_score}
