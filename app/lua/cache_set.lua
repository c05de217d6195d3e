-- Store an entry under the current namespace versions, unless they changed since the lookup.
-- KEYS: 1 global namespace version, 2 the model's namespace version
-- ARGV: 1 entry key prefix, 2 request digest, 3 value, 4 ttl ms,
--       5 global version seen at lookup ('' = none seen), 6 model version seen at lookup
-- Returns 1 when stored, 0 when skipped because an invalidation happened in between.
local global_version = redis.call('GET', KEYS[1]) or '0'
local model_version = redis.call('GET', KEYS[2]) or '0'
if ARGV[5] ~= '' and (ARGV[5] ~= global_version or ARGV[6] ~= model_version) then
  return 0
end
local key = ARGV[1] .. global_version .. '.' .. model_version .. ':' .. ARGV[2]
redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
return 1
