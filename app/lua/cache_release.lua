-- Mark a lease released if this caller still holds it (it may have expired and been taken by
-- another): the next lookup takes it over at once instead of waiting for it to expire, and can
-- tell a failed holder from one that outlived its lease.
-- KEYS: 1 lease key; ARGV: 1 the token the lookup set
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'released', 'KEEPTTL')
  return 1
end
return 0
