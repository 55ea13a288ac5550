import { execFileSync } from 'node:child_process';

/*
 * Debian packages a test needs (prometheus, chromium), installed with apt-get when missing, as
 * .ci/run does: as root, or through sudo.
 */

/** Whether `command` is on PATH. */
export function has(command: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** `apt-get update`, then installs `packages` without their recommendations. */
export function aptInstall(...packages: string[]): void {
  const root = process.getuid?.() === 0;
  const run = (args: string[]) =>
    execFileSync(root ? 'apt-get' : 'sudo', root ? args : ['apt-get', ...args], {
      stdio: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
  run(['update']);
  run(['install', '--yes', '--no-install-recommends', ...packages]);
}
