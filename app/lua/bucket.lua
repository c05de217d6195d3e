-- GCRA buckets, shared by admit.lua, settle.lua and release.lua: app/limits.py prepends this file
-- to each when it registers them (Redis scripts cannot load one another). Mirrors app/gcra.py
-- line for line: levels are units * PERIOD_US, times microseconds, all integers below 2^53, which
-- Lua's doubles hold exactly, so both back ends decide identically.
-- A bucket is a hash {s = stamp, l = level at the stamp, b = birth, q = units refunded since}.
local PERIOD_US = 60000000

-- Redis server time in microseconds, or the caller's clock ('' = server time).
local function clock_us(override)
  if override ~= '' then
    return tonumber(override)
  end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local function integer(value)
  return string.format('%.0f', value)
end

-- floor(a / b) of integers >= 0, exactly (a float division alone may round up across one).
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    return q - 1
  end
  if (q + 1) * b <= a then
    return q + 1
  end
  return q
end

-- gcra.drain: the level after `elapsed` us (never below 0; a clock going back drains none).
local function drain(level, elapsed, refill)
  if elapsed <= 0 then
    return level
  end
  if elapsed * refill >= level then
    return 0
  end
  return level - elapsed * refill
end

-- The bucket's state {stamp, level, birth, refunded}, or nil when it is empty (expired).
local function load_bucket(key)
  local fields = redis.call('HMGET', key, 's', 'l', 'b', 'q')
  if not fields[1] then
    return nil
  end
  return {tonumber(fields[1]), tonumber(fields[2]), tonumber(fields[3]), tonumber(fields[4])}
end

-- gcra.live_level
local function live_level(state, now, refill)
  if not state then
    return 0
  end
  return drain(state[2], now - state[1], refill)
end

-- Write the state (nil: delete); the key expires when the bucket would be empty again.
local function save_bucket(key, state, refill)
  if not state then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 's', integer(state[1]), 'l', integer(state[2]),
    'b', integer(state[3]), 'q', integer(state[4]))
  redis.call('PEXPIRE', key, math.ceil(state[2] / refill / 1000) + 1)
end

-- gcra.filled: add `units` to a bucket at live `level`; an empty one starts a new generation.
local function filled(state, level, now, units)
  if level == 0 or not state then
    state = {now, 0, now, 0}
  end
  state[1] = now
  state[2] = level + units * PERIOD_US
  return state
end
