import { describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import { XADD_CHECKED } from '../../src/lua.ts';
import { contractSuite, testStream } from './setup.ts';

/*
 * An entry ID set by hand far ahead of Redis's clock (more than the stream's maxIdAheadMs):
 * subscribers dead-letter it, publish and publishMany refuse to add after it (IDAHEAD), and the
 * repair the README gives makes the stream flow again. Subscriptions here run at the shipped
 * settings.
 */

const suite = contractSuite();
const { startAtDefaults, deadLetters } = suite;

describe('when an entry ID lies far ahead of the clock', () => {
  it('dead-letters that entry with its reason and handles the others', async () => {
    const stream = testStream();
    const seen: number[] = [];
    startAtDefaults(stream, (event) => void seen.push(event.n));
    await suite.publisher.publish(stream, { n: 1 });
    const ahead = `${Date.now() + 3_600_000}-0`;
    await suite.redis.xadd(stream.name, ahead, 'n', '2');

    const [letter] = await waitFor(async () => {
      const found = await deadLetters(stream);
      return found.length > 0 && found;
    });
    expect(letter).toMatchObject({ n: '2', 'dlq:id': ahead });
    expect(letter!['dlq:reason']).toMatch(/^entry ID ahead of the clock: .* ms ahead of the server clock/);
    expect(seen).toEqual([1]);
  });

  it('refuses to publish after it, writing nothing, with publish and publishMany', async () => {
    const stream = testStream();
    await suite.redis.xadd(stream.name, `${Date.now() + 3_600_000}-0`, 'n', '0');

    await expect(suite.publisher.publish(stream, { n: 1 })).rejects.toThrow(
      /^IDAHEAD .* ms ahead of the server clock/,
    );
    await expect(suite.publisher.publishMany(stream, [{ n: 2 }, { n: 3 }])).rejects.toThrow(/^IDAHEAD/);

    expect(await suite.redis.xlen(stream.name)).toBe(1);
  });

  it('works again after the repair the README gives: XDEL, XSETID, XGROUP SETID', async () => {
    const stream = testStream();
    const seen: number[] = [];
    startAtDefaults(stream, (event) => void seen.push(event.n));
    const good = await suite.publisher.publish(stream, { n: 1 });
    await waitFor(() => seen.length === 1);
    const ahead = `${Date.now() + 3_600_000}-0`;
    await suite.redis.xadd(stream.name, ahead, 'n', '2');
    await waitFor(async () => (await suite.redis.xlen(`${stream.name}:dlq`)) === 1);
    await expect(suite.publisher.publish(stream, { n: 3 })).rejects.toThrow(/^IDAHEAD/);

    await suite.redis.xdel(stream.name, ahead);
    await suite.redis.call('XSETID', stream.name, good);
    await suite.redis.xgroup('SETID', stream.name, 'g', good);

    await suite.publisher.publish(stream, { n: 4 });
    await waitFor(() => seen.includes(4), { what: 'an entry published after the repair' });
    expect(seen).toEqual([1, 4]);
  });
});

describe('when a script of your own writes many events with a bound of 0 ms', () => {
  it('refuses none of them: an ID past the clock read at the first XADD is checked again against a fresh one', async () => {
    // Redis 7.0 stamps each XADD with its own clock, so the IDs of a long run of XADDs in one
    // script move past the clock read at its first (the reading xadd_checked keeps for the run).
    const stream = testStream();
    const script = `${XADD_CHECKED}
for i = 1, tonumber(ARGV[1]) do xadd_checked(KEYS[1], 0, '*', 'n', tostring(i)) end
return redis.call('XLEN', KEYS[1])`;

    expect(await suite.redis.eval(script, 1, stream.name, 20_000)).toBe(20_000);
  });
});
