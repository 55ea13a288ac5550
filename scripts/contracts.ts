/**
 * `pnpm contracts [--check]`: writes the HTTP routes' OpenAPI document and the streams' AsyncAPI
 * document to docs/contracts/, from the zod schemas the code validates with (each service's
 * `routes`, the event catalogue) and the registry (services.ts: who publishes and consumes what).
 * `--check` writes nothing: it exits 1 if a committed document differs from what would be written,
 * or if the current schemas refuse an entry of the corpus (docs/contracts/corpus.json) that an
 * earlier one accepted (see scripts/contracts/compatibility.ts). Exit 2: called wrong.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { routes as orderRoutes } from '@msa/order-service';
import { routes as notificationRoutes } from '@msa/notification-service';
import { chassisRoutes } from '@msa/stream-kit/service';
import { groupOf, services, streams } from '../services.ts';
import { asyncApiDocument, eventTypes } from './contracts/asyncapi.ts';
import { compatibilityProblems, uncoveredTypes, type CorpusEntry } from './contracts/compatibility.ts';
import { openApiDocument } from './contracts/openapi.ts';

const DIR = fileURLToPath(new URL('../docs/contracts/', import.meta.url));
const USAGE = 'usage: pnpm contracts [--check]';

/** Each service's routes; one without routes of its own has the chassis's. */
const ROUTES: Record<string, typeof chassisRoutes> = {
  'order-service': orderRoutes,
  'notification-service': notificationRoutes,
};

/** The documents as `pnpm contracts` writes them, by file name. */
export function contractDocuments(): Record<string, string> {
  const http = services.map(({ name, port }) => ({ name, port, routes: ROUTES[name] ?? chassisRoutes }));
  const text = (document: object) => `${JSON.stringify(document, null, 2)}\n`;
  return {
    'openapi.json': text(openApiDocument(http)),
    'asyncapi.json': text(asyncApiDocument(streams, services, groupOf)),
  };
}

/** What the corpus says of the current schemas: entries they refuse, event types it lacks. */
export function corpusProblems(corpus: readonly CorpusEntry[] = readCorpus()): string[] {
  const types = streams.flatMap((stream) =>
    eventTypes(stream).map(({ type }) => ({ stream: stream.name, type })),
  );
  return [
    ...compatibilityProblems(streams, corpus),
    ...uncoveredTypes(types, streams, corpus).map((type) => `${type}: no entry of the corpus stands for it`),
  ];
}

export function readCorpus(): CorpusEntry[] {
  return JSON.parse(readFileSync(`${DIR}corpus.json`, 'utf8')) as CorpusEntry[];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  let check = false;
  try {
    check = parseArgs({ options: { check: { type: 'boolean', default: false } } }).values.check;
  } catch (err) {
    console.error(`pnpm contracts: ${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  const documents = contractDocuments();
  const problems = corpusProblems();
  for (const [name, text] of Object.entries(documents)) {
    if (!check) writeFileSync(`${DIR}${name}`, text);
    else if (readFileSync(`${DIR}${name}`, 'utf8') !== text)
      problems.push(`docs/contracts/${name} is not what the schemas give: run pnpm contracts`);
  }
  for (const problem of problems) console.error(problem);
  if (!check)
    console.log(
      `wrote ${Object.keys(documents)
        .map((name) => `docs/contracts/${name}`)
        .join(', ')}`,
    );
  process.exit(problems.length > 0 ? 1 : 0);
}
