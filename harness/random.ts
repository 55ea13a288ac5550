/* Seeded generators: the same seed gives the same draws, so a run can be replayed from its seed. */

/** mulberry32: a small 32-bit generator; the same seed gives the same draws in [0, 1). */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** murmur3's finaliser: spreads every bit of `h` over the result. */
function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * A generator of its own for one key, e.g. (seed, entry, run): its draws depend on the seed and
 * the key alone, not on how many draws other keys made before. Handlers running in a different
 * order on a replay still draw the same delays and failures for the same entry.
 */
export function keyedRandom(seed: number, ...keys: number[]): () => number {
  let h = mix(seed);
  for (const key of keys) h = mix(h ^ Math.imul(key + 1, 0x9e3779b1));
  return mulberry32(h);
}
