-- Replace a reservation by the real cost and tokens and add the request's usage counters,
-- atomically. Mirrors app/limits.py (MemoryLimitStore.settle, settled_tat).
-- KEYS: 1 reserved hash, 2 spent hash, 3 reserved total, 4 spent total, 5 key's usage hash,
--       6 month's key index set, 7 token arrival time
-- ARGV: 1 key id, 2 reserved usd, 3 actual usd, 4 retention s, 5 number of integer counters,
--       6 token arrival time shift s (tokens used - tokens reserved, in seconds at the key's tpm;
--       0: none), then (field, increment) pairs: the integer counters first, then the float ones.
local key_id = ARGV[1]
local reserved = tonumber(ARGV[2])
local retention = tonumber(ARGV[4])
local int_count = tonumber(ARGV[5])
local token_shift = tonumber(ARGV[6])

local function unreserve()
  -- Never below zero: Redis may have restarted empty since the reservation was made.
  if tonumber(redis.call('HINCRBYFLOAT', KEYS[1], key_id, '-' .. ARGV[2])) < 1e-9 then
    redis.call('HSET', KEYS[1], key_id, '0')
  end
  if tonumber(redis.call('INCRBYFLOAT', KEYS[3], '-' .. ARGV[2])) < 1e-9 then
    redis.call('SET', KEYS[3], '0', 'KEEPTTL')
  end
end

local function settle_tokens()
  -- Give back what was reserved and not used; the arrival time expires when the bucket is full.
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local tat = math.max(tonumber(redis.call('GET', KEYS[7]) or '0'), now) + token_shift
  if tat > now then
    redis.call('SET', KEYS[7], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
  else
    redis.call('DEL', KEYS[7])
  end
end

if reserved > 0 then unreserve() end
if token_shift ~= 0 then settle_tokens() end
redis.call('HINCRBYFLOAT', KEYS[2], key_id, ARGV[3])
redis.call('INCRBYFLOAT', KEYS[4], ARGV[3])

local index = 7
for _ = 1, int_count do
  redis.call('HINCRBY', KEYS[5], ARGV[index], ARGV[index + 1])
  index = index + 2
end
while index <= #ARGV do
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[index], ARGV[index + 1])
  index = index + 2
end
redis.call('SADD', KEYS[6], key_id)

for i = 1, 6 do
  redis.call('EXPIRE', KEYS[i], retention)
end
return 1
