import { authEnv, checkAuthEnv, consumerEnv, internalEnv, parseEnv } from '@msa/stream-kit/service';
import type { z } from 'zod';

/**
 * Each handler may call a mail or SMS provider: 64 calls at once per subscription, not the 400 of
 * a service whose effects are Redis scripts alone. Its records still go out many to a call.
 */
export const DEFAULT_CONCURRENCY = 64;

// Who may call GET /notifications (see README, Security).
const Config = consumerEnv(8082, { concurrency: DEFAULT_CONCURRENCY })
  .extend({ ...authEnv, ...internalEnv })
  .superRefine(checkAuthEnv);
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; throws naming each bad variable. */
export const loadConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Config, env);
