/*
 * For code that writes events or acks inside its own Lua script, atomically with its other
 * effects (a handler subscribed with `handlerAcks`, a use case that records and publishes in one
 * step): `@msa/stream-kit/lua`. The messaging API at the root does not need it.
 */
export { batchCalls, type BatchFunction, type BatchOptions } from './batch.ts';
export { LIVENESS_TTL_MS, livenessKey } from './consumer/liveness.ts';
export { CONSUMER_DEAD, defineScript } from './scripts.ts';
export { waitForReplicas, type ReplicatedWrite } from './durability.ts';
export {
  maxIdAheadMs,
  partitionNames,
  slotName,
  slotTag,
  streamKeyOf,
  XADD_CHECKED,
  xaddArguments,
} from './stream.ts';
