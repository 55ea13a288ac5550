import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
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
  try {
    // `wx`: two sessions starting at once keep one secret, the first one written.
    writeFileSync(DEV_SECRET_FILE, `${randomBytes(32).toString('base64url')}\n`, { flag: 'wx', mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  return read();
}
