import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { aptInstall } from './apt.ts';

/*
 * A real browser for tests: Debian's `chromium` (playwright's own download cannot reach its
 * servers from here), installed with apt-get when missing, as .ci/run does, and driven headless
 * by playwright-core.
 */

export const CHROMIUM = '/usr/bin/chromium';

/** Installs Debian's `chromium` package unless it is there already. */
export function ensureChromium(): void {
  if (!existsSync(CHROMIUM)) aptInstall('chromium');
}

/** Headless Chromium, with nothing reaching out to the network on its own (this machine refuses it). */
export function launchBrowser(): Promise<Browser> {
  ensureChromium();
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      // As root (CI), Chromium's sandbox cannot start.
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
