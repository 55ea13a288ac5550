import type { RedisClient } from './connection.ts';
import { XADD_CHECKED } from './stream.ts';

/*
 * Lua scripts stream-kit runs where a step must be atomic. The rare ones go by EVAL (Redis caches
 * a script by its SHA after the first EVAL, so EVALSHA would save little); the ones on a hot path
 * by `defineScript`.
 */

/**
 * A Lua script as a command of `redis`: EVALSHA, with EVAL the first time on each connection, so
 * the script's text does not cross the wire with every call. Defined once per client, however
 * often this is called; the caller passes the keys (`numberOfKeys` of them) first, then the
 * arguments, and gets the script's reply. With `numberOfKeys` null (a script over as many keys as
 * the call brings, e.g. one per item of a batch), the caller passes the number of keys first.
 */
export function defineScript<Reply>(
  redis: RedisClient,
  name: string,
  numberOfKeys: number | null,
  lua: string,
) {
  const commands = redis as unknown as Record<
    string,
    (...args: (string | number | Buffer)[]) => Promise<Reply>
  >;
  if (!commands[name]) redis.defineCommand(name, { lua, ...(numberOfKeys === null ? {} : { numberOfKeys }) });
  // Looked up at each call, not bound once: a test may stand a failing command in for it. An
  // array argument is flattened by ioredis: a long list goes as one, since spreading it into the
  // call would overflow the stack.
  return (...args: (string | number | Buffer | readonly (string | number)[])[]): Promise<Reply> =>
    commands[name]!(...(args as (string | number | Buffer)[]));
}

/**
 * KEYS[1] stream. ARGV: how far ahead of the clock an ID may lie (ms), then the XADD arguments
 * after the key. One checked XADD (see `XADD_CHECKED`): a script, so that an entry refused for its
 * ID is never seen by a subscriber blocked on the stream.
 */
export const PUBLISH = `${XADD_CHECKED}
return xadd_checked(KEYS[1], ARGV[1], unpack(ARGV, 2))
`;

/**
 * KEYS[1] stream. ARGV: how far ahead of the clock an ID may lie (ms), the number of trim
 * arguments, those arguments, then for each event the number of its field arguments and those
 * arguments. XADDs each event in order, then trims once (XTRIM, as each XADD would have: `~` trims
 * whole nodes anyway), and returns their IDs. One command for the whole batch: atomic, and no
 * per-event command for the client to build and parse. A failing XADD can only be the first (a
 * key of another type, out of memory, an ID ahead of the clock: every event has fields,
 * `encodeChecked` sees to it, and every later ID follows the first), so an error writes nothing.
 */
export const PUBLISH_MANY = `${XADD_CHECKED}
local trims = tonumber(ARGV[2])
local ids = {}
local at = trims + 3
while at <= #ARGV do
  local count = tonumber(ARGV[at])
  if #ids == 0 then
    ids[1] = xadd_checked(KEYS[1], ARGV[1], '*', unpack(ARGV, at + 1, at + count))
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 1, at + count))
  end
  at = at + count + 1
end
if trims > 0 then
  -- XTRIM with ~ removes at most 10,000 entries a call (its default LIMIT): trim until done.
  repeat until redis.call('XTRIM', KEYS[1], unpack(ARGV, 3, trims + 2)) == 0
end
return ids
`;

/**
 * Lua helpers for the liveness marks (see consumer/liveness.ts): `now_ms()`, Redis's clock in ms;
 * `liveness_of(mark)`, a mark's deadline and since when it has lived without a gap (nil for none);
 * `consumer_dead(key, consumer)`, whether `consumer` keeps a mark in hash `key` (`livenessKey`)
 * and it has lapsed. A consumer with no mark at all is not called dead: it may not keep one
 * (another library). `may_judge(key, me, life)`: whether consumer `me` may call others dead: its
 * own mark is alive and has lived `life` ms without a gap (after a pause of its own, or a stall of
 * Redis, the others need that long to renew theirs). For a handler's own script, as
 * `CONSUMER_DEAD` (`@msa/stream-kit/lua`): call `consumer_dead` only where `may_judge` allows it.
 */
