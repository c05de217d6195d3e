-- Replace a reservation by the real cost and tokens and add the request's usage counters,
-- atomically, once. Mirrors app/limits.py (MemoryLimitStore.settle); first_settlement,
-- unreserve and settle_tokens come from reservation.lua, prepended.
-- KEYS: 1 reserved hash, 2 spent hash, 3 reserved total, 4 spent total, 5 key's usage hash,
--       6 month's key index set, 7 token bucket, 8 the reservation's settled marker
-- ARGV: 1 key id, 2 reserved usd, 3 actual usd, 4 retention s, 5 marker ttl s,
--       6 number of integer counters, 7..14 the token settlement (see settle_tokens), then
--       (field, increment) pairs: the integer counters first, then the float ones.
-- Returns 1, or 0 when the reservation was already settled or released (nothing changed).
local key_id = ARGV[1]
local reserved = tonumber(ARGV[2])
local retention = tonumber(ARGV[4])
local int_count = tonumber(ARGV[6])

if not first_settlement(KEYS[8], ARGV[5]) then return 0 end
-- Give back the reservation; tokens not used go back to the bucket (more used: added).
if reserved > 0 then unreserve(KEYS[1], KEYS[3], key_id, ARGV[2]) end
settle_tokens(KEYS[7], 7)
redis.call('HINCRBYFLOAT', KEYS[2], key_id, ARGV[3])
redis.call('INCRBYFLOAT', KEYS[4], ARGV[3])

local index = 15
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
