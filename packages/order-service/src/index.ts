// Only for the fault run, which reads the real read model; the service itself runs main.ts.
export { orderKey } from './orders.ts';
