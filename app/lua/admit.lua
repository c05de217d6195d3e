-- One admission decision: rpm + tpm (GCRA buckets) + key and global monthly budgets, and the
-- worst-case reservation, atomically. Mirrors app/limits.py (MemoryLimitStore.admit); the bucket
-- steps come from bucket.lua, prepended.
-- KEYS: 1 request bucket, 2 token bucket, 3 reserved hash, 4 spent hash,
--       5 reserved total, 6 spent total
-- ARGV: 1 rpm (0 = unlimited), 2 tpm (0 = unlimited), 3 tokens, 4 reservation usd,
--       5 key budget usd (-1 = none), 6 global budget usd (-1 = none), 7 key id, 8 retention s,
--       9 rpm burst, 10 rpm refill, 11 tpm burst, 12 tpm refill (gcra.Bucket),
--       13 now us ('' = server time)
-- Returns {code, request level, token level, key committed usd, global committed usd} as strings
-- (Redis turns Lua numbers into integers), and for an admitted request holding tokens the
-- token mark {birth, at, level, refunded}; code indexes limits.REASONS.
local EPSILON_USD = 1e-9

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local key_budget = tonumber(ARGV[5])
local global_budget = tonumber(ARGV[6])
local key_id = ARGV[7]
local retention = tonumber(ARGV[8])
local rpm_burst, rpm_refill = tonumber(ARGV[9]), tonumber(ARGV[10])
local tpm_burst, tpm_refill = tonumber(ARGV[11]), tonumber(ARGV[12])
-- Server time by default, so that every replica measures against the same clock.
local now = clock_us(ARGV[13])

local function number(value)
  return tonumber(value or '0') or 0
end

local req, req_level, tok, tok_level = nil, 0, nil, 0
if rpm > 0 then
  req = load_bucket(KEYS[1])
  req_level = live_level(req, now, rpm_refill)
end
if tpm > 0 then
  tok = load_bucket(KEYS[2])
  tok_level = live_level(tok, now, tpm_refill)
end
local key_committed = number(redis.call('HGET', KEYS[4], key_id))
  + math.max(0, number(redis.call('HGET', KEYS[3], key_id)))
local global_committed = number(redis.call('GET', KEYS[6]))
  + math.max(0, number(redis.call('GET', KEYS[5])))

local code = 0
if rpm > 0 and req_level + PERIOD_US > rpm_burst * PERIOD_US then
  code = 1
elseif tpm > 0 and tok_level + tokens * PERIOD_US > tpm_burst * PERIOD_US then
  code = 2
elseif key_budget >= 0 and key_committed + reserve > key_budget + EPSILON_USD then
  code = 3
elseif global_budget >= 0 and global_committed + reserve > global_budget + EPSILON_USD then
  code = 4
end

local result = {
  tostring(code),
  integer(req_level),
  integer(tok_level),
  string.format('%.17g', key_committed),
  string.format('%.17g', global_committed),
}
if code == 0 then
  if rpm > 0 then
    save_bucket(KEYS[1], filled(req, req_level, now, 1), rpm_refill)
  end
  if tpm > 0 and tokens > 0 then
    tok = filled(tok, tok_level, now, tokens)
    save_bucket(KEYS[2], tok, tpm_refill)
    for _, value in ipairs({tok[3], now, tok[2], tok[4]}) do
      table.insert(result, integer(value))
    end
  end
  if reserve > 0 then
    redis.call('HINCRBYFLOAT', KEYS[3], key_id, ARGV[4])
    redis.call('INCRBYFLOAT', KEYS[5], ARGV[4])
    redis.call('EXPIRE', KEYS[3], retention)
    redis.call('EXPIRE', KEYS[5], retention)
  end
end
return result
