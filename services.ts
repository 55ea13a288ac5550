/**
 * The registry: every service of the system, the port it listens on and the streams it writes
 * and reads, and every stream. The tools read it instead of naming services themselves:
 * `pnpm dev` starts what it lists, `pnpm dlq` and `pnpm tail` know its streams, and the tests
 * check that `redis/users.acl`, `docker-compose.yml` and each service's own source agree with it.
 * A new service is one entry here (docs/recipes.md, recipe 2).
 *
 * The services do not read it: each knows its own name, port and streams, and the tests hold
 * them to what is written here.
 */
import { streams } from '@msa/stream-kit/events';

export { streams };

export interface ServiceEntry {
  /** Its package, `packages/<name>/`; also its Redis user and the prefix of its own keys. */
  readonly name: string;
  /** The port it listens on unless `PORT` says otherwise (its config's default). */
  readonly port: number;
  /** The streams of the catalogue it adds entries to, not counting dead letters. */
  readonly publishes: readonly string[];
  /** The streams of the catalogue it reads, each as the consumer group `groupOf(name)`. */
  readonly consumes: readonly string[];
}

export const services = [
  {
    name: 'order-service',
    port: 8080,
    publishes: ['order-events'],
    // The order read model, a projection of both.
    consumes: ['order-events', 'payment-events'],
  },
  { name: 'payment-service', port: 8081, publishes: ['payment-events'], consumes: ['order-events'] },
  {
    name: 'notification-service',
    port: 8082,
    publishes: [],
    consumes: ['order-events', 'payment-events'],
  },
] as const satisfies readonly ServiceEntry[];

export type ServiceName = (typeof services)[number]['name'];

/** The consumer group a service reads its streams as: `<name>-group`, as the tutorial names them. */
export const groupOf = (name: string): string => `${name}-group`;

/** The variable that moves a service's port in `pnpm dev` and docker compose: `payment-service` → `PAYMENT_PORT`. */
export const portVariableOf = (name: string): string =>
  `${name
    .replace(/-service$/, '')
    .replaceAll('-', '_')
    .toUpperCase()}_PORT`;

/** The services that read `stream`, as `[service, group]` pairs. */
export function consumersOf(stream: string): { service: ServiceName; group: string }[] {
  return services
    .filter((service) => (service.consumes as readonly string[]).includes(stream))
    .map((service) => ({ service: service.name, group: groupOf(service.name) }));
}
