import { subscribe } from '@msa/stream-kit';
import { defineScript } from '@msa/stream-kit/lua';
import { openRequestConnection } from '@msa/stream-kit/service';
import { pino } from 'pino';
import { APPLY, lastSeqKey, LEDGER_GROUP, ledgerStream, violationsKey } from './partitions.ts';

/*
 * A consumer of the ledger (see partitions.ts), as a process: subscribes as CONSUMER to STREAM
 * (PARTITIONS partitions) on REDIS_URL (a cluster with REDIS_CLUSTER=true) at the shipped settings,
 * and applies each entry with its ack in one script. SIGTERM closes it; SIGKILL is what the tests
 * send to see a consumer die.
 */

const env = process.env;
const logger = pino({ level: env.LOG_LEVEL ?? 'info' });
const stream = ledgerStream(env.STREAM!, Number(env.PARTITIONS));
const workMs = Number(env.WORK_MS ?? 0);
const redis = openRequestConnection(env.REDIS_URL!, logger, 'ledger', {
  cluster: env.REDIS_CLUSTER === 'true',
});
const apply = defineScript<unknown>(redis, 'ledgerApply', 3, APPLY);
const subscription = subscribe(
  LEDGER_GROUP,
  env.CONSUMER!,
  stream,
  async (event, { stream: partition, group, id }) => {
    if (workMs > 0) await new Promise((resolve) => setTimeout(resolve, workMs));
    // prettier-ignore
    await apply(partition, lastSeqKey(partition), violationsKey(partition), group, id, event.key, event.seq);
  },
  { connection: redis, logger, handlerAcks: true },
);
logger.info({ consumer: env.CONSUMER }, 'ledger consumer started');
process.once('SIGTERM', () => {
  void subscription.close().then(() => {
    redis.disconnect();
    process.exit(0);
  });
});
