-- Replace a reservation by the real cost and tokens and add the request's usage counters,
-- atomically. Mirrors app/limits.py (MemoryLimitStore.settle, settled_tat); unreserve and
-- shift_token_arrival come from reservation.lua, prepended.
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

-- Give back the reservation; tokens not used move the arrival time back (more used: forward).
if reserved > 0 then unreserve(KEYS[1], KEYS[3], key_id, ARGV[2]) end
if token_shift ~= 0 then shift_token_arrival(KEYS[7], token_shift) end
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
