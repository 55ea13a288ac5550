import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/* The boundaries the house style draws, checked on the source itself. */

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SERVICES = ['order-service', 'payment-service', 'notification-service'];

function sourceFiles(pkg: string): string[] {
  const dir = join(root, 'packages', pkg, 'src');
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.ts'))
    .map((file) => join(dir, file));
}

const ALL = ['stream-kit', ...SERVICES].flatMap(sourceFiles);

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]!);
}

/** Relative imports resolved to files; package imports as they are. */
function dependencies(file: string): string[] {
  return importsOf(file).map((spec) => (spec.startsWith('.') ? resolve(dirname(file), spec) : spec));
}

const name = (file: string) => relative(root, file);

describe('the source', () => {
  it('has no circular imports', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    const visit = (file: string, path: string[]) => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'visiting') {
        cycles.push([...path.slice(path.indexOf(file)), file].map(name).join(' -> '));
        return;
      }
      state.set(file, 'visiting');
      for (const dep of dependencies(file).filter((d) => d.startsWith('/'))) visit(dep, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of ALL) visit(file, []);

    expect(cycles).toEqual([]);
  });

  it("keeps stream-kit's generic code free of the event catalogue", () => {
    const generic = sourceFiles('stream-kit').filter((file) => !/\/(events|index)\.ts$/.test(file));
    const offenders = generic.filter((file) => dependencies(file).some((dep) => dep.endsWith('/events.ts')));

    expect(offenders.map(name)).toEqual([]);
    expect(generic.length).toBeGreaterThan(4);
  });

  it('lets no service import another: they talk only through Redis Streams', () => {
    const offenders = SERVICES.flatMap((service) =>
      sourceFiles(service).flatMap((file) =>
        importsOf(file)
          .filter((spec) => SERVICES.some((other) => other !== service && spec.includes(other)))
          .map((spec) => `${name(file)} imports ${spec}`),
      ),
    );

    expect(offenders).toEqual([]);
  });

  it('leaves signals and exiting to the services: stream-kit never touches process.on or process.exit', () => {
    const offenders = sourceFiles('stream-kit').filter((file) =>
      /process\.(on|once|exit)\(/.test(readFileSync(file, 'utf8')),
    );

    expect(offenders.map(name)).toEqual([]);
  });
});
