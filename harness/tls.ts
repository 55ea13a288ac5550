import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.ts';
import { startRedisServer, type RedisServer } from './redis-server.ts';

/** A throw-away CA and a server certificate it signed, as files in a temporary directory. */
export interface TestCertificates {
  readonly dir: string;
  /** The CA certificate (PEM): what a client must trust, e.g. through `NODE_EXTRA_CA_CERTS`. */
  readonly caCert: string;
  /** The server certificate (PEM), for `IP:127.0.0.1` and `DNS:localhost`. */
  readonly serverCert: string;
  readonly serverKey: string;
  /** Deletes the directory. Safe to call twice. */
  remove(): void;
}

/** Makes a self-signed CA and a server certificate with openssl; valid for a day. */
export function createTestCertificates(): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), 'redis-tls-'));
  const file = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  // P-256 keys: generated in milliseconds, and both redis-server and Node accept them.
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

  // prettier-ignore
  openssl('req', '-x509', ...newKey, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1',
    '-subj', '/CN=redis-streams-msa test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  // prettier-ignore
  openssl('req', ...newKey, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  writeFileSync(
    file('server.ext'),
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ].join('\n'),
  );
  // prettier-ignore
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', '1',
    '-days', '1', '-extfile', 'server.ext', '-out', 'server.pem');

  return {
    dir,
    caCert: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * A private redis-server that speaks TLS only: no plain TCP port (`--port 0`), TLS on a free port,
 * clients not asked for a certificate. Its `url` is `rediss://127.0.0.1:<port>`; clients must trust
 * `certs.caCert`. `args` are passed on, e.g. `['--requirepass', ...]`.
 */
export async function startTlsRedisServer(
  certs: TestCertificates,
  args: string[] = [],
): Promise<RedisServer> {
  const port = await freePort();
  // startRedisServer waits until its `port` accepts TCP connections: here, the TLS port. Its own
  // `--port` comes first on the command line, and redis-server keeps the last one: 0.
  // prettier-ignore
  const server = await startRedisServer({
    port,
    args: [
      '--port', '0',
      '--tls-port', String(port),
      '--tls-cert-file', certs.serverCert,
      '--tls-key-file', certs.serverKey,
      '--tls-ca-cert-file', certs.caCert,
      '--tls-auth-clients', 'no',
      ...args,
    ],
  });
  return { ...server, port, url: `rediss://127.0.0.1:${port}` };
}
