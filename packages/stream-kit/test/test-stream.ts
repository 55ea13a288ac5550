import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { defineStream } from '../src/index.ts';

/** A fresh stream for one test, so tests never see each other's entries: `n` must be digits. */
export function testStream() {
  return defineStream({
    name: `test-${randomUUID()}`,
    schema: z.object({
      n: z.string().regex(/^\d+$/, 'must be digits').transform(Number),
      note: z.string().optional(),
    }),
  });
}
export type TestStream = ReturnType<typeof testStream>;
export type TestEvent = { n: number; note?: string | undefined };
