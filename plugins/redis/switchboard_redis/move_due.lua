-- Move the retries of one subscription that fell due into its retry stream, atomically:
-- a retry is either still scheduled (sorted set member + hash) or an entry of the stream.
-- KEYS[1]: sorted set <channel>.retry.<consumer>.due (member: retry id, score: due epoch ms)
-- KEYS[2]: stream <channel>.retry.<consumer>
-- ARGV[1]: now (epoch ms); ARGV[2]: most retries moved per call;
-- ARGV[3]: prefix of the hash holding a retry's entry fields (<prefix><retry id>)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local key = ARGV[3] .. id
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
return #due
