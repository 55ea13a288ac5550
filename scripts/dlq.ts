/**
 * `pnpm dlq list <stream>` and `pnpm dlq replay <stream> <dead-letter-id>... | --all`: the
 * dead letters of one of the services' streams, for operators. Uses `REDIS_URL` (default
 * `redis://127.0.0.1:6379`). Replay puts an entry back on its stream once its cause is fixed.
 */
import { parseArgs } from 'node:util';
import {
  listDeadLetters,
  OrderEvents,
  PaymentEvents,
  replayDeadLetters,
} from '../packages/stream-kit/src/index.ts';
import { Redis } from 'ioredis';

const STREAMS = { [OrderEvents.name]: OrderEvents, [PaymentEvents.name]: PaymentEvents };
const USAGE = `usage: pnpm dlq list <stream> | pnpm dlq replay <stream> <dead-letter-id>... | --all
streams: ${Object.keys(STREAMS).join(', ')}`;

const { values, positionals } = parseArgs({ allowPositionals: true, options: { all: { type: 'boolean' } } });
const [command, name, ...ids] = positionals;
const stream = STREAMS[name ?? ''];
if (
  !stream ||
  (command !== 'list' && command !== 'replay') ||
  (command === 'replay' && !values.all && !ids.length)
) {
  console.error(USAGE);
  process.exit(2);
}

const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
try {
  const all = async () => {
    const letters = [];
    for (let page = await listDeadLetters(redis, stream); page.length > 0;) {
      letters.push(...page);
      page = await listDeadLetters(redis, stream, { after: page.at(-1)!.id });
    }
    return letters;
  };
  if (command === 'list') {
    for (const letter of await all()) console.log(JSON.stringify(letter));
  } else {
    const targets = values.all ? (await all()).map((letter) => letter.id) : ids;
    for (const { id, entryId } of await replayDeadLetters(redis, stream, targets)) {
      console.log(
        entryId ? `${id} replayed as ${stream.name} ${entryId}` : `${id} not found (already replayed?)`,
      );
    }
  }
} finally {
  redis.disconnect();
}
