import { consumerEnv, parseEnv } from '@msa/stream-kit/service';
import { z } from 'zod';

const Config = consumerEnv(8081).extend({
  /** An order whose price is above it is declined (`payment-failed`, reason `limit-exceeded`). */
  PAYMENT_LIMIT: z.coerce.number().positive().default(1_000_000),
});
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; throws naming each bad variable. */
export const loadConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Config, env);
