// `pluresdb/worker`: the same database API, with the database running in a
// dedicated Worker (see worker-host.js). Every method returns a promise;
// `watch` and `subscribe` call back on the page.
let nextId = 1;

function toError({ name, message }) {
  const error = new Error(message);
  error.name = name;
  return error;
}

/**
 * Opens `name` in a new dedicated worker. `options` are those of
 * `PluresDB.open`, except that `embedder` can only name a built-in
 * (`'hash'`, with `embedderDimension`, `'minilm'` or `'minilm-static'`, which then
 * loads and runs in the worker) and `onEmbedderProgress` is not available.
 */
export async function openInWorker(name, options = {}) {
  if (options.embedder !== undefined && typeof options.embedder !== 'string') {
    throw toError({
      name: 'InvalidInputError',
      message: "in a worker, `embedder` can only name a built-in, 'hash', 'minilm' or 'minilm-static' (functions cannot cross to a worker); " +
        'embed in the page and use putWithEmbedding, or open the database with PluresDB.open',
    });
  }
  if (options.onEmbedderProgress !== undefined) {
    options = { ...options };
    delete options.onEmbedderProgress;
  }
  const worker = new Worker(new URL('./worker-host.js', import.meta.url), { type: 'module' });
  const pending = new Map();
  const listeners = new Map();
  worker.onmessage = ({ data }) => {
    if (data.event !== undefined) {
      listeners.get(data.event)?.(data.value);
      return;
    }
    const call = pending.get(data.call);
    pending.delete(data.call);
    if (data.error) call?.reject(toError(data.error));
    else call?.resolve(data.value);
  };
  worker.onerror = (event) => {
    const error = toError({ name: 'PluresDBError', message: `the database worker failed: ${event.message}` });
    for (const call of pending.values()) call.reject(error);
    pending.clear();
  };
  const request = (method, ...args) => new Promise((resolve, reject) => {
    const call = nextId++;
    pending.set(call, { resolve, reject });
    worker.postMessage({ call, method, args });
  });
  const listen = (method, callback, ...args) => {
    const id = nextId++;
    listeners.set(id, callback);
    request(method, id, ...args).catch((error) => console.error(`PluresDB ${method} failed:`, error));
    return () => {
      listeners.delete(id);
      request('stop', id).catch(() => {});
    };
  };

  const { methods, ...info } = await request('open', name, options).catch((error) => {
    worker.terminate();
    throw error;
  });
  const db = { ...info, worker };
  for (const method of methods) db[method] = (...args) => request(method, ...args);
  Object.assign(db, {
    watch: (query, callback) => listen('watch', callback, query),
    subscribe: (callback) => listen('subscribe', callback),
    async close() {
      await request('close');
      worker.terminate();
    },
    async destroy() {
      await request('destroy');
      worker.terminate();
    },
  });
  return db;
}
