/**
 * `pnpm build [--outdir <dir>]`: bundles each service (every `packages/*-service` with a
 * `src/main.ts`) into one self-contained ESM file, `<outdir>/<service>.mjs` (default `dist/`), with
 * its source map beside it. A bundle holds the service's code, stream-kit and every npm package it
 * imports, so `node --enable-source-maps dist/order-service.mjs` runs it with no node_modules at all:
 * this is what the production image (Dockerfile) ships. A new service is bundled without any edit
 * here. Exit codes: 0 built, 1 the build failed, 2 called wrong.
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const USAGE = `usage: pnpm build [--outdir <dir>]
  --outdir <dir>   where the bundles go (default: dist); earlier .mjs and .mjs.map files there are
                   removed first`;

function calledWrong(problem: string): never {
  console.error(`pnpm build: ${problem}\n${USAGE}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      outdir: { type: 'string', default: 'dist' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  calledWrong((err as Error).message);
}
const { values } = parsed;
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
if (values.outdir === '') calledWrong('--outdir must name a directory');
const outdir = resolve(values.outdir);

/** Every service of the workspace, by directory name: the bundle is named after it. */
const services = readdirSync(join(ROOT, 'packages'), { withFileTypes: true })
  .filter((entry) => entry.isDirectory() && entry.name.endsWith('-service'))
  .map((entry) => entry.name)
  .sort();
const missing = services.filter((name) => !existsSync(join(ROOT, 'packages', name, 'src/main.ts')));
if (services.length === 0 || missing.length > 0) {
  console.error(
    services.length === 0
      ? 'pnpm build: no packages/*-service directory found'
      : `pnpm build: no src/main.ts in ${missing.map((name) => `packages/${name}`).join(', ')}`,
  );
  process.exit(1);
}

/**
 * A service's bundles: `<service>` from src/main.ts, and `<service>-<command>` from each
 * src/main-<command>.ts, its operator commands (order-service's `rebuild`), so the image runs them too.
 */
function entryPointsOf(name: string): [string, string][] {
  const commands = readdirSync(join(ROOT, 'packages', name, 'src'))
    .map((file) => /^main-([a-z-]+)\.ts$/.exec(file)?.[1])
    .filter((command) => command !== undefined);
  return [
    [name, `packages/${name}/src/main.ts`],
    ...commands.map((command): [string, string] => [
      `${name}-${command}`,
      `packages/${name}/src/main-${command}.ts`,
    ]),
  ];
}

// A bundle of a removed or renamed service must not linger next to the fresh ones.
if (existsSync(outdir)) {
  for (const file of readdirSync(outdir)) {
    if (/\.mjs(\.map)?$/.test(file)) rmSync(join(outdir, file));
  }
}

try {
  await build({
    absWorkingDir: ROOT,
    entryPoints: Object.fromEntries(services.flatMap(entryPointsOf)),
    outdir,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    // CommonJS packages (express, ioredis, pino) `require` Node's built-ins, which an ES module
    // cannot do: esbuild's require shim uses this `require` when there is one. The alias keeps the
    // name clear of any `createRequire` the bundled code imports itself.
    banner: {
      js: "import { createRequire as __bundleCreateRequire } from 'node:module'; const require = __bundleCreateRequire(import.meta.url);",
    },
    // Not minified: a stack trace keeps its function names even without the map, and the code in
    // the image reads as written. The map (without the sources' text, which the image does not need)
    // turns traces into .ts lines under `node --enable-source-maps`, as tsx did before.
    sourcemap: 'linked',
    sourcesContent: false,
    logLevel: 'warning',
  });
} catch {
  // esbuild has already printed what is wrong.
  console.error('pnpm build: the build failed');
  process.exit(1);
}

for (const name of services) {
  const bundle = join(outdir, `${name}.mjs`);
  const megabytes = (statSync(bundle).size / 1e6).toFixed(1);
  console.log(`${relative(process.cwd(), bundle)}  ${megabytes} MB`);
}
