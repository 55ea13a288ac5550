import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * The development secret: `pnpm dev` signs nothing, but starts the services with AUTH_SECRET set
 * to it, and `pnpm token` signs tokens with it. Made once per clone and kept (git ignores it), so
 * a token stays good across restarts of `pnpm dev`. Never for production: there, tokens come from
 * an identity provider (AUTH_JWKS_URL).
 */

/** Where it is kept: `.dev/auth-secret` at the repository's root. */
export const DEV_SECRET_FILE = join(dirname(fileURLToPath(import.meta.url)), '..', '.dev', 'auth-secret');

/** AUTH_SECRET if set, else the file's secret; made now if there is none and `create`. */
export function devSecret(env: NodeJS.ProcessEnv, { create }: { create: boolean }): string | undefined {
  if (env.AUTH_SECRET) return env.AUTH_SECRET;
  const read = () => {
    try {
      return readFileSync(DEV_SECRET_FILE, 'utf8').trim() || undefined;
    } catch {
      return undefined;
    }
  };
  const known = read();
  if (known !== undefined || !create) return known;
  mkdirSync(dirname(DEV_SECRET_FILE), { recursive: true });
  // Written whole to a file of its own, then linked into place: two sessions starting at once
  // keep one secret, the first linked, and neither reads a file half written.
  const draft = `${DEV_SECRET_FILE}.${process.pid}`;
  writeFileSync(draft, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600 });
  try {
    linkSync(draft, DEV_SECRET_FILE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    rmSync(draft, { force: true });
  }
  const secret = read();
  if (secret === undefined)
    throw new Error(`${DEV_SECRET_FILE} is empty: delete it, and pnpm dev makes another`);
  return secret;
}
