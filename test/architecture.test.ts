import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { services, streams } from '../services.ts';

/* The boundaries the house style draws, checked on the source itself. */

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SERVICES = services.map((service) => service.name);

function sourceFiles(pkg: string): string[] {
  const dir = join(root, 'packages', pkg, 'src');
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.ts'))
    .map((file) => join(dir, file));
}

const ALL = ['stream-kit', ...SERVICES].flatMap(sourceFiles);

/** The modules `text` imports or re-exports: `import ... from`, `export ... from`, `import '...'`, `import('...')`. */
function specifiers(text: string): string[] {
  return [
    ...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]/gm),
    ...text.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm),
    ...text.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => m[1]!);
}

function importsOf(file: string): string[] {
  return specifiers(readFileSync(file, 'utf8'));
}

/** Relative imports resolved to files; package imports as they are. */
function dependencies(file: string): string[] {
  return importsOf(file).map((spec) => (spec.startsWith('.') ? resolve(dirname(file), spec) : spec));
}

const name = (file: string) => relative(root, file);

describe('the registry (services.ts)', () => {
  it('lists every service package under packages/, and nothing else', () => {
    const packages = readdirSync(join(root, 'packages')).filter(
      (dir) => dir.endsWith('-service') && existsSync(join(root, 'packages', dir, 'package.json')),
    );

    expect([...SERVICES].sort()).toEqual(packages.sort());
  });

  it('gives each service the default port its config.ts gives it, and no two services one port', () => {
    const defaults = SERVICES.map((service) => {
      const config = readFileSync(join(root, 'packages', service, 'src', 'config.ts'), 'utf8');
      return Number(/\b(?:serviceEnv|consumerEnv)\((\d+)[,)]/.exec(config)?.[1]);
    });

    expect(defaults).toEqual(services.map((service) => service.port));
    expect(new Set(defaults).size).toBe(defaults.length);
  });

  it('names only streams of the event catalogue', () => {
    const catalogue = streams.map((stream) => stream.name);
    const named = services.flatMap((service) => [...service.publishes, ...service.consumes]);

    expect(named.filter((stream) => !catalogue.includes(stream))).toEqual([]);
  });
});

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

/*
 * The way harness code flows (house style 16a): tests -> scripts -> harness, and each of them to a
 * package only by its name, through an entry point of its package.json "exports". Product code
 * imports none of it.
 */

/** A source file: its path from the repository root, and its text. */
interface Source {
  path: string;
  text: string;
}

/** An import of `file`: as written, and for a relative one, the path it resolves to from the root. */
interface Import {
  file: string;
  spec: string;
  target: string | undefined;
}

/** A direction: the directories whose files it checks, and why an import of theirs breaks it. */
interface Rule {
  scans: string[];
  breaks(imported: Import): string | undefined;
}

const PACKAGES = readdirSync(join(root, 'packages')).filter((dir) =>
  existsSync(join(root, 'packages', dir, 'package.json')),
);

/** Each package's name and the entry points its package.json "exports" (`.`, `./events`, ...). */
const ENTRY_POINTS = new Map(
  PACKAGES.map((dir) => {
    const manifest = JSON.parse(readFileSync(join(root, 'packages', dir, 'package.json'), 'utf8')) as {
      name: string;
      exports?: Record<string, string>;
    };
    return [manifest.name, { exports: Object.keys(manifest.exports ?? {}) }];
  }),
);

/** Every .ts file under `dir` (from the root), at any depth; scratch files (`.name.ts`) aside. */
function sourcesUnder(dir: string): Source[] {
  if (!existsSync(join(root, dir))) return [];
  return readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.ts') && !file.split('/').some((part) => part.startsWith('.')))
    .map((file) => ({ path: `${dir}/${file}`, text: readFileSync(join(root, dir, file), 'utf8') }));
}

function importsIn({ path, text }: Source): Import[] {
  return specifiers(text).map((spec) => ({
    file: path,
    spec,
    target: spec.startsWith('.') ? relative(root, resolve(root, dirname(path), spec)) : undefined,
  }));
}

const within = (path: string | undefined, dir: string) =>
  path !== undefined && (path === dir || path.startsWith(`${dir}/`));
