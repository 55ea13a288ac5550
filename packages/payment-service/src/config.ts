import { consumerEnv, parseEnv } from '@msa/stream-kit/service';
import type { z } from 'zod';

const Config = consumerEnv(8081);
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; throws naming each bad variable. */
export const loadConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Config, env);
