-- Resolve the namespace versions, read the entry and, on a miss, take the lease: one round trip.
-- KEYS: the namespace version keys (global, the model's[, the client key's, the key's model's])
-- ARGV: 1 entry key prefix, 2 request digest, 3 lease ms (0 = no lease wanted), 4 lease token
-- Returns {namespace, value or false, lease}: the versions joined by '.', and 1 when this call
-- took the lease, 2 when it took over a lease whose holder failed, 0 when another holds it, -1
-- when none was asked for or the entry was found.
-- (Entry and lease keys are derived here, so this needs a non-cluster Redis, like ElastiCache
-- with cluster mode disabled.)
local versions = {}
for i = 1, #KEYS do
  versions[i] = redis.call('GET', KEYS[i]) or '0'
end
local namespace = table.concat(versions, '.')
local value = redis.call('GET', ARGV[1] .. namespace .. ':' .. ARGV[2])
local lease = -1
if not value and tonumber(ARGV[3]) > 0 then
  local lease_key = ARGV[1] .. 'lease:' .. namespace .. ':' .. ARGV[2]
  if redis.call('SET', lease_key, ARGV[4], 'NX', 'PX', ARGV[3]) then
    lease = 1
  elseif redis.call('GET', lease_key) == 'released' then
    -- Its holder's call failed (cache_release.lua): this caller takes over at once.
    redis.call('SET', lease_key, ARGV[4], 'PX', ARGV[3])
    lease = 2
  else
    lease = 0
  end
end
return {namespace, value, lease}
