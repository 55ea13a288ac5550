import { authEnv, checkAuthEnv, consumerEnv, internalEnv, parseEnv } from '@msa/stream-kit/service';
import ipaddr from 'ipaddr.js';
import { z } from 'zod';

/** `PAYMENT_TIMEOUT_MS` unless set: 30 s. */
export const DEFAULT_PAYMENT_TIMEOUT_MS = 30_000;

/** The rate limits of orders unless set: per window of a minute, 30 per user and 300 per client address. */
export const DEFAULT_RATE_LIMITS = { perUser: 30, perAddress: 300, windowS: 60 };

/** A whole number, 0 included; an empty variable is an error rather than 0 (which means no limit). */
const count = z
  .string()
  .regex(/^\d{1,9}$/, 'must be a whole number (0: no limit)')
  .transform(Number);

/** What Express's `trust proxy` takes as one of its proxies: an address, a subnet, or a name of some. */
const isProxy = (part: string) =>
  ['loopback', 'linklocal', 'uniquelocal'].includes(part) ||
  ipaddr.isValid(part) ||
  (/\/\d{1,3}$/.test(part) && ipaddr.isValidCIDR(part));

// A consumer too: the order read model is a projection of order-events and payment-events.
const Settings = consumerEnv(8080).extend({
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
  // Who may call the customer-facing routes (see README, Security).
  ...authEnv,
  ...internalEnv,
  /** Orders a user may place per window; 0: no limit. */
  RATE_LIMIT_PER_USER: count.default(DEFAULT_RATE_LIMITS.perUser),
  /** Orders a client address (an IPv6 /64) may place per window, whoever its users; 0: no limit. */
  RATE_LIMIT_PER_ADDRESS: count.default(DEFAULT_RATE_LIMITS.perAddress),
  /** The window, in seconds: the counts start again after it. */
  RATE_LIMIT_WINDOW_S: z.coerce.number().int().min(1).max(86_400).default(DEFAULT_RATE_LIMITS.windowS),
  /**
   * Express's `trust proxy`: which proxies' `X-Forwarded-For` names the client (the per-address
   * limit counts it). Unset: none, the connection's address is the client. A number of hops, or
   * addresses and subnets (`loopback`, `10.0.0.0/8`); never every proxy, which would let a client
   * name any address and dodge its limit.
   */
  TRUST_PROXY: z
    .string()
    .refine(
      (value) => /^\d{1,2}$/.test(value) || value.split(',').every((part) => isProxy(part.trim())),
      'must be a number of hops, or addresses, subnets and loopback, linklocal, uniquelocal, separated by commas (never every proxy: true would let a client name any address)',
    )
    .transform((value) => (/^\d+$/.test(value) ? Number(value) : value))
    .optional(),
  /** `false`: no tutorial `GET /order`, which is open to anyone (it places orders for any user). */
  TUTORIAL_ENDPOINT: z.stringbool({ error: 'must be true or false' }).default(true),
});
// The service serves customers: it must know who they are (see checkAuthEnv).
const Config = Settings.superRefine(checkAuthEnv);
export type Config = z.infer<typeof Config>;

/** Parses the environment once, at start-up; throws naming each bad variable. */
export const loadConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Config, env);

/** `loadConfig` for `pnpm orders:rebuild`, which serves no HTTP: no auth to check. */
export const loadRebuildConfig = (env: NodeJS.ProcessEnv): Config => parseEnv(Settings, env);
