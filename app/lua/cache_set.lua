-- Store an entry under the current namespace versions, unless they changed since the lookup,
-- and drop the lookup's lease (waiters now find the entry, or call themselves).
-- KEYS: the namespace version keys, as for cache_get.lua
-- ARGV: 1 entry key prefix, 2 request digest, 3 value, 4 ttl ms,
--       5 namespace seen at lookup ('' = none seen)
-- Returns 1 when stored, 0 when skipped because an invalidation happened in between.
local versions = {}
for i = 1, #KEYS do
  versions[i] = redis.call('GET', KEYS[i]) or '0'
end
local namespace = table.concat(versions, '.')
local seen = ARGV[5]
if seen == '' then
  seen = namespace
end
redis.call('DEL', ARGV[1] .. 'lease:' .. seen .. ':' .. ARGV[2])
if seen ~= namespace then
  return 0
end
redis.call('SET', ARGV[1] .. namespace .. ':' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
return 1
