-- claim.lua: take up to N dead letters and lease them, so a crash loses nothing.
--
-- KEYS[1]  {q}:dlq       dead-letter list (the worker side LPUSHes; we take from the right)
-- KEYS[2]  {q}:inflight  zset of claim ids, score = lease expiry (ms)
-- KEYS[3]  {q}:claims    hash claim id -> leased dead letter
-- ARGV[1]  N             how many to claim at most
-- ARGV[2]  lease_until   lease expiry, ms since the epoch
-- ARGV[3]  batch id      unique per call (the router's random prefix + a counter)
--
-- Returns the claimed dead letters, oldest first. The i-th (1-based) is leased under the
-- claim id  batch id .. string.format('%04d', i), so the router knows every claim id
-- without receiving it, and route.lua gets ids back instead of whole dead letters.
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then
  return {}
end
local leases, letters = {}, {}
for i, item in ipairs(items) do
  local id = ARGV[3] .. string.format('%04d', i)
  leases[2 * i - 1], leases[2 * i] = ARGV[2], id
  letters[2 * i - 1], letters[2 * i] = id, item
end
redis.call('ZADD', KEYS[2], unpack(leases))
redis.call('HSET', KEYS[3], unpack(letters))
return items
