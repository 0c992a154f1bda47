-- claim.lua: take up to N dead letters and lease them, so a crash loses nothing.
--
-- KEYS[1]  {q}:dlq       dead-letter list (the worker side LPUSHes; we take from the right)
-- KEYS[2]  {q}:inflight  zset of claimed dead letters, score = lease expiry (ms)
-- KEYS[3]  {q}:seq       counter; gives each claim a unique id
-- ARGV[1]  N             how many to claim at most
-- ARGV[2]  lease_until   lease expiry, ms since the epoch
--
-- Returns the claimed members, oldest first. A member is "<claim id>|<dead letter>": the id
-- keeps two byte-identical dead letters from collapsing into one zset member.
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then
  return {}
end
local last = redis.call('INCRBY', KEYS[3], #items)
local first = last - #items
local members = {}
for i, item in ipairs(items) do
  local member = tostring(first + i) .. '|' .. item
  redis.call('ZADD', KEYS[2], ARGV[2], member)
  members[i] = member
end
return members
