import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { startRedisServer } from '../../harness/redis-server.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A redis-server started for this test run alone; tests use unique stream names on it. */
    redisUrl: string;
  }
}

export default async function setup(project: TestProject) {
  const redis = await startRedisServer();
  project.provide('redisUrl', redis.url);
  return () => redis.stop();
}
