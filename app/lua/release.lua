-- Free a reservation (the request failed before it cost anything), never going below zero.
-- KEYS: 1 reserved hash, 2 reserved total
-- ARGV: 1 key id, 2 reserved usd
if tonumber(redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], '-' .. ARGV[2])) < 1e-9 then
  redis.call('HSET', KEYS[1], ARGV[1], '0')
end
if tonumber(redis.call('INCRBYFLOAT', KEYS[2], '-' .. ARGV[2])) < 1e-9 then
  redis.call('SET', KEYS[2], '0', 'KEEPTTL')
end
return 1
