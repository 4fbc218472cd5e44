// Helpers of the Node tests: polling, and a real `pluresdb relay` (the debug
// build) on a free loopback port with its backlog in a scratch directory.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('../../', import.meta.url));

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
export async function eventually(what, check, ms = 60_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Starts the relay; resolves to { url, scratch, stop }. */
export async function startRelay() {
  const scratch = mkdtempSync(join(tmpdir(), 'pluresdb-node-'));
  const relay = spawn(join(root, 'target', 'debug', 'pluresdb'), [
    'relay', '--port', '0', '--relay-backlog', join(scratch, 'relay.db'),
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    relay.stdout.on('data', (chunk) => {
      out += chunk;
      const match = out.match(/listening on (ws:\/\/\S+)/);
      if (match) resolve(match[1]);
    });
    relay.on('exit', (code) => reject(new Error(`relay exited with ${code}`)));
  });
  return {
    url,
    scratch,
    stop() {
      relay.kill();
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}
