-- Free a reservation (the request failed before it cost anything): its dollars and its tokens
-- (unreserve and shift_token_arrival come from reservation.lua, prepended).
-- KEYS: 1 reserved hash, 2 reserved total, 3 token arrival time
-- ARGV: 1 key id, 2 reserved usd, 3 token arrival time shift s (<= 0; 0: none)
if tonumber(ARGV[2]) > 0 then
  unreserve(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
end
local token_shift = tonumber(ARGV[3])
if token_shift ~= 0 then
  shift_token_arrival(KEYS[3], token_shift)
end
return 1
