// The demo's service worker (a module worker):
// - caches the app shell and the npm package, and answers from the cache
//   when the network is down (network first, so updates arrive when online);
// - opens the notes database itself and pushes changes made offline to the
//   relay on a Background Sync `sync` event (tag `pluresdb:<database>`), or
//   on a `{ type: 'push', db }` message where Background Sync is missing.
import init, { PluresDB } from '/pkg/pluresdb.js';

const CACHE = 'pluresdb-demo-v2';
const SHELL = [
  '/', '/index.html', '/app.js', '/style.css', '/manifest.webmanifest',
  '/icons/icon-192.png', '/icons/icon-512.png',
  '/pkg/pluresdb.js', '/pkg/pluresdb_bg.wasm',
  // The built-in search model, so that search works offline from the start.
  '/pkg/models/minilm-static/vocab.txt', '/pkg/models/minilm-static/embeddings.bin',
];
const relayUrl = `${self.location.protocol === 'https:' ? 'wss' : 'ws'}://${self.location.host}/relay`;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

function cacheable(request) {
  const url = new URL(request.url);
  return request.method === 'GET' && url.origin === self.location.origin &&
    !url.pathname.startsWith('/relay') && !url.pathname.startsWith('/api/');
}

self.addEventListener('fetch', (event) => {
  if (!cacheable(event.request)) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(event.request);
      if (response.ok) await cache.put(event.request, response.clone());
      return response;
    } catch (error) {
      const cached = await cache.match(event.request, { ignoreSearch: true }) ??
        (event.request.mode === 'navigate' ? await cache.match('/') : undefined);
      if (cached) return cached;
      throw error;
    }
  })());
});

let ready;
async function loadPackage() {
  ready ??= (async () => {
    const cached = await caches.match('/pkg/pluresdb_bg.wasm');
    await init({ module_or_path: cached ?? fetch('/pkg/pluresdb_bg.wasm') });
  })();
  return ready;
}

/**
 * Opens `name`, connects to the relay and waits until everything written
 * offline is stored by it (then the relay delivers it to the other devices).
 * Throws when it cannot, so Background Sync tries again later.
 */
async function pushPending(name) {
  await loadPackage();
  const db = await PluresDB.open(name);
  try {
    db.sync(relayUrl);
    const deadline = Date.now() + 25_000;
    for (;;) {
      const status = db.syncStatus();
      if (status.state === 'synced') return status;
      if (Date.now() > deadline) {
        throw new Error(`the relay did not confirm (${status.state}: ${status.lastError ?? 'no answer'})`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    db.stopSync();
    await db.close();
  }
}

self.addEventListener('sync', (event) => {
  if (event.tag.startsWith('pluresdb:')) event.waitUntil(pushPending(event.tag.slice('pluresdb:'.length)));
});

self.addEventListener('message', (event) => {
  const message = event.data ?? {};
  const reply = (body) => (event.ports[0] ?? event.source)?.postMessage(body);
  if (message.type === 'push' && typeof message.db === 'string') {
    event.waitUntil(pushPending(message.db).then(
      (status) => reply({ type: 'pushed', db: message.db, status }),
      (error) => reply({ type: 'push-failed', db: message.db, error: String(error.message ?? error) }),
    ));
  } else if (message.type === 'cache' && Array.isArray(message.urls)) {
    const urls = [...new Set(message.urls)].filter((url) => cacheable(new Request(url)));
    event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(urls)).then(
      () => reply({ type: 'cached', count: urls.length }),
      (error) => reply({ type: 'cache-failed', error: String(error) }),
    ));
  }
});
