-- Free a reservation (the request failed before it cost anything): its dollars and its tokens
-- (unreserve and settle_tokens come from reservation.lua, prepended).
-- KEYS: 1 reserved hash, 2 reserved total, 3 token bucket
-- ARGV: 1 key id, 2 reserved usd, 3..10 the token settlement (see settle_tokens; used = 0)
if tonumber(ARGV[2]) > 0 then
  unreserve(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
end
settle_tokens(KEYS[3], 3)
return 1
