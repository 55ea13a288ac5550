/**
 * The baseline of the HTTP rows: Express 5 answering `POST /orders` the way order-service does
 * (JSON body parsed, 202 `{orderId}`), with no validation and no Redis. Listens on `PORT`; SIGTERM
 * ends it at once.
 */
import { randomUUID } from 'node:crypto';
import express from 'express';

const app = express();
app.disable('x-powered-by');
// The same parser and limit as order-service, and an orderId of the same size in the answer.
app.post('/orders', express.json({ limit: '16kb' }), (_req, res) => {
  res.status(202).json({ orderId: randomUUID() });
});
app.listen(Number(process.env.PORT), (err) => {
  if (err) throw err;
});
