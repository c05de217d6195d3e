-- Resolve the namespace versions and read the entry in one round trip.
-- KEYS: 1 global namespace version, 2 the model's namespace version
-- ARGV: 1 entry key prefix, 2 request digest
-- Returns {global version, model version, value or false}.
-- (The entry key is derived here, so this needs a non-cluster Redis, like ElastiCache with
-- cluster mode disabled.)
local global_version = redis.call('GET', KEYS[1]) or '0'
local model_version = redis.call('GET', KEYS[2]) or '0'
local value = redis.call('GET', ARGV[1] .. global_version .. '.' .. model_version .. ':' .. ARGV[2])
return {global_version, model_version, value}
