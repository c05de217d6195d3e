-- Giving back a reservation, shared by settle.lua and release.lua: app/limits.py prepends this
-- file to both when it registers them (Redis scripts cannot load one another).

-- Take `usd` (a decimal string) off the key's reserved dollars and off the reserved total.
-- Never below zero: Redis may have restarted empty since the reservation was made.
local function unreserve(reserved_hash, reserved_total, key_id, usd)
  if tonumber(redis.call('HINCRBYFLOAT', reserved_hash, key_id, '-' .. usd)) < 1e-9 then
    redis.call('HSET', reserved_hash, key_id, '0')
  end
  if tonumber(redis.call('INCRBYFLOAT', reserved_total, '-' .. usd)) < 1e-9 then
    redis.call('SET', reserved_total, '0', 'KEEPTTL')
  end
end

-- Move the key's token arrival time by `shift` seconds (negative: tokens given back); the key
-- expires when the bucket is full again.
local function shift_token_arrival(tat_key, shift)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local tat = math.max(tonumber(redis.call('GET', tat_key) or '0'), now) + shift
  if tat > now then
    redis.call('SET', tat_key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
  else
    redis.call('DEL', tat_key)
  end
end

