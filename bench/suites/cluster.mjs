// Relay cluster suite: runs benches/relay_cluster.rs (one relay on SQLite,
// one on Redis, two on one Redis, all `pluresdb relay` processes on
// loopback) and reads target/bench-relay-cluster.json.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export function runClusterSuite(root, quick) {
  const args = ['bench', '--quiet', '--bench', 'relay_cluster', '--'];
  if (quick) args.push('--quick');
  console.log(`bench: cargo ${args.join(' ')}`);
  execFileSync('cargo', args, { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  return JSON.parse(readFileSync(join(root, 'target', 'bench-relay-cluster.json'), 'utf8'));
}
