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
 * KEYS[1] dead-letter stream, KEYS[2] stream; ARGV[1] n, ARGV[2..n+1] dead letters of one entry,
 * then the XADD arguments after the key. Appends the entry to the stream once and deletes the dead
 * letters, or does nothing (returns false) if they are all gone already: replayed by someone else.
 */
export const REPLAY_DEAD_LETTERS = `
local n = tonumber(ARGV[1])
local present = {}
for i = 2, n + 1 do
  if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then present[#present + 1] = ARGV[i] end
end
if #present == 0 then return false end
local id = redis.call('XADD', KEYS[2], unpack(ARGV, n + 2))
redis.call('XDEL', KEYS[1], unpack(present))
return id
`;
