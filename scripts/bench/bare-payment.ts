/**
 * The floor of payment-service's design, for the payment-like consumer rows (throughput.ts): the
 * same exactly-once work per order, with nothing else. Reads `order-events` in group
 * `payment-service-group`, COUNT 1000, and pays each batch in one Lua call: for each order, the
 * record's HGET, then, if it is new, the `payment-completed` XADD and the record's HSET; then one
 * XACK of the batch. Plain ioredis: no schema check, no per-order isolation or retries, no leases,
 * liveness, reclaim or dead letters, no logs. The group is made by the bench before this starts.
 * Reads `REDIS_URL`; SIGTERM ends it at once.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';

const GROUP = 'payment-service-group';
const redis = new Redis(process.env.REDIS_URL!);

// KEYS: payment-events, order-events, then each order's record. ARGV: the group, then for each
// order its entry ID, orderId, userId, productId, price, paymentProcessId and paidAt.
const PAY = `
local at = 2
local acked = {}
for i = 3, #KEYS do
  local entry = ARGV[at]
  if not redis.call('HGET', KEYS[i], 'paymentProcessId') then
    local id = redis.call('XADD', KEYS[1], '*', 'type', 'payment-completed', 'orderId', ARGV[at + 1],
      'userId', ARGV[at + 2], 'productId', ARGV[at + 3], 'price', ARGV[at + 4],
      'paymentProcessId', ARGV[at + 5])
    redis.call('HSET', KEYS[i], 'paymentProcessId', ARGV[at + 5], 'orderEntryId', entry,
      'paymentEntryId', id, 'paidAt', ARGV[at + 6])
  end
  acked[#acked + 1] = entry
  at = at + 7
end
redis.call('XACK', KEYS[2], ARGV[1], unpack(acked))
`;
redis.defineCommand('pay', { lua: PAY });

for (;;) {
  // prettier-ignore
  const reply = (await redis.xreadgroup(
    'GROUP', GROUP, `bare-${process.pid}`, 'COUNT', 1_000, 'BLOCK', 1_000, 'STREAMS', 'order-events', '>',
  )) as [string, [string, string[]][]][] | null;
  const entries = reply?.[0]?.[1] ?? [];
  if (entries.length === 0) continue;
  // 100 orders a call, all sent at once: Redis runs one while the next is on its way.
  const calls: Promise<unknown>[] = [];
  for (let start = 0; start < entries.length; start += 100) {
    const keys = ['payment-events', 'order-events'];
    const args: string[] = [GROUP];
    for (const [id, fields] of entries.slice(start, start + 100)) {
      const field = (name: string) => fields[fields.indexOf(name) + 1]!;
      keys.push(`payment-service:payment:${field('orderId')}`);
      // prettier-ignore
      args.push(id, field('orderId'), field('userId'), field('productId'), field('price'), randomUUID(),
        new Date().toISOString());
    }
    calls.push(
      (redis as unknown as { pay(n: number, ...args: string[]): Promise<unknown> }).pay(
        keys.length,
        ...keys,
        ...args,
      ),
    );
  }
  await Promise.all(calls);
}
