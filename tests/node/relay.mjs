// A real `pluresdb relay` (the debug build) on a free loopback port, with its
// backlog in a scratch directory, for the Node tests that sync.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('../../', import.meta.url));

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
