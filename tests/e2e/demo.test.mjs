// The demo PWA (`www/`) served by `pluresdb serve`, driven in headless
// Chromium like a user would: notes found by meaning, an offline reload from
// the service worker's cache, two tabs updating each other, two browsers
// joined by the invite link syncing through the relay, offline edits on both
// converging (with the conflict shown and resolved), and the service worker
// pushing offline edits on a Background Sync event after the page is gone.
// The server is stopped and restarted on the same port to take the network
// away for real.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, launchBrowser, openPage, root } from './harness.mjs';

let server;
let first; // the first device
let second; // another device, joined through the invite link
const notes = [
  'Buy oat milk, eggs and bread at the grocery store',
  'Dentist appointment on Tuesday at 3pm',
  'Birthday party ideas: balloons, chocolate cake and a playlist',
  'Fix the leaking kitchen faucet this weekend',
  'Read chapter four of the Rust async book',
];

before(async () => {
  server = await startServer();
  first = await launchBrowser();
});

after(async () => {
  await first?.close();
  await second?.close();
  await server?.stop();
});

async function stopServer() {
  await server.stop({ keepData: true });
}

async function restartServer() {
  server = await startServer([], { port: server.port, scratch: server.scratch });
}

function openApp(browser, url = `${server.url}/`) {
  return openPage(browser.context, url, { viewport: { width: 960, height: 1000 } });
}

/** The notes' texts as the page lists them. */
function noteTexts(page) {
  return page.$$eval('#notes li .text', (items) => items.map((item) => item.textContent));
}

/** Polls `check()` until it returns true (30 s). */
async function eventually(check, what) {
  const start = Date.now();
  const deadline = start + 30_000;
  for (;;) {
    if (await check()) {
      if (process.env.DEBUG_E2E) console.log(`${what}: ${Date.now() - start} ms`);
      return;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function addNote(page, text) {
  await page.fill('#note-text', text);
  await page.click('#note-form button[type="submit"]');
  await page.waitForFunction((t) => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent === t), text);
}

async function searchFor(page, query) {
  await page.fill('#search', query);
  await page.waitForFunction(() => document.querySelector('#search-hint').textContent !== '');
  await page.waitForTimeout(300); // the debounce, then results for the final text
  return page.$$eval('#results li', (items) => items.map((item) => ({
    score: Number(item.querySelector('.score').textContent),
    text: item.querySelector('.text').textContent,
  })));
}

let main;

test('notes are created with the keyboard and found by meaning', async () => {
  main = await openApp(first);
  assert.match(await main.textContent('#status'), /0 notes, stored in indexeddb/);
  for (const text of notes.slice(0, 4)) await addNote(main, text);
  // Keyboard only: focus the editor, type, Ctrl+Enter.
  await main.focus('#note-text');
  await main.keyboard.type(notes[4]);
  await main.keyboard.press('Control+Enter');
  await main.waitForFunction(() => document.querySelectorAll('#notes li').length === 5);
  assert.deepEqual((await noteTexts(main)).sort(), [...notes].sort());
  assert.match(await main.textContent('#status'), /5 notes/);

  for (const [query, expected] of [
    ['groceries to buy', notes[0]],
    ['cake for the party', notes[2]],
    ['the faucet is leaking', notes[3]],
    ['when is my dentist visit', notes[1]],
    ['async rust', notes[4]],
  ]) {
    const hits = await searchFor(main, query);
    assert.equal(hits[0]?.text, expected, `best hit for "${query}": ${JSON.stringify(hits)}`);
    for (const hit of hits) assert.ok(hit.score > 0 && hit.score <= 1, `score in (0, 1]: ${hit.score}`);
    const scores = hits.map((hit) => hit.score);
    assert.deepEqual(scores, [...scores].sort((a, b) => b - a), 'best first');
  }

  // Edit through the UI (Ctrl+Enter saves) and delete.
  const faucet = main.locator('#notes li', { hasText: 'faucet' });
  await faucet.locator('.edit').click();
  await main.keyboard.press('Control+A');
  await main.keyboard.type('Fix the leaking kitchen faucet on Saturday');
  await main.keyboard.press('Control+Enter');
  await main.waitForFunction(() => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent.endsWith('on Saturday')));
  const hits = await searchFor(main, 'faucet saturday');
  assert.equal(hits[0].text, 'Fix the leaking kitchen faucet on Saturday');
  await main.locator('#notes li', { hasText: 'Dentist' }).locator('.delete').click();
  await main.waitForFunction(() => document.querySelectorAll('#notes li').length === 4);
  await main.fill('#search', '');
  assert.deepEqual(main.errors, []);
});

test('search finds notes by meaning with the built-in model: "travel plans" finds the flights', async () => {
  const meaning = [
    'Pick up the kids from football practice at 5',
    'Book flights to Lisbon for the conference',
    'Buy a birthday present for Anna',
  ];
  for (const text of meaning) await addNote(main, text);
  // No word in common with the note each query should find.
  for (const [query, expected] of [['travel plans', meaning[1]], ['soccer', meaning[0]]]) {
    const hits = await searchFor(main, query);
    assert.equal(hits[0]?.text, expected, `best hit for "${query}": ${JSON.stringify(hits)}`);
  }
  assert.equal(await main.evaluate(() => localStorage.getItem('pluresdb-demo:embedder:notes')), 'minilm-static');
  for (const text of meaning) await main.locator('#notes li', { hasText: text }).locator('.delete').click();
  await main.fill('#search', '');
  assert.deepEqual(main.errors, []);
});

test('the installable shell works offline: a reload without the server shows every note', async () => {
  const manifest = await (await fetch(`${server.url}/manifest.webmanifest`)).json();
  assert.equal(manifest.display, 'standalone');
  assert.deepEqual(manifest.icons.map((icon) => icon.sizes), ['192x192', '512x512']);
  for (const icon of manifest.icons) {
    const response = await fetch(new URL(icon.src, `${server.url}/`));
    assert.equal(response.headers.get('content-type'), 'image/png');
  }
  await main.waitForSelector('body[data-offline-ready="true"]', { state: 'attached' });
  await eventually(() => main.evaluate(async () => {
    const cache = await caches.open('pluresdb-demo-v2');
    const cached = (await cache.keys()).map((request) => new URL(request.url).pathname);
    return navigator.serviceWorker.controller !== null && cached.some((path) => path.includes('/snippets/'));
  }), 'the service worker to control the page and cache the package');
  const before = (await noteTexts(main)).sort();

  await stopServer();
  await main.reload();
  await main.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  assert.deepEqual((await noteTexts(main)).sort(), before);
  await eventually(async () => ['offline', 'connecting'].includes(await main.getAttribute('#sync-state', 'data-state')), 'an offline sync state');
  // Editing offline works and is kept.
  await addNote(main, 'Written while the server was down');
  await restartServer();
  await eventually(async () => (await main.getAttribute('#sync-state', 'data-state')) === 'synced', 'synced after the server came back');
  assert.deepEqual(main.errors, []);
});

test('two tabs of one browser update each other live', async () => {
  const other = await openApp(first);
  assert.deepEqual((await noteTexts(other)).sort(), (await noteTexts(main)).sort());
  await addNote(main, 'Seen in the other tab');
  await other.waitForFunction(() => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent === 'Seen in the other tab'));
  await other.locator('#notes li', { hasText: 'Seen in the other tab' }).locator('.delete').click();
  await main.waitForFunction(() => ![...document.querySelectorAll('#notes .text')].some((e) => e.textContent === 'Seen in the other tab'));
  assert.deepEqual(other.errors, []);
  await other.close();
});

