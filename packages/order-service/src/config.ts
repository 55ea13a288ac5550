import { consumerEnv, parseEnv } from '@msa/stream-kit/service';
import { z } from 'zod';

/** `PAYMENT_TIMEOUT_MS` unless set: 30 s. */
export const DEFAULT_PAYMENT_TIMEOUT_MS = 30_000;

// A consumer too: the order read model is a projection of order-events and payment-events.
const Config = consumerEnv(8080).extend({
  /**
   * How long after it was placed an order still unpaid is cancelled (reason payment-timeout). Well
   * above the worst takeover time of a crashed payment-service instance (about 3 s, at most
   * `CLAIM_IDLE_MS` for consumers that keep no liveness mark), so that a crash alone never cancels.
   */
  PAYMENT_TIMEOUT_MS: z.coerce.number().int().min(1_000).default(DEFAULT_PAYMENT_TIMEOUT_MS),
  /**
   * How many replicas must hold an order before `POST /orders` answers 202 (`WAIT`): then a 202
   * survives the loss of the order's master. 0, the default: the master's acknowledgement is
   * enough (see README, Redis Cluster).
   */
  DURABLE_REPLICAS: z.coerce.number().int().min(0).max(16).default(0),
  /**
   * How long `POST /orders` waits for those replicas before it answers 503 (the order is written:
   * retry with its key). Below the 2 s a request connection gives a command, the WAIT's included.
   */
  DURABLE_TIMEOUT_MS: z.coerce.number().int().min(1).max(1_500).default(1_000),
});
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; throws naming each bad variable. */
export const loadConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Config, env);
