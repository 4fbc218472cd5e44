// Sync suite: runs the native sync benchmark (benches/sync.rs) over a
// loopback relay and reads target/bench-sync.json.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export function runSyncSuite(root, quick) {
  const args = ['bench', '--quiet', '--bench', 'sync', '--'];
  if (quick) args.push('--quick');
  console.log(`bench: cargo ${args.join(' ')}`);
  execFileSync('cargo', args, { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  return JSON.parse(readFileSync(join(root, 'target', 'bench-sync.json'), 'utf8'));
}
