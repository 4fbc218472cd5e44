// A relay cluster end to end: `pluresdb serve` and a separate `pluresdb
// relay`, both on one real redis-server, a browser replica on the first and
// a native replica on the second. They converge both ways, live and from
// the shared backlog.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { root, startRedis, startRelay, startServer, launchBrowser, openPage } from './harness.mjs';

let redis;
let server;
let relay;
let browser;

before(async () => {
  redis = await startRedis();
  server = await startServer(['--www', 'tests/e2e/pages', '--redis', redis.url]);
  relay = await startRelay(['--redis', redis.url]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await relay?.stop();
  await server?.stop();
  await redis?.stop();
});

async function waitFor(what, check) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test('a browser and a native replica on two relays of one Redis converge', async () => {
  const binary = process.env.PLURESDB_BIN ?? join(root, 'target', 'debug', 'pluresdb');
  const dir = mkdtempSync(join(tmpdir(), 'pluresdb-cluster-'));
  const native = (...args) => execFileSync(binary, ['--db', join(dir, 'native.db'), ...args], { encoding: 'utf8' });
  assert.notEqual(server.relayUrl, relay.relayUrl);
  const page = await openPage(browser.context, `${server.url}/index.html`);
  try {
    const invite = await page.evaluate(async (url) => {
      globalThis.db = await globalThis.api.PluresDB.open('cluster-e2e');
      for (let i = 0; i < 20; i++) await globalThis.db.put(`browser-${i}`, { i, text: 'from the browser' });
      const invite = await globalThis.db.createInvite();
      globalThis.db.sync(url);
      return invite;
    }, server.relayUrl);
    await waitFor('the browser stored its writes', () =>
      page.evaluate(() => globalThis.db.syncStatus().state === 'synced'));

    // The native replica, on the other relay, gets them from the backlog.
    native('sync', '--relay', relay.relayUrl, '--invite', invite, '--once', '1');
    assert.deepEqual(JSON.parse(native('get', 'browser-19')), { i: 19, text: 'from the browser' });
    assert.equal(native('list', '--prefix', 'browser-', '--format', 'jsonl').trim().split('\n').length, 20);

    // Live both ways while both are online, each through its own relay.
    native('put', 'native-1', JSON.stringify({ text: 'from the native replica' }));
    const syncing = spawn(binary, ['--db', join(dir, 'native.db'), 'sync', '--relay', relay.relayUrl], { stdio: 'ignore' });
    try {
      await waitFor('the browser has the native write', async () =>
        (await page.evaluate(() => globalThis.db.get('native-1')))?.text === 'from the native replica');
      await waitFor('the browser sees the native replica as a peer', () =>
        page.evaluate(() => globalThis.db.syncStatus().peers === 1));
      await page.evaluate(() => globalThis.db.put('browser-live', { text: 'while both are online' }));
      await waitFor('the native replica has the live browser write', () => {
        try {
          return JSON.parse(native('get', 'browser-live')).text === 'while both are online';
        } catch {
          return false;
        }
      });
    } finally {
      syncing.kill('SIGINT');
      await new Promise((resolve) => syncing.once('exit', resolve));
    }
  } finally {
    await page.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
