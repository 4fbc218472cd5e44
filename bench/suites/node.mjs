// Node suite: PluresDB on the native addon against raw better-sqlite3 and
// PluresDB's WebAssembly build (memory), side by side in one run, each
// round of each engine in fresh processes (bench/lib/node-workload.mjs):
// putMany of 100,000 real documents, 10,000 awaited single puts, 10,000
// gets, and a cold open of the 100,000-record file.
//
// better-sqlite3 is installed on first use into bench/tmp/node-deps (not a
// devDependency: it compiles from source here, ~1 minute, with the system's
// Node headers), so `npm test` never needs it.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BETTER_SQLITE3 = '12.11.1';

function ensureBetterSqlite3(root) {
  const deps = join(root, 'bench', 'tmp', 'node-deps');
  const installed = join(deps, 'node_modules', 'better-sqlite3', 'package.json');
  if (existsSync(installed) && JSON.parse(readFileSync(installed, 'utf8')).version === BETTER_SQLITE3) return;
  mkdirSync(deps, { recursive: true });
  writeFileSync(join(deps, 'package.json'), '{ "private": true }\n');
  console.log(`bench: installing better-sqlite3 ${BETTER_SQLITE3} into bench/tmp/node-deps (builds from source)`);
  const env = { ...process.env };
  // Without a prebuilt binary, node-gyp compiles against the installed
  // Node's headers instead of downloading them.
  if (!env.npm_config_nodedir && existsSync('/usr/include/node/node_api.h')) env.npm_config_nodedir = '/usr';
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--no-save', `better-sqlite3@${BETTER_SQLITE3}`], {
    cwd: deps, env, stdio: ['ignore', 'inherit', 'inherit'],
  });
}

function workload(root, engine, dir, records, singles, phase) {
  const line = execFileSync(process.execPath, [
    join(root, 'bench', 'lib', 'node-workload.mjs'), engine, dir, String(records), String(singles), phase,
  ], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(line.trim().split('\n').at(-1));
}

export function runNodeSuite(root, { runs, quick }) {
  ensureBetterSqlite3(root);
  const records = quick ? 10_000 : 100_000;
  const singles = quick ? 1_000 : 10_000;
  const engines = ['addon', 'better-sqlite3', 'wasm'];
  const rows = Object.fromEntries(engines.map((e) => [e, { putManyMs: [], singlePutMs: [], getMs: [], openMs: [] }]));
  const rounds = Math.min(runs, 5);
  for (let round = 0; round < rounds; round++) {
    for (const engine of engines) {
      const dir = mkdtempSync(join(tmpdir(), `pluresdb-bench-node-${engine}-`));
      try {
        const write = workload(root, engine, dir, records, singles, 'write');
        for (const key of ['putManyMs', 'singlePutMs', 'getMs']) rows[engine][key].push(write[key]);
        if (engine !== 'wasm') rows[engine].openMs.push(workload(root, engine, dir, records, singles, 'open').openMs);
        console.log(`bench: node ${engine} round ${round + 1}: ${JSON.stringify(write)}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  return { records, singles, rounds, betterSqlite3: BETTER_SQLITE3, node: process.version, deno: pkg.devDependencies?.deno, rows };
}
