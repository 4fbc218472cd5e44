// The native addon in Node (skipped on the WebAssembly run): SQLite files
// that outlive the process, kill -9 mid-putMany, files shared with the
// `pluresdb` CLI, two Node replicas over the addon's own Hyperswarm
// transport (no npm `hyperswarm` in the replicas; a stock HyperDHT testnet
// on 127.0.0.1 bootstraps them), and the fallback when the addon is missing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import createTestnet from 'hyperdht/testnet.js';
import { PluresDB, backend } from '../../pkg/node.js';
import { platformTriple } from '../../pkg/platform.js';
import { eventually, root } from './relay.mjs';

const native = backend === 'native';
const skip = native ? false : 'the WebAssembly run has no addon';
const run = promisify(execFile);
const binary = join(root, 'target', 'debug', 'pluresdb');
const nodeEntry = pathToFileURL(join(root, 'pkg', 'node.js')).href;
let scratch;

before(() => {
  scratch = mkdtempSync(join(tmpdir(), 'pluresdb-addon-'));
});

after(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** Runs an ES module in a fresh Node process; resolves to its stdout. */
async function node(source, env = {}) {
  const file = join(scratch, `child-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, source);
  const { stdout } = await run(process.execPath, [file], { env: { ...process.env, ...env } });
  return stdout;
}

test('this run is on the backend it claims (native unless PLURESDB_NO_ADDON=1)', () => {
  assert.equal(backend, process.env.PLURESDB_NO_ADDON === '1' ? 'wasm' : 'native');
});

test('PluresDB.open(name) keeps a SQLite file in the data directory across process restarts', { skip }, async () => {
  const data = join(scratch, 'data');
  const write = `
    import { PluresDB } from '${nodeEntry}';
    const db = await PluresDB.open('restart me/1');
    await db.putMany(Array.from({ length: 1000 }, (_, i) => [\`r\${i}\`, { i }]));
    await db.put('single', { ok: true });
    console.log(db.path);
    // No close(): an acknowledged write is durable without it.
    process.exit(0);`;
  const path = (await node(write, { PLURESDB_DATA_DIR: data })).trim();
  assert.equal(path, join(data, 'databases', 'restart%20me%2F1.db'));
  const read = `
    import { PluresDB } from '${nodeEntry}';
    const db = await PluresDB.open('restart me/1');
    const page = await db.list({ prefix: 'r', limit: 5000 });
    console.log(JSON.stringify({ n: page.items.length, single: await db.get('single'), kind: db.storageKind }));
    await db.close();`;
  const seen = JSON.parse(await node(read, { PLURESDB_DATA_DIR: data }));
  assert.deepEqual(seen, { n: 1000, single: { ok: true }, kind: 'sqlite' });
});

test('kill -9 of a Node process mid-putMany loses no acknowledged write', { skip }, async () => {
  const path = join(scratch, 'killed.db');
  const acknowledged = new Set();
  for (let round = 0; round < 6; round++) {
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      import { PluresDB } from '${nodeEntry}';
      const db = await PluresDB.open('killed', { path: ${JSON.stringify(path)} });
      for (let batch = 0; ; batch++) {
        const id = 'r${round}-b' + batch;
        await db.putMany(Array.from({ length: 100 }, (_, i) => [id + '-' + i, { batch, i, pad: 'x'.repeat(100) }]));
        process.stdout.write('ack ' + id + '\\n');
      }`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let first;
    const firstAck = new Promise((resolve) => { first = resolve; });
    child.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.includes('ack ')) first();
    });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    await Promise.race([firstAck, exited]);
    await new Promise((resolve) => setTimeout(resolve, 50 + ((round * 37) % 200)));
    child.kill('SIGKILL');
    await exited;
    for (const line of out.split('\n')) {
      if (line.startsWith('ack ')) acknowledged.add(line.slice(4));
    }
    const db = await PluresDB.open('killed', { path });
    for (const batch of acknowledged) {
      const page = await db.list({ prefix: `${batch}-`, limit: 1000 });
      assert.equal(page.items.length, 100, `round ${round}: acknowledged batch ${batch} is whole`);
    }
    await db.close();
  }
  assert.ok(acknowledged.size >= 6, `the children acknowledged ${acknowledged.size} batches`);
});

test('a file written from Node opens with the pluresdb CLI, and the reverse', { skip }, async () => {
  const path = join(scratch, 'shared.db');
  const db = await PluresDB.open('shared', { path });
  await db.put('from-node', { text: 'hello CLI', n: [1, 2] });
  await db.close();
  const cli = (...args) => execFileSync(binary, ['--db', path, ...args], { encoding: 'utf8' });
  assert.deepEqual(JSON.parse(cli('get', 'from-node')), { text: 'hello CLI', n: [1, 2] });
  cli('put', 'from-cli', JSON.stringify({ text: 'hello Node' }));
  const again = await PluresDB.open('shared', { path });
  assert.deepEqual(await again.get('from-cli'), { text: 'hello Node' });
  assert.deepEqual(await again.get('from-node'), { text: 'hello CLI', n: [1, 2] });
  await again.destroy();
  assert.deepEqual(readdirSync(scratch).filter((f) => f.startsWith('shared.db')), [], 'destroy removes the files');
});

test('two Node replicas sync over the addon\'s own Hyperswarm transport', { skip, timeout: 120_000 }, async () => {
  const testnet = await createTestnet(3, { host: '127.0.0.1' });
  const bootstrap = testnet.bootstrap.map(({ host, port }) => `${host}:${port}`);
  const office = await PluresDB.open('swarm-office', { storage: 'memory' });
  const home = await PluresDB.open('swarm-home', { storage: 'memory', invite: await office.createInvite() });
  try {
    await office.put('from-office', { text: 'hi home' });
    await home.put('from-home', { text: 'hi office' });
    office.sync({ hyperswarm: { bootstrap, bind: '127.0.0.1:0' } });
    home.sync({ hyperswarm: { bootstrap, bind: '127.0.0.1:0' } });
    await eventually('home to receive', async () => (await home.get('from-office'))?.text === 'hi home');
    await eventually('office to receive', async () => (await office.get('from-home'))?.text === 'hi office');
    assert.equal(home.syncStatus().transport.startsWith('hyperswarm'), true, home.syncStatus().transport);
    await office.put('live', { n: 1 });
    await eventually('a live write to arrive', async () => (await home.get('live'))?.n === 1);
  } finally {
    office.stopSync();
    home.stopSync();
    await office.close();
    await home.close();
    await testnet.destroy();
  }
});

test('without the addon, Node falls back to WebAssembly in memory with a one-line warning; the platform package loads it', { skip }, async () => {
  const copy = join(scratch, 'pkg-without-addon');
  cpSync(join(root, 'pkg'), copy, {
    recursive: true,
    filter: (source) => !source.endsWith('.node') && !source.includes(`${join('pkg', 'models')}`),
  });
  assert.equal(existsSync(join(copy, 'node.js')), true);
  const file = join(scratch, 'fallback.mjs');
  writeFileSync(file, `
    import { PluresDB, backend } from '${pathToFileURL(join(copy, 'node.js')).href}';
    const db = await PluresDB.open('fallback');
    await db.put('a', 1);
    console.log(JSON.stringify({ backend, kind: db.storageKind, a: await db.get('a') }));`);
  const { stdout, stderr } = await run(process.execPath, [file], { cwd: scratch });
  assert.deepEqual(JSON.parse(stdout), { backend: 'wasm', kind: 'memory', a: 1 });
  const warnings = stderr.trim().split('\n');
  assert.equal(warnings.length, 1, stderr);
  assert.match(warnings[0], /^pluresdb: no native addon for \S+ .*using WebAssembly with in-memory storage/);

  // The per-platform package `npm run build` lays out in pkg-native/, where
  // npm would install it (an optional dependency beside the package), is
  // found and loaded.
  const triple = platformTriple();
  mkdirSync(join(scratch, 'node_modules'), { recursive: true });
  symlinkSync(join(root, 'pkg-native', triple), join(scratch, 'node_modules', `pluresdb-${triple}`), 'dir');
  const withPackage = await run(process.execPath, [file], { cwd: scratch, env: { ...process.env, PLURESDB_DATA_DIR: join(scratch, 'platform-data') } });
  assert.deepEqual(JSON.parse(withPackage.stdout), { backend: 'native', kind: 'sqlite', a: 1 });
  assert.equal(withPackage.stderr, '');
});

test('with a small cacheBytes, documents left in the SQLite file are read back by get, list and query', { skip }, async () => {
  const path = join(scratch, 'cache.db');
  const doc = (i) => ({ i, kind: i % 3 === 0 ? 'fizz' : 'plain', text: 'y'.repeat(200) });
  const writer = await PluresDB.open('cache', { path, cacheBytes: 4096 });
  await writer.putMany(Array.from({ length: 500 }, (_, i) => [`n${String(i).padStart(3, '0')}`, doc(i)]));
  await writer.close();

  const db = await PluresDB.open('cache', { path, cacheBytes: 4096, indexes: ['kind'] });
  // Most documents are in the file only: `get` takes the addon's
  // asynchronous path for them.
  for (let i = 0; i < 500; i += 1) {
    assert.deepEqual(await db.get(`n${String(i).padStart(3, '0')}`), doc(i));
  }
  const page = await db.list({ prefix: 'n1', limit: 1000 });
  assert.deepEqual(page.items.map((item) => item.data), Array.from({ length: 100 }, (_, i) => doc(100 + i)));
  const fizz = await db.query({ where: { kind: 'fizz' } });
  assert.equal(fizz.length, 167);
  assert.ok(fizz.every((item) => item.data.i % 3 === 0 && item.data.text.length === 200));
  await db.close();
  await assert.rejects(PluresDB.open('cache', { path, cacheBytes: -1 }), { name: 'InvalidInputError' });
  await assert.rejects(PluresDB.open('cache', { path, cacheBytes: 'lots' }), { name: 'InvalidInputError' });
});

test('bad input to the addon is a typed error and loses nothing', { skip }, async () => {
  const db = await PluresDB.open('addon-bad-input', { storage: 'memory' });
  await db.put('keep', { ok: true });
  await assert.rejects(PluresDB.open('x', { storage: 'indexeddb' }), { name: 'InvalidInputError' });
  await assert.rejects(PluresDB.open('x', { index: { m: 1000 } }), { name: 'InvalidInputError' });
  await assert.rejects(PluresDB.open('x', { path: '' }), { name: 'InvalidInputError' });
  await assert.rejects(db.putWithEmbedding('v', {}, [1, Number.NaN]), { name: 'InvalidInputError' });
  await assert.rejects(db.putWithEmbedding('v', {}, 'nope'), { name: 'InvalidInputError' });
  await assert.rejects(db.put('big', 'x'.repeat(17 * 1024 * 1024)), { name: 'TooLargeError' });
  await assert.rejects(db.search([1, 2], { k: 0 }), { name: 'InvalidInputError' });
  await assert.rejects(db.list({ limit: Number.NaN }), { name: 'InvalidInputError' });
  await assert.rejects(db.query({ where: { a: { $regex: 'x' } } }), { name: 'InvalidInputError' });
  assert.throws(() => db.sync('http://example.com'), { name: 'InvalidInputError' });
  assert.throws(() => db.sync({ hyperswarm: { bootstrap: ['not an address'] } }), { name: 'InvalidInputError' });
  assert.throws(() => db.sync({ connect() {} }), { name: 'InvalidInputError', message: /WebAssembly build/ });
  assert.deepEqual(await db.get('keep'), { ok: true });
  assert.equal(await db.get('v'), undefined);
  await db.close();
  await assert.rejects(db.put('after', 1), { name: 'ClosedError' });
});
