-- One admission decision: rpm + tpm (GCRA) + key and global monthly budgets, and the worst-case
-- reservation, atomically. Mirrors app/limits.py (gcra_next, gcra_fits, MemoryLimitStore.admit).
-- KEYS: 1 request arrival time, 2 token arrival time, 3 reserved hash, 4 spent hash,
--       5 reserved total, 6 spent total
-- ARGV: 1 rpm (0 = unlimited), 2 tpm (0 = unlimited), 3 tokens, 4 reservation usd,
--       5 key budget usd (-1 = none), 6 global budget usd (-1 = none), 7 key id, 8 retention s
-- Returns {code, now, request tat, token tat, key committed usd, global committed usd} as strings
-- (Redis turns Lua numbers into integers); code indexes limits.REASONS.
local PERIOD = 60.0
local EPSILON_S = 1e-6
local EPSILON_USD = 1e-9

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local key_budget = tonumber(ARGV[5])
local global_budget = tonumber(ARGV[6])
local key_id = ARGV[7]
local retention = tonumber(ARGV[8])

-- Server time, so that every replica measures against the same clock.
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000

local function live_tat(key)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then return now end
  return tat
end

local function gcra_next(tat, limit, cost)
  return math.max(tat, now) + cost * PERIOD / limit
end

local function gcra_fits(next_tat)
  return next_tat - PERIOD <= now + EPSILON_S
end

local function number(value)
  return tonumber(value or '0') or 0
end

local req_tat = live_tat(KEYS[1])
local tok_tat = live_tat(KEYS[2])
local key_committed = number(redis.call('HGET', KEYS[4], key_id))
  + math.max(0, number(redis.call('HGET', KEYS[3], key_id)))
local global_committed = number(redis.call('GET', KEYS[6]))
  + math.max(0, number(redis.call('GET', KEYS[5])))

local code = 0
if rpm > 0 and not gcra_fits(gcra_next(req_tat, rpm, 1)) then
  code = 1
elseif tpm > 0 and not gcra_fits(gcra_next(tok_tat, tpm, tokens)) then
  code = 2
elseif key_budget >= 0 and key_committed + reserve > key_budget + EPSILON_USD then
  code = 3
elseif global_budget >= 0 and global_committed + reserve > global_budget + EPSILON_USD then
  code = 4
end

if code == 0 then
  -- Each arrival time expires when its bucket is full again.
  if rpm > 0 then
    local next_tat = gcra_next(req_tat, rpm, 1)
    redis.call('SET', KEYS[1], string.format('%.6f', next_tat),
      'PX', math.ceil((next_tat - now) * 1000) + 1)
  end
  if tpm > 0 and tokens > 0 then
    local next_tat = gcra_next(tok_tat, tpm, tokens)
    redis.call('SET', KEYS[2], string.format('%.6f', next_tat),
      'PX', math.ceil((next_tat - now) * 1000) + 1)
  end
  if reserve > 0 then
    redis.call('HINCRBYFLOAT', KEYS[3], key_id, ARGV[4])
    redis.call('INCRBYFLOAT', KEYS[5], ARGV[4])
    redis.call('EXPIRE', KEYS[3], retention)
    redis.call('EXPIRE', KEYS[5], retention)
  end
end

return {
  tostring(code),
  string.format('%.6f', now),
  string.format('%.6f', req_tat),
  string.format('%.6f', tok_tat),
  string.format('%.17g', key_committed),
  string.format('%.17g', global_committed),
}
