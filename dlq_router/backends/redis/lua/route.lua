-- route.lua: apply the router's decisions for one batch of claimed dead letters, atomically.
--
-- Each item is released from its lease and, in the same script, scheduled for retry or
-- parked. An item whose claim id is no longer in inflight lost its lease (another replica
-- recovered it) and is skipped, so replicas never both route one dead letter.
--
-- KEYS[1]  {q}:inflight       zset of claim ids, score = lease expiry (ms)
-- KEYS[2]  {q}:retry          waiting retries (zset, score = due ms * 4096 + seq % 4096)
-- KEYS[3]  {q}:seq            counter for FIFO order within one millisecond
-- KEYS[4]  {q}:parked         parked messages (hash id -> envelope JSON)
-- KEYS[5]  {q}:parked:index   parked ids (zset, score = parked-at ms)
-- KEYS[6]  {q}:claims         hash claim id -> leased dead letter
-- ARGV[1]  now                ms since the epoch (the parked-at score)
-- ARGV[2]  max_length         parking-lot capacity, 0 = unbounded
-- ARGV[3]  overflow           "reject-publish" or "drop-head"
-- ARGV[4]  hold_until         ms; a refused park stays claimed until then
-- ARGV[5...] per item, 2 values: "<op> <claim id> <arg>", payload
--          op "r": arg = due ms, payload = retry member
--          op "p": arg = parked id (any text, spaces included), payload = envelope JSON
--          (two arguments, not four: packing arguments is most of the client's cost)
--
-- Returns {statuses, min_score}: one character per item, "r" retried, "p" parked,
-- "h" held (parking lot full, reject-publish), "c" id collision (that parked id is taken:
-- still leased, nothing written), "s" skipped (lease lost); min_score is the
-- lowest retry score written in this call (as a string), or "" when none.
local now = ARGV[1]
local max_length = tonumber(ARGV[2])
local drop_head = ARGV[3] == 'drop-head'
local n = (#ARGV - 4) / 2
local retries = 0
for i = 0, n - 1 do
  if string.byte(ARGV[5 + i * 2], 1) == 114 then retries = retries + 1 end  -- 'r'
end
local seq = 0
if retries > 0 then
  seq = redis.call('INCRBY', KEYS[3], retries) - retries
end
local statuses = {}
local min_score = nil
local scheduled = {}  -- ZADD arguments for the retry zset: score, member, ...
local released = {}  -- claim ids whose dead letter left (HDEL from the claims hash)
for i = 0, n - 1 do
  local op, id, arg = string.match(ARGV[5 + i * 2], '^(%a) (%S+) (.*)$')
  local payload = ARGV[6 + i * 2]
  local status
  if op == 'r' then
    -- ZREM answers 0 when the lease is gone: that is the ownership check.
    if redis.call('ZREM', KEYS[1], id) == 0 then
      status = 's'
    else
      seq = seq + 1
      local score = tonumber(arg) * 4096 + (seq % 4096)
      scheduled[#scheduled + 1] = score
      scheduled[#scheduled + 1] = payload
      released[#released + 1] = id
      if min_score == nil or score < min_score then min_score = score end
      status = 'r'
    end
  elseif redis.call('ZSCORE', KEYS[1], id) == false then
    status = 's'
  elseif redis.call('HEXISTS', KEYS[4], arg) == 1 then
    -- The id is parked already, by a different message (producers can set any dlq-id):
    -- a park never replaces another. The dead letter stays leased; the router parks it
    -- again under an id of its own.
    status = 'c'
  else
    local full = max_length > 0 and redis.call('HLEN', KEYS[4]) >= max_length
    if full and not drop_head then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[4], id)
      status = 'h'
    else
      if full then
        local excess = redis.call('HLEN', KEYS[4]) - max_length + 1
        local oldest = redis.call('ZPOPMIN', KEYS[5], excess)
        for j = 1, #oldest, 2 do
          redis.call('HDEL', KEYS[4], oldest[j])
        end
      end
      redis.call('HSET', KEYS[4], arg, payload)
      redis.call('ZADD', KEYS[5], now, arg)
      redis.call('ZREM', KEYS[1], id)
      released[#released + 1] = id
      status = 'p'
    end
  end
  statuses[#statuses + 1] = status
end
if #scheduled > 0 then
  redis.call('ZADD', KEYS[2], unpack(scheduled))
end
if #released > 0 then
  redis.call('HDEL', KEYS[6], unpack(released))
end
local min_text = ''
if min_score ~= nil then min_text = string.format('%.0f', min_score) end
return {table.concat(statuses), min_text}
