/**
 * `pnpm orders:rebuild`: rebuilds the order read model from the streams into a new generation,
 * compares it with the live one, and makes it live (see rebuild.ts). Reads order-service's
 * environment (`REDIS_URL`, `PAYMENT_TIMEOUT_MS`, `LOG_LEVEL`); `--no-switch` builds and compares
 * without switching, `--force` switches though orders differ. Exit codes: 0 done, 1 Redis failed,
 * the rebuild did, or orders differ and it did not switch; 2 called wrong.
 */
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { logOptions, openRequestConnection } from '@msa/stream-kit/service';
import { pino } from 'pino';
import { loadRebuildConfig } from './config.ts';
import { rebuildReadModel } from './rebuild.ts';

const USAGE = `usage: pnpm orders:rebuild [--no-switch] [--force]
  --no-switch   build and compare the new generation, but leave the live one live
  --force       make it live even if orders differ from the live generation's (after a change to
                the projection); without it a rebuild whose orders differ is not switched to`;

let values;
let config;
try {
  ({ values } = parseArgs({
    options: {
      'no-switch': { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  }));
  config = loadRebuildConfig(process.env);
} catch (err) {
  console.error(`pnpm orders:rebuild: ${(err as Error).message}\n${USAGE}`);
  process.exit(2);
}
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}

// Progress goes to stderr as log lines; the result, on stdout, is for people and scripts.
const logger = pino(logOptions('order-service-rebuild', config), process.stderr);
// Commands fail after 2 s rather than hang; the replay's readers copy its settings, with their own timeouts.
const redis = openRequestConnection(
  config.REDIS_URL,
  logger.child({ component: 'redis' }),
  'order-service-rebuild',
  {
    cluster: config.REDIS_CLUSTER,
  },
);
try {
  const rebuilt = await rebuildReadModel({
    redis,
    logger,
    paymentTimeoutMs: config.PAYMENT_TIMEOUT_MS,
    consumer: `rebuild-${hostname()}-${process.pid}`,
    concurrency: config.CONCURRENCY,
    switchTo: !values['no-switch'],
    force: values.force,
  });
  const { model, previous, differing, changedSince } = rebuilt;
  for (const [stream, { until, handled }] of Object.entries(rebuilt.replayed))
    console.log(`${stream}: replayed up to ${until ?? '(empty)'}, ${handled} entries handled`);
  console.log(
    `generation ${model.generation}: ${rebuilt.orderIds.size} orders rebuilt, ${differing.length} of them differ from generation ${previous.generation} (live)` +
      (changedSince.length > 0 ? `, ${changedSince.length} more changed since the replay's end` : ''),
  );
  for (const orderId of differing.slice(0, 10)) console.log(`  differs: ${orderId}`);
  if (rebuilt.since > 0)
    console.log(
      `orders placed before ${new Date(rebuilt.since).toISOString()} are left out: payment-events holds nothing older`,
    );
  if (rebuilt.deadLetters > 0)
    console.log(`${rebuilt.deadLetters} entries dead-lettered by the replay, in ${rebuilt.deadLetterStream}`);
  if (rebuilt.switched)
    console.log(
      `generation ${model.generation} is live: order-service instances serve it once restarted; until then they serve generation ${previous.generation}, which they keep up to date`,
    );
  else {
    console.log(
      values['no-switch']
        ? `generation ${previous.generation} stays live (--no-switch)`
        : `generation ${previous.generation} stays live: orders differ (--force makes generation ${model.generation} live anyway)`,
    );
    if (!values['no-switch']) process.exitCode = 1;
  }
} catch (err) {
  console.error(`pnpm orders:rebuild: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  redis.disconnect();
}
