import { describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import type { DeliveryContext } from '../../src/index.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * The shipped settings, not shortened ones: a handler that runs three times the default
 * claimIdleMs (60 s), beside a second consumer that runs its reclaim passes and its checks for
 * dead consumers all along. A file of its own, so that its three minutes run beside the others.
 */

const suite = contractSuite();
const { startAtDefaults, groupCreated, pendingCount } = suite;

/** `subscribe()`'s default `claimIdleMs`, as README's table gives it. */
const DEFAULT_CLAIM_IDLE_MS = 60_000;
const HANDLER_MS = 3 * DEFAULT_CLAIM_IDLE_MS + 500;

describe('when a handler runs three times the default claimIdleMs, at the shipped settings', () => {
  it(
    'keeps its lease and its liveness mark the whole time: no other consumer starts the entry, and it is acked once',
    async () => {
      const stream = testStream();
      const starts: [n: number, consumer: string, run: number][] = [];
      const stillHeldAtTheEnd: boolean[] = [];
      const handler = (consumer: string) => async (event: { n: number }, context: DeliveryContext) => {
        starts.push([event.n, consumer, context.deliveryCount]);
        await new Promise((resolve) => setTimeout(resolve, HANDLER_MS));
        stillHeldAtTheEnd.push(context.stillHeld());
      };
      startAtDefaults(stream, handler('a'), { consumer: 'a' });
      startAtDefaults(stream, handler('b'), { consumer: 'b' });
      await groupCreated(stream);

      await suite.publisher.publish(stream, { n: 1 });

      await waitFor(async () => starts.length > 0 && (await pendingCount(stream)) === 0, {
        what: 'the slow entry acked',
        timeoutMs: HANDLER_MS + 20_000,
        intervalMs: 500,
      });
      await settle();
      expect({ starts, stillHeldAtTheEnd }).toEqual({
        starts: [[1, expect.any(String), 1]],
        stillHeldAtTheEnd: [true],
      });
    },
    HANDLER_MS + 60_000,
  );
});
