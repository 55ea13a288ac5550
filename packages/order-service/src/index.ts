// Only for the fault run, which reads the real read model; the service itself runs main.ts.
export { DEFAULT_PAYMENT_TIMEOUT_MS } from './config.ts';
export { liveReadModel, readModel } from './read-model.ts';
export { routes } from './contract.ts';
