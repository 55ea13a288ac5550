/*
 * Lua scripts stream-kit runs with EVAL, where a step must be atomic. Redis caches a script by its
 * SHA after the first EVAL; these run rarely, so EVALSHA would save little.
 */

/**
 * KEYS[1] stream; ARGV group, minimum idle ms, consumer to spare. Deletes the group's consumers
 * idle at least that long that hold no pending entries, and returns their names. Atomic: no
 * consumer can be handed an entry between the check and the delete.
 */
export const DELETE_IDLE_CONSUMERS = `
local removed = {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #info, 2 do consumer[info[i]] = info[i + 1] end
  if consumer.pending == 0 and consumer.idle >= tonumber(ARGV[2]) and consumer.name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer.name)
    removed[#removed + 1] = consumer.name
  end
end
return removed
`;

/**
 * KEYS[1] dead-letter stream, KEYS[2] stream; ARGV[1] dead letter's ID, ARGV[2..] the XADD
 * arguments after the key. Appends the entry to the stream and deletes the dead letter, or does
 * nothing (returns false) if the dead letter is already gone: replayed by someone else.
 */
export const REPLAY_DEAD_LETTER = `
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
`;
