// NAT suite: how long a HyperDHT connection takes through each NAT pairing,
// the native Rust stack and the stock Node stack side by side in the same
// network-namespace worlds (tests/hyperswarm_nat.rs, `bench_connect_times`,
// builds them and runs both), and what an idle server behind a NAT costs.
// Needs root and iptables, like the NAT tests.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function runNatSuite(root, quick) {
  const scratch = mkdtempSync(join(tmpdir(), 'pluresdb-nat-'));
  const out = join(scratch, 'nat.json');
  try {
    console.log('bench: cargo test --release --test hyperswarm_nat bench_connect_times');
    execFileSync('cargo', [
      'test', '--quiet', '--release', '--test', 'hyperswarm_nat', 'bench_connect_times',
      '--', '--ignored', '--exact', '--nocapture',
    ], {
      cwd: root,
      stdio: 'inherit',
      env: {
        ...process.env,
        PLURESDB_NAT_BENCH_OUT: out,
        PLURESDB_NAT_BENCH_SAMPLES: quick ? '5' : '20',
        PLURESDB_NAT_BENCH_IDLE_SECONDS: quick ? '10' : '60',
      },
    });
    return JSON.parse(readFileSync(out, 'utf8'));
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
