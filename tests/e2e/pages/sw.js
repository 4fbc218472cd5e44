// Service worker (module): PluresDB on IndexedDB from a ServiceWorker scope.
// Top-level await is not allowed in service workers: initialise lazily.
import init from '/pkg/pluresdb.js';
import { answer } from './rpc.js';

const ready = init();
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));
self.addEventListener('message', (event) => {
  const port = event.ports[0];
  event.waitUntil(ready.then(() => answer(event.data, (response) => port.postMessage(response))));
});
