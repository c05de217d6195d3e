-- Replace a reservation by the real cost and add the request's usage counters, atomically.
-- KEYS: 1 reserved hash, 2 spent hash, 3 reserved total, 4 spent total, 5 key's usage hash,
--       6 month's key index set
-- ARGV: 1 key id, 2 reserved usd, 3 actual usd, 4 retention s, 5 number of integer counters,
--       then (field, increment) pairs: the integer counters first, then the float ones.
local key_id = ARGV[1]
local reserved = tonumber(ARGV[2])
local retention = tonumber(ARGV[4])
local int_count = tonumber(ARGV[5])

local function unreserve()
  -- Never below zero: Redis may have restarted empty since the reservation was made.
  if tonumber(redis.call('HINCRBYFLOAT', KEYS[1], key_id, '-' .. ARGV[2])) < 1e-9 then
    redis.call('HSET', KEYS[1], key_id, '0')
  end
  if tonumber(redis.call('INCRBYFLOAT', KEYS[3], '-' .. ARGV[2])) < 1e-9 then
    redis.call('SET', KEYS[3], '0', 'KEEPTTL')
  end
end

if reserved > 0 then unreserve() end
redis.call('HINCRBYFLOAT', KEYS[2], key_id, ARGV[3])
redis.call('INCRBYFLOAT', KEYS[4], ARGV[3])

local index = 6
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
