// The npm package as web developers use it, in Chromium: the Worker and
// service-worker examples of its README (run as written, the import pointed
// at the served package), a Vite production build of an app that imports
// it, and every method of the API in a page (the Node tests cover the same
// in Node).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { format } from 'node:util';
import { startServer, launchBrowser, openPage, root } from './harness.mjs';
import { codeBlocks, expectedOutput } from '../node/markdown.mjs';

let browser;
const servers = [];
const scratch = mkdtempSync(join(tmpdir(), 'pluresdb-package-'));

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const server of servers) await server.stop();
  rmSync(scratch, { recursive: true, force: true });
});

async function serve(www) {
  const server = await startServer(['--www', www]);
  servers.push(server);
  return server;
}

/** Runs `source` as a module script in `page`, recording what it logs. */
async function runModule(page, source) {
  await page.evaluate(() => {
    globalThis.__logs ??= [];
    globalThis.__record = (...args) => globalThis.__logs.push(args);
  });
  await page.addScriptTag({ type: 'module', content: source.replaceAll('console.log(', 'globalThis.__record(') });
}

async function logged(page, count) {
  await page.waitForFunction((n) => globalThis.__logs?.length >= n, count, { timeout: 30_000 });
  return (await page.evaluate(() => globalThis.__logs)).map((args) => format(...args));
}

test('the README Worker and service-worker examples run in Chromium as written', async () => {
  const readme = readFileSync(join(root, 'pkg-template', 'README.md'), 'utf8');
  const toServed = (code) => code.replaceAll("from 'pluresdb'", "from '/pkg/pluresdb.js'");
  const [workerSource] = codeBlocks(readme, 'js worker.js');
  const [swSource] = codeBlocks(readme, 'js sw.js');
  const [workerPage, swPage] = codeBlocks(readme, 'js page.js');
  assert.ok(workerSource && swSource && workerPage && swPage, 'the README has the four examples');
  const www = join(scratch, 'readme');
  mkdirSync(www, { recursive: true });
  writeFileSync(join(www, 'index.html'), '<!doctype html><title>README examples</title>');
  writeFileSync(join(www, 'worker.js'), toServed(workerSource));
  writeFileSync(join(www, 'sw.js'), toServed(swSource));
  const server = await serve(www);

  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${server.url}/index.html`);
  await runModule(page, workerPage);
  assert.deepEqual(await logged(page, 1), expectedOutput(workerPage));
  await runModule(page, swPage);
  assert.deepEqual((await logged(page, 2)).slice(1), expectedOutput(swPage));
  assert.deepEqual(errors, []);
  await page.close();
});

test('a Vite production build of an app importing the package works', async () => {
  const app = join(scratch, 'vite-app');
  mkdirSync(join(app, 'node_modules'), { recursive: true });
  symlinkSync(join(root, 'pkg'), join(app, 'node_modules', 'pluresdb'), 'dir');
  writeFileSync(join(app, 'index.html'),
    '<!doctype html><title>Vite app</title><script type="module" src="/main.js"></script>');
  writeFileSync(join(app, 'main.js'), `
    import init, { PluresDB, hashEmbed } from 'pluresdb';
    await init();
    const db = await PluresDB.open('vite-app', { embedder: (texts) => hashEmbed(texts), embedFields: ['text'] });
    await db.put('note:1', { text: 'bundled with vite' });
    const hits = await db.search('vite bundle', { k: 1 });
    document.body.dataset.result = JSON.stringify({
      stored: await db.get('note:1'), storage: db.storageKind, best: hits[0].id,
    });
  `);
  const { build } = await import('vite');
  await build({ root: app, logLevel: 'warn', build: { outDir: 'dist', target: 'es2022' } });
  const assets = readdirSync(join(app, 'dist', 'assets'));
  assert.ok(assets.some((name) => name.endsWith('.wasm')), `the .wasm is emitted: ${assets}`);

  const server = await serve(join(app, 'dist'));
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${server.url}/index.html`);
  await page.waitForSelector('body[data-result]', { state: 'attached', timeout: 30_000 });
  const result = JSON.parse(await page.getAttribute('body', 'data-result'));
  assert.deepEqual(result, { stored: { text: 'bundled with vite' }, storage: 'indexeddb', best: 'note:1' });
  assert.deepEqual(errors, []);
  await page.close();
});

async function fixturePage() {
  const server = servers.find((s) => s.fixtures) ?? Object.assign(await serve('tests/e2e/pages'), { fixtures: true });
  return openPage(browser.context, `${server.url}/index.html`);
}

