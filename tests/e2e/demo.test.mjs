// The demo page served by `pluresdb serve`, driven in headless Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('the demo page loads the package and stores notes in IndexedDB', async () => {
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${server.url}/`);
  await page.waitForSelector('body[data-ready="true"]');
  assert.match(await page.textContent('#status'), /stored in indexeddb/);

  await page.fill('#note-text', 'Buy oat milk');
  await page.click('button[type="submit"]');
  await page.waitForSelector('#notes li');
  assert.equal(await page.textContent('#notes li p'), 'Buy oat milk');

  // The page's database handle is the npm package's PluresDB.
  const listed = await page.evaluate(async () => {
    const { db } = globalThis.pluresdb;
    await db.put('probe', { from: 'playwright' });
    return { probe: await db.get('probe'), count: (await db.list({ prefix: 'note:' })).items.length };
  });
  assert.deepEqual(listed, { probe: { from: 'playwright' }, count: 1 });

  // Persisted: a reload shows the note again.
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await page.textContent('#notes li p'), 'Buy oat milk');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the server answers with the right content types', async () => {
  const wasm = await fetch(`${server.url}/pkg/pluresdb_bg.wasm`);
  assert.equal(wasm.status, 200);
  assert.equal(wasm.headers.get('content-type'), 'application/wasm');
  const missing = await fetch(`${server.url}/no-such-file`);
  assert.equal(missing.status, 404);
});
