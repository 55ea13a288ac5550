/**
 * Hop 3 of the bare chain (chain.ts): reads `order-events` and `payment-events` in group
 * `notification-service-group` (one XREADGROUP for both) and, per entry, appends a JSON record to
 * the user's sent log and sets the notification's marker, as notification-service records a sent
 * mail or SMS, then XACKs each stream's batch, all in one pipeline. Plain ioredis, none of
 * notification-service's guarantees (no lease before the send, no send-once check, no schema
 * check, no retries, no logs). The groups are made by chain.ts before this starts. Reads
 * `REDIS_URL`; SIGTERM ends it at once.
 */
import { Redis } from 'ioredis';

const GROUP = 'notification-service-group';
/** notification-service's REMEMBER_SENT_MS: 30 days. */
const REMEMBER_MS = 30 * 24 * 60 * 60 * 1000;
const redis = new Redis(process.env.REDIS_URL!);

for (;;) {
  // prettier-ignore
  const reply = (await redis.xreadgroup(
    'GROUP', GROUP, `bare-${process.pid}`, 'COUNT', 500, 'BLOCK', 1_000,
    'STREAMS', 'order-events', 'payment-events', '>', '>',
  )) as [string, [string, string[]][]][] | null;
  if (!reply) continue;
  const pipeline = redis.pipeline();
  for (const [stream, entries] of reply) {
    if (entries.length === 0) continue;
    const channel = stream === 'order-events' ? 'mail' : 'sms';
    for (const [entryId, fields] of entries) {
      const field = (name: string) => fields[fields.indexOf(name) + 1]!;
      const orderId = field('orderId');
      // notification-service's record and key names, so that the writes are of the same size.
      const record = { channel, event: field('type'), orderId, entryId, time: new Date().toISOString() };
      pipeline.rpush(`notification-service:sent:${field('userId')}`, JSON.stringify(record));
      pipeline.set(`notification-service:once:${channel}:${orderId}`, 'sent', 'PX', REMEMBER_MS);
    }
    pipeline.xack(stream, GROUP, ...entries.map(([id]) => id));
  }
  await pipeline.exec();
}