export const LIVENESS_LUA = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function liveness_of(mark)
  if not mark then return nil end
  local deadline, since = string.match(mark, '^(%d+) (%d+)$')
  return tonumber(deadline), tonumber(since)
end
local function consumer_dead(key, consumer)
  local deadline = liveness_of(redis.call('HGET', key, consumer))
  return deadline ~= nil and deadline < now_ms()
end
local function may_judge(key, me, life)
  local deadline, since = liveness_of(redis.call('HGET', key, me))
  local now = now_ms()
  return deadline ~= nil and deadline >= now and now - since >= tonumber(life)
end
`;

export const CONSUMER_DEAD = LIVENESS_LUA;

/**
 * KEYS[1] the group's liveness hash; ARGV consumer, how long the mark lasts (ms). Renews the
 * consumer's mark and returns how long it has lived without a gap (0: it had lapsed, or there was
 * none). `allow-oom`: a live consumer stays live while Redis is out of memory (the field keeps its
 * size, so this adds no memory).
 */
export const RENEW_LIVENESS = `#!lua flags=allow-oom
${LIVENESS_LUA}
local now = now_ms()
local deadline, since = liveness_of(redis.call('HGET', KEYS[1], ARGV[1]))
if deadline == nil or deadline < now then since = now end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %d', now + tonumber(ARGV[2]), since))
return now - since
`;

/**
 * KEYS[1] stream, KEYS[2] the group's liveness hash; ARGV group, this consumer, how many entries
 * to take per dead consumer at most, a mark's life (ms). Moves (XCLAIM JUSTID: no delivery
 * counted) the entries of every consumer of the group whose mark has lapsed to this one, whatever
 * their idle time; returns their IDs and the dead consumers' names. Judges only while this
 * consumer's own mark is alive and has lived a full life: after a pause of its own or of Redis,
 * the others need that long to renew theirs. Atomic: no two consumers take the same entry.
 * `allow-oom`: moving entries between consumers takes next to no memory, and a dead consumer's
 * entries should wait no longer for Redis's memory than for anything else.
 */
export const TAKE_FROM_DEAD = `#!lua flags=allow-oom
${LIVENESS_LUA}
if not may_judge(KEYS[2], ARGV[2], ARGV[4]) then return {{}, {}} end
local most = tonumber(ARGV[3])
local taken, from = {}, {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #info, 2 do consumer[info[i]] = info[i + 1] end
  if #taken < most and consumer.pending > 0 and consumer.name ~= ARGV[2]
    and consumer_dead(KEYS[2], consumer.name) then
    -- unpack() only spreads in last place: the IDs go into the argument list one by one.
    local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
    for _, row in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', most - #taken, consumer.name)) do
      claim[#claim + 1] = row[1]
    end
    claim[#claim + 1] = 'JUSTID'
    for _, id in ipairs(redis.call(unpack(claim))) do
      taken[#taken + 1] = id
    end
    from[#from + 1] = consumer.name
  end
end
return {taken, from}
`;

/**
 * KEYS[1] stream, KEYS[2] the group's liveness hash; ARGV group, minimum idle ms, consumer to
 * spare. Deletes the group's consumers idle at least that long that hold no pending entries, with
 * their liveness marks, and returns their names; marks of consumers no longer in the group
 * (deleted by hand, the group recreated) go once they have been dead that long too. Atomic: no
 * consumer can be handed an entry between the check and the delete. `allow-oom`: it only deletes.
 */
export const DELETE_IDLE_CONSUMERS = `#!lua flags=allow-oom
${LIVENESS_LUA}
local removed = {}
local present = {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #info, 2 do consumer[info[i]] = info[i + 1] end
  if consumer.pending == 0 and consumer.idle >= tonumber(ARGV[2]) and consumer.name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer.name)
    redis.call('HDEL', KEYS[2], consumer.name)
    removed[#removed + 1] = consumer.name
  else
    present[consumer.name] = true
  end
end
local marks = redis.call('HGETALL', KEYS[2])
local long_ago = now_ms() - tonumber(ARGV[2])
for i = 1, #marks, 2 do
  local deadline = liveness_of(marks[i + 1])
  if not present[marks[i]] and (deadline == nil or deadline < long_ago) then
    redis.call('HDEL', KEYS[2], marks[i])
  end
end
return removed
`;

/**
 * KEYS[1] stream, KEYS[2] the replay mark of a dead-lettered entry (in the stream's slot); ARGV[1]
 * how long to keep the mark (s), then the XADD arguments after the key. Appends the entry to the
 * stream once, however often it is called for the same mark (the mark remembers the new entry
 * ID), and returns that ID. The dead letters are deleted afterwards, apart: they live in another
 * slot, and one left behind by a crash in between is only put back again as this same ID.
 */
export const PUT_BACK_ONCE = `
local id = redis.call('GET', KEYS[2])
if not id then
  id = redis.call('XADD', KEYS[1], unpack(ARGV, 2))
  redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
end
return id
`;

/**
 * KEYS[1] stream, KEYS[2] the entry's run count; ARGV group, consumer, minimum idle ms, entry ID,
 * how long to keep the count (ms). Claims the entry (XCLAIM, only if idle that long: still ours)
 * and counts the run it is claimed for, in one step: returns its ID, its fields and the number of
 * this run, or false if it is no longer ours. A count not yet written means one run: the entry's
 * first delivery, which writes nothing (the hot path). `#!lua` (no flags): Redis refuses the whole
 * script while out of memory, where a script without one would XCLAIM, and then, having written,
 * be allowed the SET too, counting runs that cannot happen.
 */
export const CLAIM_RUN = `#!lua
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if #claimed == 0 or not claimed[1] then return false end
local runs = tonumber(redis.call('GET', KEYS[2]) or '1') + 1
redis.call('SET', KEYS[2], runs, 'PX', ARGV[5])
return {claimed[1][1], claimed[1][2], runs}
`;

/**
 * KEYS[1] an entry's run count; ARGV how many runs to take off, how long to keep the count (ms).
 * For runs that must not count (they ended in a Redis fault or `RetryLaterError`, or never
 * started): the count is a sum, so taking them off later, even after another consumer counted a
 * run of its own, leaves it right. A count not yet written means one run (see CLAIM_RUN).
 */
export const UNCOUNT_RUNS = `
local runs = math.max(tonumber(redis.call('GET', KEYS[1]) or '1') - tonumber(ARGV[1]), 0)
redis.call('SET', KEYS[1], runs, 'PX', ARGV[2])
return runs
`;

/**
 * KEYS[1] stream, KEYS[2] an entry's run count; ARGV group, entry ID. Deletes the count once the
 * entry is no longer pending (its handler acked it in its own script): a count deleted while the
 * entry is still pending would make its next run count as the second again, and it would never
 * reach `maxDeliveries`.
 */
export const FORGET_RUNS_IF_ACKED = `
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return redis.call('DEL', KEYS[2])
end
return 0
`;

/**
 * KEYS[1] the members hash of a partitioned stream's group (`membersKey`); ARGV this consumer,
 * how long its mark lasts (ms). Renews the consumer's mark (its deadline, on Redis's clock),
 * drops the marks that have lapsed, and returns the live members: every consumer of the group
 * assigns the partitions from this list (see partitions.ts). `allow-oom`: a live consumer stays a
 * member while Redis is out of memory.
 */
export const RENEW_MEMBERSHIP = `#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local live = {}
local marks = redis.call('HGETALL', KEYS[1])
for i = 1, #marks, 2 do
  if tonumber(marks[i + 1]) < now then redis.call('HDEL', KEYS[1], marks[i]) else live[#live + 1] = marks[i] end
end
return live
`;

/**
 * KEYS[1] a partition's lease for a group (`leaseKey`); ARGV this consumer, the lease's life
 * (ms). Takes the lease if nobody holds it (2) or renews it if this consumer does (1); held by
 * another, leaves it (0). One owner at a time: the key names it until it expires or is released.
 */
export const TAKE_LEASE = `#!lua flags=allow-oom
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
`;

/** KEYS[1] a partition's lease; ARGV this consumer. Releases the lease if this consumer holds it. */
export const RELEASE_LEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;
