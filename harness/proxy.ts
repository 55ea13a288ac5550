import { createServer, connect, type Socket } from 'node:net';
import { freePort } from './net.ts';

/** A TCP proxy in front of a port that can make its open connections go silent. */
export interface Proxy {
  readonly port: number;
  /**
   * From now on, the connections open at this moment pass nothing either way but stay open, as
   * a socket does whose peer vanished without a FIN. New connections work as before.
   */
  silenceOpenConnections(): void;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<Proxy> {
  const open = new Set<{ client: Socket; upstream: Socket }>();
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    open.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const silenced: Socket[] = [];
  return {
    port,
    silenceOpenConnections() {
      for (const { client, upstream } of open) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
        silenced.push(client, upstream);
      }
      open.clear();
    },
    async close() {
      for (const socket of silenced) socket.destroy();
      for (const { client, upstream } of open) {
        client.destroy();
        upstream.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
