// The Worker side of `pluresdb/worker`: opens one database in this dedicated
// worker and answers the page's calls, so indexing, sealing vector segments
// and large imports never block the page. Started by `openInWorker`.
import init, { PluresDB } from './pluresdb.js';

let db;
const stops = new Map(); // watch/subscribe id -> stop function
// The database methods the page may call (open tells the page this list).
const methods = new Set([
  'put', 'putMany', 'get', 'delete', 'list', 'query', 'explain', 'conflicts', 'search', 'putWithEmbedding',
  'indexStats', 'flushIndex', 'createInvite', 'sync', 'stopSync', 'syncStatus', 'close', 'destroy',
]);

function errorMessage(error) {
  return { name: error?.name ?? 'PluresDBError', message: error?.message ?? String(error) };
}

const calls = {
  async open(name, options = {}) {
    await init();
    // A built-in embedder by name ('hash', 'minilm', 'minilm-static') is resolved
    // here, so texts are embedded in this worker, off the page's thread.
    if (options.embedder !== undefined && typeof options.embedder !== 'string') {
      throw Object.assign(new Error("in a worker, `embedder` is a built-in's name, 'hash', 'minilm' or 'minilm-static' (functions cannot cross to a worker)"), { name: 'InvalidInputError' });
    }
    // The worker answers each call once the database is loaded (the page
    // is never blocked by the load either way).
    db = await PluresDB.open(name, { ...options, loadInBackground: false });
    return { name: db.name, actorId: db.actorId, storageKind: db.storageKind, methods: [...methods] };
  },
  watch(id, query) {
    stops.set(id, db.watch(query, (records) => self.postMessage({ event: id, value: records })));
  },
  subscribe(id) {
    stops.set(id, db.subscribe((change) => self.postMessage({ event: id, value: change })));
  },
  stop(id) {
    stops.get(id)?.();
    stops.delete(id);
  },
};

self.onmessage = async ({ data: { call, method, args = [] } }) => {
  try {
    let value;
    if (calls[method]) value = await calls[method](...args);
    else if (!db) throw Object.assign(new Error('the database is not open'), { name: 'ClosedError' });
    else if (methods.has(method)) value = await db[method](...args);
    else throw Object.assign(new Error(`unknown method ${method}`), { name: 'InvalidInputError' });
    self.postMessage({ call, value });
  } catch (error) {
    self.postMessage({ call, error: errorMessage(error) });
  }
};
