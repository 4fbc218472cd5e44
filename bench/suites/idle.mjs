// Idle suite: what a connected Hyperswarm peer costs while nothing
// happens. On a stock HyperDHT testnet on 127.0.0.1, three pairs of peers
// connect and then sit idle side by side: two native `pluresdb sync
// --hyperswarm` processes (release build), two Node processes running a
// PluresDB through `pluresdb/hyperswarm`, and two stock npm `hyperswarm`
// peers with no database (what an idle Hyperswarm peer costs anyway). Each
// process's CPU time (utime + stime from /proc) is read over the same
// window. Linux only.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** utime + stime of `pid`, in seconds. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS; // fields 14 and 15
}

/** Spawns a process whose `stream` lines `waitFor` can wait for. */
function start(command, args, { cwd, stream = 'stdout' }) {
  const child = spawn(command, args, { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  const waiters = [];
  const log = [];
  createInterface({ input: child[stream] }).on('line', (line) => {
    log.push(line);
    for (const waiter of [...waiters]) {
      const match = line.match(waiter.pattern);
      if (match) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(match);
      }
    }
  });
  if (stream === 'stdout') child.stderr.on('data', (chunk) => log.push(String(chunk)));
  return {
    child,
    log,
    waitFor(pattern, what, ms = 90_000) {
      const done = log.map((line) => line.match(pattern)).find(Boolean);
      if (done) return Promise.resolve(done);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`idle: timed out waiting for ${what}\n${log.join('\n')}`)), ms);
        waiters.push({ pattern, resolve: (match) => { clearTimeout(timer); resolve(match); } });
      });
    },
    stop() {
      child.stdin.end();
      child.kill('SIGINT');
    },
  };
}

export async function runIdleSuite(root, quick) {
  const windowSeconds = quick ? 15 : 60;
  console.log('bench: cargo build --release --bin pluresdb');
  execFileSync('cargo', ['build', '--quiet', '--release', '--bin', 'pluresdb'], { cwd: root, stdio: 'inherit' });
  const binary = join(root, 'target', 'release', 'pluresdb');
  const scratch = mkdtempSync(join(tmpdir(), 'pluresdb-idle-'));
  const processes = [];
  try {
    const testnet = start('node', ['tests/interop/dht-testnet.mjs', '3'], { cwd: root });
    processes.push(testnet);
    const ready = JSON.parse((await testnet.waitFor(/^\{"event":"ready".*$/, 'the testnet'))[0]);
    const bootstrap = ready.bootstrap[0];

    // Native: two database files, the second joins the first's invite.
    const fileA = join(scratch, 'a.db');
    const invite = execFileSync(binary, ['--db', fileA, 'invite'], { encoding: 'utf8' }).trim();
    const nativeArgs = (file, extra) => ['--db', file, 'sync', '--hyperswarm', '--bind', '127.0.0.1:0', '--bootstrap', bootstrap, ...extra];
    const native = [
      start(binary, nativeArgs(fileA, []), { cwd: root, stream: 'stderr' }),
      start(binary, nativeArgs(join(scratch, 'b.db'), ['--invite', invite]), { cwd: root, stream: 'stderr' }),
    ];
    processes.push(...native);

    // Node with PluresDB, and plain hyperswarm.
    const peer = join(root, 'bench', 'lib', 'hyperswarm-peer.mjs');
    const nodeA = start('node', [peer, 'pluresdb', bootstrap], { cwd: root });
    processes.push(nodeA);
    const nodeInvite = JSON.parse((await nodeA.waitFor(/^\{"event":"invite".*$/, 'the Node invite'))[0]).invite;
    const nodeB = start('node', [peer, 'pluresdb', bootstrap, nodeInvite], { cwd: root });
    const topic = 'a1'.repeat(32);
    const plain = [
      start('node', [peer, 'plain', bootstrap, topic], { cwd: root }),
      start('node', [peer, 'plain', bootstrap, topic], { cwd: root }),
    ];
    processes.push(nodeB, ...plain);

    const groups = [
      { name: 'PluresDB native (pluresdb sync --hyperswarm)', peers: native, connected: /peers [1-9]/ },
      { name: 'PluresDB in Node (pluresdb/hyperswarm)', peers: [nodeA, nodeB], connected: /"connected"/ },
      { name: 'stock npm hyperswarm, no database', peers: plain, connected: /"connected"/ },
    ];
    for (const group of groups) {
      await Promise.all(group.peers.map((p) => p.waitFor(group.connected, `${group.name} to connect`)));
    }
    console.log(`bench: all peers connected; settling 5 s, then measuring ${windowSeconds} s of idle`);
    await new Promise((resolve) => setTimeout(resolve, 5_000));
    const before = groups.map((group) => group.peers.map((p) => cpuSeconds(p.child.pid)));
    const started = process.hrtime.bigint();
    await new Promise((resolve) => setTimeout(resolve, windowSeconds * 1_000));
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    const rows = groups.map((group, g) => {
      const percents = group.peers.map((p, i) => (100 * (cpuSeconds(p.child.pid) - before[g][i])) / elapsed);
      const row = { name: group.name, cpuPercentPerPeer: percents.map((v) => Math.round(v * 100) / 100) };
      console.log(`bench: idle ${group.name}: ${row.cpuPercentPerPeer.join(' %, ')} % of a core`);
      return row;
    });
    return { windowSeconds: Math.round(elapsed), clockTicks: CLOCK_TICKS, rows };
  } finally {
    for (const p of processes) p.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}
