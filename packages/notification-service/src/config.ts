import { ConsumerName, parseEnv, serviceEnv } from '@msa/stream-kit/service';
import type { z } from 'zod';

const Config = serviceEnv(8082).extend({ CONSUMER_NAME: ConsumerName });
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; throws naming each bad variable. */
export const loadConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Config, env);
