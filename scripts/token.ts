/**
 * `pnpm token <userId> [--scope <scope>]... [--ttl <seconds>]`: prints a token for `userId`, signed
 * with the development secret (AUTH_SECRET, or the one `pnpm dev` made), as the services take it
 * with AUTH_SECRET: `curl -H "authorization: Bearer $(pnpm -s token u1)" ...`. `--scope
 * orders:read-all` makes a support token, which reads any user's orders and notifications.
 * AUTH_ISSUER and AUTH_AUDIENCE, when set, go into it.
 */
import { parseArgs } from 'node:util';
import { signToken } from '@msa/stream-kit/service';
import { DEV_SECRET_FILE, devSecret } from './dev-secret.ts';

const USAGE = 'usage: pnpm token <userId> [--scope <scope>]... [--ttl <seconds>]';

function fail(message: string): never {
  process.stderr.write(`pnpm token: ${message}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: { scope: { type: 'string', multiple: true }, ttl: { type: 'string', default: '3600' } },
  });
} catch (err) {
  fail(`${(err as Error).message}\n${USAGE}`);
}
const [userId, ...rest] = args.positionals;
if (userId === undefined || rest.length > 0) fail(USAGE);
if (userId.trim() !== userId || userId.length === 0 || userId.length > 128)
  fail('the user id must be 1 to 128 characters, without spaces around it');
const ttlS = Number(args.values.ttl);
if (!Number.isInteger(ttlS) || ttlS < 1) fail('--ttl must be a whole number of seconds, 1 or more');
const secret = devSecret(process.env, { create: false });
if (secret === undefined)
  fail(`no development secret: run \`pnpm dev\` once (it makes ${DEV_SECRET_FILE}), or set AUTH_SECRET`);
const token = await signToken(secret, {
  userId,
  scopes: args.values.scope ?? [],
  ttlS,
  issuer: process.env.AUTH_ISSUER || undefined,
  audience: process.env.AUTH_AUDIENCE || undefined,
});
process.stdout.write(`${token}\n`);
