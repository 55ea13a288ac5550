// Only for `pnpm bench`, which measures the real handler; the service itself runs main.ts.
export { paymentHandler, paymentKey } from './process-payment.ts';
