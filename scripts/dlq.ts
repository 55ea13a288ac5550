/**
 * `pnpm dlq`: the dead letters of the catalogue's streams, for operators. `list` prints them as
 * JSON lines, `replay` puts their entries back on the stream once the cause is fixed, `drop`
 * deletes those that can never succeed. Uses `REDIS_URL` (default `redis://127.0.0.1:6379`) and
 * `REDIS_CLUSTER`.
 * Exit codes: 0 done, 1 a dead letter named was not there or Redis failed, 2 called wrong.
 */
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import {
  dropDeadLetters,
  listDeadLetters,
  replayDeadLetters,
  type DeadLetter,
  type StreamDefinition,
} from '@msa/stream-kit';
import { openRequestConnection, parseEnv, redisEnv } from '@msa/stream-kit/service';
import { z } from 'zod';
import { streams } from '../services.ts';

/** Every stream of the catalogue (as the registry lists them), by name. */
const STREAMS = new Map<string, StreamDefinition>(streams.map((stream) => [stream.name, stream]));
const USAGE = `usage: pnpm dlq list <stream>
       pnpm dlq replay <stream> <dead-letter-id>... | --all
       pnpm dlq drop <stream> <dead-letter-id>... | --all [--yes]
streams: ${[...STREAMS.keys()].join(', ')}
drop deletes dead letters for good; it asks first unless --yes is given.`;

function calledWrong(problem: string): never {
  console.error(`pnpm dlq: ${problem}\n${USAGE}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      all: { type: 'boolean' },
      yes: { type: 'boolean', short: 'y' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (err) {
  // Node's hint on positionals that start with '-' means nothing here: a stream name never does.
  calledWrong((err as Error).message.replace(/\. To specify a positional argument[\s\S]*$/, ''));
}
const { values, positionals } = parsed;
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const [command, name, ...ids] = positionals;
if (command !== 'list' && command !== 'replay' && command !== 'drop')
  calledWrong(command ? `unknown command "${command}"` : 'no command given');
const stream = STREAMS.get(name ?? '');
if (!stream) calledWrong(name ? `"${name}" is not a stream of the catalogue` : 'no stream given');
if (command !== 'list' && !values.all && ids.length === 0)
  calledWrong(`${command} needs dead-letter IDs or --all`);
if (command !== 'list' && values.all && ids.length > 0)
  calledWrong('give dead-letter IDs or --all, not both');

let env;
try {
  env = parseEnv(z.object(redisEnv), process.env);
} catch (err) {
  calledWrong((err as Error).message);
}
// Errors are reported by their message alone (a silent logger): ioredis attaches the failed
// command, and for AUTH its arguments are the password.
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const redis = openRequestConnection(env.REDIS_URL, quiet, 'dlq', { cluster: env.REDIS_CLUSTER });

async function all(): Promise<DeadLetter[]> {
  const letters = [];
  for (let page = await listDeadLetters(redis, stream!); page.length > 0;) {
    letters.push(...page);
    page = await listDeadLetters(redis, stream!, { after: page.at(-1)!.id });
  }
  return letters;
}

/**
 * A dead letter that was not there to replay or drop. Named by ID, that is an error (exit 1). With
 * --all it was listed a moment ago and another operator's replay or drop took it since: what
 * --all asked for is done, so it is only told.
 */
function gone(id: string, hint: string) {
  if (values.all) {
    console.error(`${id} gone since it was listed (another replay or drop took it)`);
    return;
  }
  console.error(`${id} not found in ${stream!.name}'s dead letters${hint ? ` ${hint}` : ''}`);
  process.exitCode = 1;
}

/** Asks on a terminal; refuses (exit 2) without one, where nobody could answer. */
async function confirmed(question: string): Promise<boolean> {
  if (values.yes) return true;
  if (!process.stdin.isTTY) calledWrong('drop asks before deleting; pass --yes when no one is at a terminal');
  const terminal = createInterface({ input: process.stdin, output: process.stdout });
  try {
    return /^y(es)?$/i.test((await terminal.question(`${question} [y/N] `)).trim());
  } finally {
    terminal.close();
  }
}

try {
  const letters = command === 'list' || values.all ? await all() : undefined;
  const targets = letters?.map((letter) => letter.id) ?? ids;
  if (targets.length === 0) {
    // On stderr: stdout stays JSON lines (or nothing) for whatever reads it.
    console.error(`no dead letters in ${stream.name}`);
  } else if (command === 'list') {
    for (const letter of letters!) console.log(JSON.stringify(letter));
  } else if (command === 'replay') {
    for (const { id, entryId } of await replayDeadLetters(redis, stream, targets)) {
      if (entryId) console.log(`${id} replayed as ${stream.name} ${entryId}`);
      else gone(id, '(already replayed or dropped?)');
    }
  } else if (await confirmed(`drop ${targets.length} dead letter(s) of ${stream.name} for good?`)) {
    for (const { id, dropped } of await dropDeadLetters(redis, stream, targets)) {
      if (dropped) console.log(`${id} dropped`);
      else gone(id, '');
    }
  } else {
    console.error('nothing dropped');
    process.exitCode = 1;
  }
} catch (err) {
  console.error(`pnpm dlq: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  redis.disconnect();
}
