// Only for `pnpm bench` and the fault run, which read the real sent log; the service itself runs main.ts.
export { sentLogKey } from './sent-log.ts';
export { DEFAULT_CONCURRENCY } from './config.ts';
export { routes } from './contract.ts';