const packageDirOf = (path: string | undefined) =>
  (path && /^packages\/([^/]+)\//.exec(path)?.[1]) || undefined;
const inSrc = (path: string | undefined) => path !== undefined && /^packages\/[^/]+\/src\//.test(path);

/** The directories of the packages' own code and tests (those that exist). */
const packageDirs = (part: 'src' | 'test') =>
  PACKAGES.map((dir) => `packages/${dir}/${part}`).filter((dir) => existsSync(join(root, dir)));

const RULES = {
  harness: {
    scans: ['harness'],
    breaks: ({ target }) =>
      within(target, 'scripts') || within(target, 'test') || inSrc(target)
        ? 'harness/ imports only itself and packages by name'
        : undefined,
  },
  scripts: {
    scans: ['scripts'],
    breaks: ({ target }) => (within(target, 'test') ? 'scripts/ never import test/' : undefined),
  },
  product: {
    scans: packageDirs('src'),
    breaks: ({ target }) =>
      ['harness', 'scripts', 'test'].some((dir) => within(target, dir))
        ? 'product code never imports harness/, scripts/ or test/'
        : undefined,
  },
  packages: {
    scans: ['harness', 'scripts', 'test', ...packageDirs('src'), ...packageDirs('test')],
    breaks: ({ file, spec, target }) => {
      const owner = packageDirOf(target);
      if (owner && owner !== packageDirOf(file)) return `a path inside packages/${owner}/: import it by name`;
      const [, name, subpath] = /^(@[^/]+\/[^/]+|[^@/][^/]*)(\/.*)?$/.exec(spec) ?? [];
      const pkg = name ? ENTRY_POINTS.get(name) : undefined;
      if (pkg && !pkg.exports.includes(subpath ? `.${subpath}` : '.'))
        return `not an entry point of ${name}'s "exports" (${pkg.exports.join(', ')})`;
      return undefined;
    },
  },
} satisfies Record<string, Rule>;

/** What breaks `rule` among those of `sources` it checks (those in its directories). */
function offenders(rule: Rule, sources: Source[]): string[] {
  const checked = sources.filter((source) => rule.scans.some((dir) => within(source.path, dir)));
  return checked.flatMap((source) =>
    importsIn(source).flatMap((imported) => {
      const why = rule.breaks(imported);
      return why ? [`${imported.file} imports ${imported.spec}: ${why}`] : [];
    }),
  );
}

/** The files `rule` checks; each of its directories must hold some, or the rule checks nothing there. */
function scannedBy(rule: Rule): Source[] {
  const sources = rule.scans.map((dir) => ({ dir, files: sourcesUnder(dir) }));
  expect(sources.filter(({ files }) => files.length === 0).map(({ dir }) => dir)).toEqual([]);
  return sources.flatMap(({ files }) => files);
}

describe('the way harness code flows', () => {
  it("keeps harness/ free of scripts/, test/ and every package's src/", () => {
    const sources = scannedBy(RULES.harness);

    expect(offenders(RULES.harness, sources)).toEqual([]);
    expect(sources.map((source) => source.path)).toContain('harness/redis-server.ts');
  });

  it('keeps scripts/ free of test/', () => {
    const sources = scannedBy(RULES.scripts);

    expect(offenders(RULES.scripts, sources)).toEqual([]);
    expect(sources.map((source) => source.path)).toEqual(
      expect.arrayContaining(['scripts/dlq.ts', 'scripts/fault/run.ts', 'scripts/bench/main.ts']),
    );
  });

  it('keeps product code (packages/*/src) free of harness/, scripts/ and test/', () => {
    const sources = scannedBy(RULES.product);

    expect(offenders(RULES.product, sources)).toEqual([]);
    expect(RULES.product.scans).toHaveLength(PACKAGES.length);
  });

  it('reaches into no package from outside it: only its name, through an entry point of its "exports"', () => {
    const sources = scannedBy(RULES.packages);

    expect(offenders(RULES.packages, sources)).toEqual([]);
    expect(PACKAGES.length).toBeGreaterThanOrEqual(4);
  });

  const planted = [
    {
      rule: 'harness',
      what: 'harness/ importing scripts/',
      path: 'harness/planted.ts',
      text: "import { runFault } from '../scripts/fault/run.ts';",
    },
    {
      rule: 'harness',
      what: 'harness/ re-exporting from test/',
      path: 'harness/planted.ts',
      text: "export { setup } from '../test/support/global-setup.ts';",
    },
    {
      rule: 'harness',
      what: "harness/ importing a package's src/",
      path: 'harness/planted.ts',
      text: "import type { Fields } from '../packages/stream-kit/src/stream.ts';",
    },
    {
      rule: 'scripts',
      what: 'scripts/ importing test/ for its side effects',
      path: 'scripts/fault/planted.ts',
      text: "import '../../test/support/global-setup.ts';",
    },
    {
      rule: 'product',
      what: 'product code importing harness/ dynamically',
      path: 'packages/payment-service/src/planted.ts',
      text: "const { waitFor } = await import('../../../harness/wait.ts');",
    },
    {
      rule: 'product',
      what: 'product code importing scripts/',
      path: 'packages/stream-kit/src/planted.ts',
      text: "import { main } from '../../../scripts/dlq.ts';",
    },
    {
      rule: 'packages',
      what: "a root test importing a package's src/, over several lines",
      path: 'test/planted.ts',
      text: "import {\n  decode,\n} from '../packages/stream-kit/src/stream.ts';",
    },
    {
      rule: 'packages',
      what: "a package's test importing another package's src/",
      path: 'packages/order-service/test/planted.ts',
      text: "import { fieldsFromReply } from '../../stream-kit/src/stream.ts';",
    },
    {
      rule: 'packages',
      what: "a service importing another service's src/",
      path: 'packages/order-service/src/planted.ts',
      text: "import { paymentKey } from '../../payment-service/src/index.ts';",
    },
    {
      rule: 'packages',
      what: 'a script importing a subpath that is not in the package\'s "exports"',
      path: 'scripts/planted.ts',
      text: "import { decode } from '@msa/stream-kit/src/stream.ts';",
    },
  ] as const;
  for (const { rule, what, path, text } of planted) {
    it(`reports ${what} (the ${rule} rule)`, () => {
      expect(offenders(RULES[rule], [{ path, text }])).toHaveLength(1);
    });
  }

  it('lets through the imports that go the allowed way', () => {
    const allowed: Source[] = [
      { path: 'test/planted.ts', text: "import { runFault } from '../scripts/fault/run.ts';" },
      { path: 'scripts/planted.ts', text: "import { waitFor } from '../harness/wait.ts';" },
      {
        path: 'scripts/planted.ts',
        text: "import { openRequestConnection } from '@msa/stream-kit/service';",
      },
      { path: 'packages/order-service/test/planted.ts', text: "import { createApp } from '../src/app.ts';" },
      {
        path: 'packages/order-service/test/planted.ts',
        text: "import { a } from '../../../harness/net.ts';",
      },
      { path: 'harness/planted.ts', text: "import type { Fields } from '@msa/stream-kit';" },
    ];

    for (const rule of Object.values(RULES)) expect(offenders(rule, allowed)).toEqual([]);
  });
});