test('every method of the API works in a page, on IndexedDB', async () => {
  const page = await fixturePage();
  const result = await page.evaluate(async () => {
    const { PluresDB, hashEmbed } = globalThis.api;
    const out = {};
    const db = await PluresDB.open('every-method', { embedder: (t) => hashEmbed(t, 64), embedFields: ['text'] });
    out.props = [db.name, db.storageKind, typeof db.actorId];
    await db.put('a', { text: 'apples and pears', n: 1 });
    await db.putMany([['b', { text: 'bananas', n: 2 }], { id: 'c', data: { text: 'cherries', n: 3 } }]);
    out.get = await db.get('a');
    out.list = (await db.list({ limit: 2 })).items.map((r) => r.id);
    out.query = (await db.query({ where: { n: { $gt: 1 } }, sort: '-n' })).map((r) => r.id);
    out.search = (await db.search('pears', { k: 1 }))[0].id;
    out.deleted = await db.delete('b');
    const events = [];
    const unsubscribe = db.subscribe((event) => events.push(`${event.kind} ${event.id}`));
    const watched = [];
    const unwatch = db.watch({ prefix: 'c' }, (records) => watched.push(records.map((r) => r.data.text)));
    await db.put('c', { text: 'cherry pie', n: 4 });
    await new Promise((resolve) => setTimeout(resolve, 100));
    unsubscribe();
    unwatch();
    out.events = events;
    out.watched = watched;
    out.conflicts = await db.conflicts('c');
    const vectors = await PluresDB.open('every-method-vectors');
    await vectors.putWithEmbedding('v', { tag: 1 }, [1, 0, 0]);
    await vectors.flushIndex();
    out.indexStats = vectors.indexStats().vectors;
    out.vectorHit = (await vectors.search([1, 0, 0.1], { k: 1 }))[0].id;
    out.invite = (await db.createInvite()).startsWith('pluresdb1.');
    db.sync(`ws://${location.host}/relay`);
    for (let i = 0; i < 100 && db.syncStatus().state !== 'synced'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    out.syncState = db.syncStatus().state;
    db.stopSync();
    await db.close();
    out.afterClose = await db.get('a').then(() => 'resolved', (error) => error.name);
    await vectors.destroy();
    const reopened = await PluresDB.open('every-method-vectors');
    out.afterDestroy = (await reopened.list()).items.length;
    await reopened.close();
    return out;
  });
  assert.deepEqual(result, {
    props: ['every-method', 'indexeddb', 'string'],
    get: { text: 'apples and pears', n: 1 },
    list: ['a', 'b'],
    query: ['c', 'b'],
    search: 'a',
    deleted: true,
    events: ['upsert c'],
    watched: [['cherries'], ['cherry pie']],
    conflicts: [],
    indexStats: 1,
    vectorHit: 'v',
    invite: true,
    syncState: 'synced',
    afterClose: 'ClosedError',
    afterDestroy: 0,
  });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a panic is logged and leaves the module unusable, not silently broken; data survives', async () => {
  const page = await fixturePage();
  const console = [];
  page.on('console', (message) => console.push(message.text()));
  await page.evaluate(async () => {
    globalThis.db = await globalThis.api.PluresDB.open('panic');
    await globalThis.db.put('kept', { safe: true });
  });
  const thrown = await page.evaluate(() => {
    try {
      globalThis.api.PluresDB.__panicForTests();
      return 'no panic';
    } catch (error) {
      return String(error);
    }
  });
  assert.match(thrown, /unreachable|RuntimeError/);
  assert.ok(console.some((line) => line.includes('__panicForTests was called')), 'the panic message is logged');
  const after = await page.evaluate(() => globalThis.db.get('kept').then(
    () => ({ resolved: true }),
    (error) => ({ name: error.name, message: error.message }),
  ));
  assert.equal(after.name, 'PluresDBError');
  assert.match(after.message, /unusable; reload the page/);
  // A fresh module instance (a reload) has the data.
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  const kept = await page.evaluate(async () => (await globalThis.api.PluresDB.open('panic')).get('kept'));
  assert.deepEqual(kept, { safe: true });
  await page.close();
});

test('the README example of pluresdb/worker runs: the database in a dedicated Worker', async () => {
  const readme = readFileSync(join(root, 'pkg-template', 'README.md'), 'utf8');
  const [example] = codeBlocks(readme, 'js browser');
  assert.ok(example, 'the README has the pluresdb/worker example');
  const page = await fixturePage();
  await runModule(page, example.replaceAll("from 'pluresdb/worker'", "from '/pkg/worker.js'"));
  const expected = expectedOutput(example);
  assert.deepEqual((await logged(page, expected.length)).sort(), [...expected].sort());
  // Errors cross back typed, and the worker's database is really IndexedDB.
  const checks = await page.evaluate(async () => {
    const { openInWorker } = await import('/pkg/worker.js');
    const db = await openInWorker('worker-errors');
    const bad = await db.put('', {}).then(() => 'stored', (error) => error.name);
    const badEmbedder = await openInWorker('x', { embedder: () => [] }).then(() => 'opened', (error) => error.name);
    const storage = db.storageKind;
    await db.close();
    // Declared indexes cross into the worker, and on IndexedDB a query on
    // one reads only its matches.
    const indexed = await openInWorker(`worker-indexes-${Date.now()}`, { indexes: ['kind'] });
    await indexed.putMany([['a', { kind: 'x' }], ['b', { kind: 'y' }], ['c', { kind: 'x' }]]);
    const plan = await indexed.explain({ where: { kind: 'x' } });
    const kinds = (await indexed.query({ where: { kind: 'x' } })).map((record) => record.id);
    await indexed.destroy();
    // The built-in model by name loads and embeds inside the worker.
    const notes = await openInWorker('worker-minilm', { storage: 'memory', embedder: 'minilm-static', embedFields: ['text'] });
    await notes.put('kids', { text: 'Pick up the kids from football practice at 5' });
    await notes.put('lisbon', { text: 'Book flights to Lisbon for the conference' });
    await notes.put('anna', { text: 'Buy a birthday present for Anna' });
    const travel = (await notes.search('travel plans', { k: 1 }))[0].id;
    await notes.close();
    return { bad, badEmbedder, storage, travel, plan, kinds };
  }).catch((error) => ({ error: String(error) }));
  assert.deepEqual(checks, {
    bad: 'InvalidInputError', badEmbedder: 'InvalidInputError', storage: 'indexeddb', travel: 'lisbon',
    plan: { index: 'kind', reads: 2 }, kinds: ['a', 'c'],
  });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("the exact model 'minilm' runs off the main thread: by name in openInWorker, and loadEmbedder in a plain Worker", async () => {
  const page = await fixturePage();
  const checks = await page.evaluate(async () => {
    const { openInWorker } = await import('/pkg/worker.js');
    const notes = await openInWorker('worker-exact', { storage: 'memory', embedder: 'minilm', embedFields: ['text'] });
    await notes.put('kids', { text: 'Pick up the kids from football practice at 5' });
    await notes.put('lisbon', { text: 'Book flights to Lisbon for the conference' });
    await notes.put('anna', { text: 'Buy a birthday present for Anna' });
    const travel = (await notes.search('travel plans', { k: 1 }))[0].id;
    const gift = (await notes.search('gift ideas', { k: 1 }))[0].id;
    const dimension = (await notes.indexStats()).dimension;
    await notes.close();
    // A plain module Worker of the app's own, with the package's loader.
    const source = `import { loadEmbedder } from '${new URL('/pkg/embedders.js', location.href)}';
      const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
      self.onmessage = async ({ data }) => {
        try {
          const embed = await loadEmbedder('minilm');
          const [question, answer, unrelated] = await embed(data);
          self.postMessage({ name: embed.modelName, close: dot(question, answer), far: dot(question, unrelated) });
        } catch (error) {
          self.postMessage({ error: String(error) });
        }
      };`;
    const worker = new Worker(URL.createObjectURL(new Blob([source], { type: 'text/javascript' })), { type: 'module' });
    const plain = await new Promise((resolve) => {
      worker.onmessage = ({ data }) => resolve(data);
      worker.onerror = (event) => resolve({ error: event.message });
      worker.postMessage(['How do I book a train ticket?', 'Buying railway tickets online', 'A recipe for lemon cake']);
    });
    worker.terminate();
    return { travel, gift, dimension, plain };
  }).catch((error) => ({ error: String(error) }));
  assert.equal(checks.error, undefined, checks.error);
  assert.equal(checks.travel, 'lisbon');
  assert.equal(checks.gift, 'anna');
  assert.equal(checks.dimension, 384);
  assert.equal(checks.plain.error, undefined, checks.plain.error);
  assert.equal(checks.plain.name, 'minilm@1');
  assert.ok(checks.plain.close > checks.plain.far + 0.2, JSON.stringify(checks.plain));
  assert.deepEqual(page.errors, []);
  await page.close();
});
