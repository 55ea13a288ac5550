import { defaultConsumerName } from '@msa/stream-kit';
import { z } from 'zod';

const Config = z.object({
  PORT: z.coerce.number().int().min(0).max(65_535).default(8082),
  REDIS_URL: z.url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' }).default('redis://127.0.0.1:6379'),
  LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  /** This instance's name in the consumer group; must differ between running instances. */
  CONSUMER_NAME: z.string().trim().min(1).default(defaultConsumerName),
});
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; the error names each bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const result = Config.safeParse(env);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
  throw new Error(`invalid environment: ${problems.join('; ')}`);
}
