-- Free a reservation (the request failed before it cost anything): its dollars, never going below
-- zero, and its tokens (the token arrival time moves back, as in settle.lua with nothing used).
-- KEYS: 1 reserved hash, 2 reserved total, 3 token arrival time
-- ARGV: 1 key id, 2 reserved usd, 3 token arrival time shift s (<= 0; 0: none)
if tonumber(ARGV[2]) > 0 then
  if tonumber(redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], '-' .. ARGV[2])) < 1e-9 then
    redis.call('HSET', KEYS[1], ARGV[1], '0')
  end
  if tonumber(redis.call('INCRBYFLOAT', KEYS[2], '-' .. ARGV[2])) < 1e-9 then
    redis.call('SET', KEYS[2], '0', 'KEEPTTL')
  end
end
local token_shift = tonumber(ARGV[3])
if token_shift ~= 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local tat = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now) + token_shift
  if tat > now then
    redis.call('SET', KEYS[3], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
  else
    redis.call('DEL', KEYS[3])
  end
end
return 1