let device;

test('another browser opens the invite link and both sync live through the relay', async () => {
  const link = await main.inputValue('#invite-link');
  assert.match(link, /^http:\/\/127\.0\.0\.1:\d+\/#invite=pluresdb1\./);
  second = await launchBrowser();
  device = await openApp(second, link);
  assert.equal(new URL(device.url()).hash, '', 'the invite leaves the address bar');
  const expected = (await noteTexts(main)).sort();
  await eventually(async () => JSON.stringify((await noteTexts(device)).sort()) === JSON.stringify(expected), 'the notes on the second device');
  await addNote(device, 'Added on the second device');
  await main.waitForFunction(() => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent === 'Added on the second device'));
  await eventually(async () => {
    if (process.env.DEBUG_E2E) console.log(await main.evaluate(() => JSON.stringify(globalThis.pluresdb.db.syncStatus())), await main.textContent('#sync-text'));
    return /Synced · [1-9]\d* other device/.test(await main.textContent('#sync-text'));
  }, 'a peer in the sync state');
  // The second device searches what the first wrote.
  const hits = await searchFor(device, 'grocery shopping');
  assert.equal(hits[0].text, notes[0]);
  // The reloaded second device stays in the shared database.
  await device.reload();
  await device.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  assert.equal(await device.inputValue('#invite-link'), link);
  assert.deepEqual(device.errors, []);
});

test('offline edits on both devices converge, with the conflict shown and resolved', async () => {
  await stopServer();
  await eventually(async () => (await main.getAttribute('#sync-state', 'data-state')) !== 'synced', 'the first device to notice');
  const edit = async (page, text) => {
    await page.locator('#notes li', { hasText: 'Birthday party' }).locator('.edit').click();
    await page.fill('#notes .editor', text);
    await page.locator('#notes li .edit', { hasText: 'Save' }).click();
    await page.waitForFunction((t) => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent === t), text);
  };
  await edit(main, 'Birthday party: balloons and cake (first device)');
  await edit(device, 'Birthday party: pizza and a playlist (second device)');
  await addNote(main, 'Offline on the first device');
  await addNote(device, 'Offline on the second device');
  await restartServer();

  const converged = async () => {
    const [a, b] = [(await noteTexts(main)).sort(), (await noteTexts(device)).sort()];
    return JSON.stringify(a) === JSON.stringify(b) && a.includes('Offline on the first device') && a.includes('Offline on the second device');
  };
  await eventually(converged, 'both devices to have every note');
  for (const page of [main, device]) {
    await page.waitForSelector('#conflicts-section:not([hidden]) .conflict');
  }
  const versions = (page) => page.$$eval('#conflicts .version p:not(.meta)', (items) => items.map((item) => item.textContent));
  const [va, vb] = [await versions(main), await versions(device)];
  assert.deepEqual(va, vb, 'the same winner and losing version on both');
  assert.deepEqual([...va].sort(), [
    'Birthday party: balloons and cake (first device)',
    'Birthday party: pizza and a playlist (second device)',
  ]);

  mkdirSync(join(root, 'docs'), { recursive: true });
  await main.fill('#search', 'party cake');
  await main.waitForSelector('#results li');
  await main.screenshot({ path: join(root, 'docs', 'demo-screenshot.png'), fullPage: true });
  await main.fill('#search', '');

  // Keeping the second device's version resolves it everywhere.
  await main.locator('#conflicts .version', { hasText: '(second device)' }).getByRole('button', { name: /Keep the version/ }).click();
  for (const page of [main, device]) {
    await page.waitForSelector('#conflicts-section[hidden]', { state: 'attached' });
    await page.waitForFunction(() => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent.includes('(second device)')));
  }
  assert.deepEqual(main.errors, []);
  assert.deepEqual(device.errors, []);
});

