/**
 * `pnpm dlq list <stream>` and `pnpm dlq replay <stream> <dead-letter-id>... | --all`: the
 * dead letters of one of the services' streams, for operators. Uses `REDIS_URL` (default
 * `redis://127.0.0.1:6379`). Replay puts an entry back on its stream once its cause is fixed.
 */
import { parseArgs } from 'node:util';
import { listDeadLetters, replayDeadLetters, type StreamDefinition } from '@msa/stream-kit';
import { streams } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';

/** Every stream of the catalogue, by name. */
const STREAMS = new Map<string, StreamDefinition>(streams.map((stream) => [stream.name, stream]));
const USAGE = `usage: pnpm dlq list <stream> | pnpm dlq replay <stream> <dead-letter-id>... | --all
streams: ${[...STREAMS.keys()].join(', ')}`;

const { values, positionals } = parseArgs({ allowPositionals: true, options: { all: { type: 'boolean' } } });
const [command, name, ...ids] = positionals;
const stream = STREAMS.get(name ?? '');
if (
  !stream ||
  (command !== 'list' && command !== 'replay') ||
  (command === 'replay' && !values.all && !ids.length)
) {
  console.error(USAGE);
  process.exit(2);
}

const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
// Errors are reported by their message alone: ioredis attaches the failed command, and for AUTH
// its arguments are the password.
redis.on('error', () => {});
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
} catch (err) {
  console.error(`pnpm dlq: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  redis.disconnect();
}
