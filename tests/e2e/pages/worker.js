// Dedicated (module) worker: PluresDB on IndexedDB from a Worker scope.
import init from '/pkg/pluresdb.js';
import { answer } from './rpc.js';

await init();
self.onmessage = ({ data }) => answer(data, (response) => self.postMessage(response));
self.postMessage({ ready: true });