test('the service worker pushes offline edits on a Background Sync event after the page closed', async () => {
  await stopServer();
  await eventually(async () => (await main.getAttribute('#sync-state', 'data-state')) !== 'synced', 'the first device to notice');
  await addNote(main, 'Pushed by the service worker');
  const tags = await main.evaluate(async () => (await navigator.serviceWorker.ready).sync.getTags());
  assert.ok(tags.includes('pluresdb:notes'), `a sync registration: ${tags}`);
  // The page goes away: only the service worker can send the note now.
  const blank = await first.context.newPage();
  await main.close();
  await restartServer();

  const cdp = await first.context.newCDPSession(blank);
  // The first update may list no registration yet: wait for ours.
  const registered = new Promise((resolve) => cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
    const ours = registrations.find((r) => r.scopeURL.startsWith(server.url) && !r.isDeleted);
    if (ours) resolve(ours);
  }));
  await cdp.send('ServiceWorker.enable');
  const registration = await registered;
  await cdp.send('ServiceWorker.dispatchSyncEvent', {
    origin: server.url, registrationId: registration.registrationId, tag: 'pluresdb:notes', lastChance: false,
  });
  await device.waitForFunction(() => [...document.querySelectorAll('#notes .text')].some((e) => e.textContent === 'Pushed by the service worker'), null, { timeout: 30_000 });

  // Where Background Sync is missing, the page asks by message.
  main = await openApp(first);
  const reply = await main.evaluate(async () => {
    const registration = await navigator.serviceWorker.ready;
    const channel = new MessageChannel();
    const answer = new Promise((resolve) => { channel.port1.onmessage = (event) => resolve(event.data); });
    registration.active.postMessage({ type: 'push', db: 'notes' }, [channel.port2]);
    return answer;
  });
  assert.equal(reply.type, 'pushed', JSON.stringify(reply));
  assert.equal(reply.status.state, 'synced');
  await cdp.detach();
  await blank.close();
});

test('a configured embedding model gets a database of its own, with the notes copied and searchable', async () => {
  // A stand-in for a model server (none can run here): it answers in the
  // OpenAI embeddings format with 128-d hashed features, another dimension
  // than the built-in embedder's 256.
  const { hashEmbed } = await import('../../pkg/node.js');
  const endpoint = `${server.url}/test-model/embeddings`;
  let calls = 0;
  await first.context.route(endpoint, async (route) => {
    calls += 1;
    const { input } = route.request().postDataJSON();
    await route.fulfill({
      contentType: 'application/json',
      body: JSON.stringify({ data: hashEmbed(input, 128).map((v) => ({ embedding: Array.from(v) })) }),
    });
  });
  const before = (await noteTexts(main)).sort();
  await main.click('#share-heading ~ details summary');
  await main.fill('#model-url', endpoint);
  await Promise.all([main.waitForEvent('load'), main.click('#model-form button')]);
  await main.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  assert.match(await main.evaluate(() => globalThis.pluresdb.dbName), /^notes~/);
  assert.deepEqual((await noteTexts(main)).sort(), before);
  const hits = await searchFor(main, 'bread from the grocery store');
  assert.equal(hits[0].text, notes[0]);
  assert.ok(calls >= 2, `the model embedded the notes and the query (${calls} calls)`);
  assert.equal(await main.evaluate(() => globalThis.pluresdb.db.indexStats().dimension), 128);
  await first.context.unroute(endpoint);
});

test('the server answers with the right content types', async () => {
  const wasm = await fetch(`${server.url}/pkg/pluresdb_bg.wasm`);
  assert.equal(wasm.status, 200);
  assert.equal(wasm.headers.get('content-type'), 'application/wasm');
  const manifest = await fetch(`${server.url}/manifest.webmanifest`);
  assert.equal(manifest.headers.get('content-type'), 'application/manifest+json');
  const missing = await fetch(`${server.url}/no-such-file`);
  assert.equal(missing.status, 404);
});
