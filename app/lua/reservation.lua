-- Giving back a reservation, shared by settle.lua and release.lua: app/limits.py prepends this
-- file (after bucket.lua) to both when it registers them.

-- Whether this is the reservation's first settlement or release: its marker is set for `ttl`
-- seconds by the first one, so one sent again (its answer was lost) changes nothing.
local function first_settlement(marker, ttl)
  return redis.call('SET', marker, '1', 'NX', 'EX', ttl) ~= false
end

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

-- gcra.still_held: units of the marked reservation the bucket (at live `level`) surely holds.
local function still_held(state, level, now, refill, mark)
  if not state or state[3] ~= mark[1] or level == 0 then
    return 0
  end
  local ending = drain(mark[3], now - mark[2], refill) - (state[4] - mark[4]) * PERIOD_US
  return idiv(math.max(0, math.min(ending, level)), PERIOD_US)
end

-- gcra.settled_state: `reserved` tokens of which `used` were used. Unused ones go back, at most
-- as many as the bucket still holds of the reservation; more used than reserved are added now.
-- ARGV from `first`: refill (0: nothing to do), reserved, used, the mark's birth (-1: none),
-- at, level, refunded, then now us ('' = server time).
local function settle_tokens(key, first)
  local refill = tonumber(ARGV[first])
  if refill == 0 then
    return
  end
  local reserved, used = tonumber(ARGV[first + 1]), tonumber(ARGV[first + 2])
  local mark = {}
  for i = 3, 6 do
    mark[i - 2] = tonumber(ARGV[first + i])
  end
  local now = clock_us(ARGV[first + 7])
  local state = load_bucket(key)
  local level = live_level(state, now, refill)
  if used > reserved then
    save_bucket(key, filled(state, level, now, used - reserved), refill)
    return
  end
  local give = 0
  if mark[1] >= 0 then
    give = math.min(reserved - used, still_held(state, level, now, refill, mark))
  end
  if not state or level - give * PERIOD_US <= 0 then
    save_bucket(key, nil, refill)
    return
  end
  state[1] = now
  state[2] = level - give * PERIOD_US
  state[4] = state[4] + give
  save_bucket(key, state, refill)
end
