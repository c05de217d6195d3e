-- Free a reservation (the request failed before it cost anything): its dollars and its tokens,
-- once (first_settlement, unreserve and settle_tokens come from reservation.lua, prepended).
-- KEYS: 1 reserved hash, 2 reserved total, 3 token bucket, 4 the reservation's settled marker
-- ARGV: 1 key id, 2 reserved usd, 3..10 the token settlement (see settle_tokens; used = 0),
--       11 marker ttl s
-- Returns 1, or 0 when the reservation was already settled or released (nothing changed).
if not first_settlement(KEYS[4], ARGV[11]) then return 0 end
if tonumber(ARGV[2]) > 0 then
  unreserve(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
end
settle_tokens(KEYS[3], 3)
return 1
