import { redisEnv } from '@msa/stream-kit/service';
import { z } from 'zod';
import { services } from '../../services.ts';

/** The service of the registry the board looks orders up in and places them through. */
const orderService = services.find((service) => service.name === 'order-service')!;

/** `name=url,name=url`: the services' /metrics URLs. */
const MetricsList = z.string().transform((text, ctx) =>
  text
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const [name, url] = part.split(/=(.*)/s, 2);
      if (!name || !url || !URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
        ctx.addIssue({ code: 'custom', message: `"${part}" is not name=http://host:port/metrics` });
        return z.NEVER;
      }
      return { name, url };
    }),
);

/** The board's environment, parsed once at start (`pnpm board`, and `pnpm dev` starts it). */
export const BoardEnv = z.object({
  BOARD_PORT: z.coerce.number().int().min(0).max(65_535).default(8090),
  /** Only this machine, unless told otherwise: the board shows every entry's fields. */
  BOARD_HOST: z
    .union([z.ipv4(), z.ipv6(), z.hostname()], { error: 'must be an IP address or a host name' })
    .default('127.0.0.1'),
  /** What writes (replay, discard, place an order) need; unset, the board is read-only. */
  BOARD_TOKEN: z
    .string()
    .regex(/^[\x21-\x7e]{16,256}$/, 'must be 16 to 256 printable ASCII characters, without spaces')
    .optional(),
  ...redisEnv,
  /** Where order-service answers: the timeline looks orders up there, and the form places them. */
  ORDER_SERVICE_URL: z
    .url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' })
    .default(`http://127.0.0.1:${orderService.port}`),
  /**
   * How the board is known to order-service when its auth is on. With the services' AUTH_SECRET
   * (development: `pnpm dev` gives it), the board signs its own tokens: a support token
   * (`orders:read-all`) to look orders up, and the order's user's to place one. Else
   * ORDER_SERVICE_TOKEN, a token from the identity provider, goes with every call.
   */
  AUTH_SECRET: z.string().min(32, 'must be at least 32 characters (HS256 wants 256 bits)').optional(),
  AUTH_ISSUER: z.string().optional(),
  AUTH_AUDIENCE: z.string().optional(),
  ORDER_SERVICE_TOKEN: z
    .string()
    .regex(/^[A-Za-z0-9\-._~+/]+=*$/, 'must be a bearer token')
    .optional(),
  /** The services' /metrics, for the run-time chart; unset, each service of the registry on its own port here. */
  BOARD_METRICS: MetricsList.default(() =>
    services.map((service) => ({ name: service.name, url: `http://127.0.0.1:${service.port}/metrics` })),
  ),
  /** How often the board reads Redis and the /metrics URLs, in ms. */
  BOARD_INTERVAL_MS: z.coerce.number().int().min(100).max(60_000).default(1_000),
  LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  INSTANCE_ID: z
    .string()
    .regex(/^[\x21-\x7e]{1,64}$/, 'must be 1 to 64 printable ASCII characters, without spaces')
    .default(() => `board-${process.pid}`),
});
export type BoardConfig = z.output<typeof BoardEnv>;
