// Small promise adapters for IndexedDB, Web Locks and BroadcastChannel, used by
// src/storage/indexeddb.rs. They use the global scope (Window, Worker or
// ServiceWorker), never `window`. All logic stays in Rust; these only turn
// events into promises.

export function hasIndexedDb() {
  return typeof globalThis.indexedDB !== 'undefined' && globalThis.indexedDB !== null;
}

// Opens (and creates or upgrades) a database. `upgrade(db, oldVersion, tx)` runs
// inside the versionchange transaction. Rejects with the DOMException; a
// blocked upgrade rejects with a DOMException named 'UpgradeBlockedError'
// after `blockedTimeoutMs`.
export function openDatabase(name, version, upgrade, blockedTimeoutMs) {
  return new Promise((resolve, reject) => {
    let request;
    try {
      request = globalThis.indexedDB.open(name, version);
    } catch (error) {
      reject(error);
      return;
    }
    let blockedTimer = null;
    let settled = false;
    request.onupgradeneeded = (event) => {
      try {
        upgrade(request.result, event.oldVersion, request.transaction);
      } catch (error) {
        request.transaction.abort();
        reject(error);
      }
    };
    request.onblocked = () => {
      blockedTimer = setTimeout(() => {
        settled = true;
        reject(new DOMException(
          'the upgrade is blocked by another open connection', 'UpgradeBlockedError'));
      }, blockedTimeoutMs);
    };
    request.onsuccess = () => {
      if (blockedTimer !== null) clearTimeout(blockedTimer);
      // Opened after the caller gave up (the blocker closed later): close it,
      // or this connection would block the next upgrade in turn.
      if (settled) {
        request.result.close();
        return;
      }
      resolve(request.result);
    };
    request.onerror = () => {
      if (blockedTimer !== null) clearTimeout(blockedTimer);
      reject(request.error);
    };
  });
}

export function deleteDatabase(name) {
  return new Promise((resolve, reject) => {
    const request = globalThis.indexedDB.deleteDatabase(name);
    request.onsuccess = () => resolve();
    request.onerror = () => reject(request.error);
    request.onblocked = () => {};
  });
}

export function requestPromise(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export function transactionPromise(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onabort = () => reject(
      transaction.error ?? new DOMException('the transaction was aborted', 'AbortError'));
  });
}

// Starts a read-write transaction over `names`, by default with strict
// durability: its "complete" event fires only once the data is flushed to
// disk, so a write acknowledged to the caller survives the browser or the
// machine dying right after. `relaxed` asks for the browsers' default, which
// may report completion before the flush.
export function beginWrite(db, names, relaxed) {
  return db.transaction(names, 'readwrite', { durability: relaxed ? 'relaxed' : 'strict' });
}


// The optimistic commit (ARCHITECTURE.md, "IndexedDB: one chunk per commit")
// in one call: a write transaction over `names` (the records store first)
// asks for the first key at or above `key` and, in the same transaction
// before the answer comes, puts `chunk` under `key`. Requests run in order,
// so the read sees the store as it was before the write: a key found means
// another instance committed since, and the read's success handler aborts
// the transaction before anything of it lands. Deciding here saves the
// WebAssembly side a promise and a wake-up per commit. Returns
// [transaction, outcome]: more writes may be queued on the transaction
// right away; `outcome` resolves to true once the transaction committed, to
// false when it was aborted for a newer chunk, and rejects with the error
// of any other failure.
export function beginOptimisticCommit(db, names, relaxed, key, chunk) {
  const transaction = beginWrite(db, names, relaxed);
  let newer = false;
  const outcome = new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve(true);
    transaction.onabort = () => {
      if (newer) resolve(false);
      else reject(transaction.error ?? new DOMException('the transaction was aborted', 'AbortError'));
    };
  });
  try {
    const records = transaction.objectStore(names[0]);
    const probe = records.getKey(IDBKeyRange.lowerBound(key));
    probe.onsuccess = () => {
      if (probe.result !== undefined) {
        newer = true;
        transaction.abort();
      }
    };
    records.put(chunk, key);
  } catch (error) {
    outcome.catch(() => {});
    try { transaction.abort(); } catch { /* already finished */ }
    throw error;
  }
  return [transaction, outcome];
}

// Reads whole stores as [keys, values] in key order, in one transaction
// together with the number of values in each store of `counted` (appended
// to the result after the pairs). Async, as every reader here returns a
// promise that rejects rather than throwing: a transaction that cannot start
// (a closed connection) must reach Rust as an error, never as an exception
// unwinding through WebAssembly.
export async function readStores(db, names, counted) {
  const transaction = db.transaction([...names, ...counted], 'readonly');
  return Promise.all([
    ...names.map((name) => {
      const store = transaction.objectStore(name);
      const keys = store.getAllKeys();
      return Promise.all([requestPromise(keys), readPaged(store, keys)]);
    }),
    ...counted.map((name) => requestPromise(transaction.objectStore(name).count())),
  ]);
}

// About this many bytes of values are read by each request of a paged read.
const PAGE_BYTES = 1 << 20;
// Requests of a paged read in flight at once: while one page is handed to
// the page's thread, IndexedDB reads the next (a million notes opened in
// 1.09–1.35 s against 1.41–1.52 with one; four or eight were no faster).
const PAGES_IN_FLIGHT = 2;

// Every value of `store` in key order (the keys `keysRequest` lists), read
// a page of about PAGE_BYTES at a time, PAGES_IN_FLIGHT requests at once:
// another transaction's read (a `get` while a large database loads in the
// background) is served after the pages in flight instead of after one
// request of the whole store.
function readPaged(store, keysRequest) {
  return new Promise((resolve, reject) => {
    const values = [];
    keysRequest.addEventListener('success', () => {
      const keys = keysRequest.result;
      let count = 16;
      let from = 0;
      let inFlight = 0;
      const request = () => {
        if (from >= keys.length) {
          if (inFlight === 0) resolve(values);
          return;
        }
        const first = from;
        const to = Math.min(first + count, keys.length) - 1;
        from = to + 1;
        inFlight += 1;
        const page = store.getAll(IDBKeyRange.bound(keys[first], keys[to]));
        page.onerror = () => reject(page.error);
        page.onsuccess = () => {
          inFlight -= 1;
          let bytes = 0;
          for (const value of page.result) {
            values.push(value);
            bytes += value?.byteLength ?? 64;
          }
          const average = Math.max(1, bytes / Math.max(1, page.result.length));
          count = Math.max(1, Math.min(65536, Math.round(PAGE_BYTES / average)));
          request();
        };
      };
      for (let i = 0; i < PAGES_IN_FLIGHT; i++) request();
    });
  });
}

// The keys of each store of `names`, read in one transaction.
export async function readKeys(db, names) {
  const transaction = db.transaction(names, 'readonly');
  return Promise.all(names.map((name) => requestPromise(transaction.objectStore(name).getAllKeys())));
}

// Creates the id lists (schema 5): a store whose value under a chunk's key
// is { ids: [...] }, the ids that chunk's entries name, and a multiEntry
// index over them, so the chunks holding an id are found by the index.
export function createIdLists(db, name) {
  db.createObjectStore(name).createIndex('id', 'ids', { multiEntry: true });
}

// Queues the id list of the chunk under `key`: `joined` is the ids, each
// followed by a newline (ids hold no control characters).
export function putIdList(store, key, joined) {
  const ids = joined.split('\n');
  ids.pop();
  store.put({ ids }, key);
}

// Reads every chunk that holds an entry of one of the ids in `joined` (each
// followed by a newline), in one read-only transaction: the id lists' index
// gives the chunks' keys, then the chunks are read. Resolves to [keys,
// values] in key order, as `getAll` would list them.
//
// With `onlyIfListed`, resolves to null instead unless the lists name every
// chunk: no value is a row stored one per record (string keys, which sort
// before arrays) and the oldest part has its list. Lists are kept from the
// first listed part on (every part written after one exists is listed: a
// writer meets it first), and the parts before are listed all at once (one
// list pass, or a full compaction), so the oldest part's list is enough,
// and costs two small requests where counting both stores read them whole.
export function readChunksHolding(db, recordsName, idsName, joined, onlyIfListed) {
  return new Promise((resolve, reject) => {
    const transaction = readOnly(db, [recordsName, idsName], reject);
    if (!transaction) return;
    const ids = joined.split('\n');
    ids.pop();
    const records = transaction.objectStore(recordsName);
    const lists = transaction.objectStore(idsName);
    const index = lists.index('id');
    const found = new Map();
    let pending = ids.length;
    let listed = onlyIfListed ? null : true;
    const readChunks = () => {
      if (pending !== 0 || listed === null) return;
      if (!listed) {
        resolve(null);
        return;
      }
      const keys = [...found.values()].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      getEach(records, keys, (values) => resolve([keys, values]));
    };
    if (pending === 0) {
      resolve([[], []]);
      return;
    }
    if (onlyIfListed) {
      whetherEveryPartIsListed(records, lists, (answer) => {
        listed = answer;
        readChunks();
      });
    }
    for (const id of ids) {
      const lookup = index.getAllKeys(id);
      lookup.onsuccess = () => {
        for (const key of lookup.result) found.set(`${key[0]}/${key[1]}`, key);
        pending -= 1;
        readChunks();
      };
    }
  });
}

// A read-only transaction over `names` whose abort calls `reject` with its
// error; null, `reject` called, when it cannot start (a closed connection).
function readOnly(db, names, reject) {
  try {
    const transaction = db.transaction(names, 'readonly');
    transaction.onabort = () => reject(
      transaction.error ?? new DOMException('the transaction was aborted', 'AbortError'));
    return transaction;
  } catch (error) {
    reject(error);
    return null;
  }
}

// Calls `done(true)` when the id lists name every chunk of the records
// store (see `readChunksHolding`), `done(false)` otherwise.
function whetherEveryPartIsListed(records, lists, done) {
  const unchunked = records.count(IDBKeyRange.upperBound([], true));
  const oldest = records.getAllKeys(null, 1);
  oldest.onsuccess = () => {
    if (unchunked.result !== 0 || oldest.result.length === 0) {
      done(false);
      return;
    }
    const list = lists.count(oldest.result[0]);
    list.onsuccess = () => done(list.result === 1);
  };
}

// The first `count` ids in order from `from` (after it when `after`) that
// start with `prefix`, as the id lists' index names them, and every chunk
// holding an entry of one of them, in one read-only transaction. Resolves
// to [ids, keys, values, more] (`more`: the index holds further ids under
// the prefix), or to null unless the lists name every chunk.
export function readListedFrom(db, recordsName, idsName, from, after, prefix, count) {
  return new Promise((resolve, reject) => {
    const transaction = readOnly(db, [recordsName, idsName], reject);
    if (!transaction) return;
    const records = transaction.objectStore(recordsName);
    const lists = transaction.objectStore(idsName);
    whetherEveryPartIsListed(records, lists, (listed) => {
      if (!listed) {
        resolve(null);
        return;
      }
      const ids = [];
      const found = new Map();
      const cursor = lists.index('id').openKeyCursor(IDBKeyRange.lowerBound(from, after));
      const finish = (more) => {
        const keys = [...found.values()].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
        getEach(records, keys, (values) => resolve([ids, keys, values, more]));
      };
      cursor.onsuccess = () => {
        const at = cursor.result;
        if (!at || typeof at.key !== 'string' || !at.key.startsWith(prefix)) {
          finish(false);
          return;
        }
        if (at.key !== ids[ids.length - 1]) {
          if (ids.length === count) {
            finish(true);
            return;
          }
          ids.push(at.key);
        }
        const key = at.primaryKey;
        found.set(`${key[0]}/${key[1]}`, key);
        at.continue();
      };
    });
  });
}

// Reads the values under `keys` (undefined where there is none) in one
// read-only transaction of `storeName`; resolves to them in that order.
export function readValues(db, storeName, keys) {
  return new Promise((resolve, reject) => {
    const transaction = readOnly(db, storeName, reject);
    if (!transaction) return;
    getEach(transaction.objectStore(storeName), keys, resolve);
  });
}

// Requests every key of `keys` from `store` at once and calls `done` with
// the values, in order, once all are in.
function getEach(store, keys, done) {
  const values = new Array(keys.length);
  let left = keys.length;
  if (left === 0) {
    done(values);
    return;
  }
  keys.forEach((key, at) => {
    const read = store.get(key);
    read.onsuccess = () => {
      values[at] = read.result;
      if (--left === 0) done(values);
    };
  });
}

// Takes the first free lock named `${prefix}${n}`, n = 0, 1, 2, ...; resolves
// to [n, release] where calling release() frees the lock. Without the Web
// Locks API (pages outside a secure context) resolves to [-1, () => {}]: no
// slot can be held, and the caller writes under a fresh actor.
export async function acquireSlotLock(prefix) {
  const locks = globalThis.navigator && globalThis.navigator.locks;
  if (!locks) return [-1, () => {}];
  for (let n = 0; ; n++) {
    const release = await new Promise((resolve, reject) => {
      locks.request(`${prefix}${n}`, { ifAvailable: true }, (lock) => {
        if (!lock) {
          resolve(null);
          return undefined;
        }
        return new Promise((done) => resolve(done));
      }).catch(reject);
    });
    if (release) return [n, release];
  }
}

// Other instances of one database (tabs, workers, service workers) learn of
// each other's commits on a BroadcastChannel. Posting costs an awaited put
// noticeably even after it resolved (about a seventh of its time, 1 KB
// documents), so an instance that knows of no other posts nothing:
//
// - Joining (when the storage opens, before it loads) posts 'hello'; an
//   instance that hears 'hello' answers 'here'. Hearing either means others
//   exist, and from then on every commit is posted.
// - While alone, an instance keeps what it would have posted in the last
//   REPLAY_MS (at most REPLAY_BYTES) and posts it on first hearing of
//   another: a newcomer's load may have started before a commit whose
//   message was skipped, and its 'hello' arrives within milliseconds, far
//   inside that window. Merging a message twice changes nothing.
// - Messages are posted after the current task, so a write's promise
//   resolves (and the app's next write starts its transaction) first.
//   Messages still waiting are posted when the page is hidden or the
//   channel closes; one lost to a worker being killed only delays other
//   instances (they read storage anyway).
const REPLAY_MS = 5000;
const REPLAY_BYTES = 8 * 1024 * 1024;
const unposted = new Set();
let flushScheduled = false;

function postAll(only) {
  for (const peer of unposted) {
    if (only && peer !== only) continue;
    unposted.delete(peer);
    for (const message of peer.outbox.splice(0)) {
      try {
        peer.channel.postMessage(message);
      } catch {
        // A closed channel: other instances read storage anyway.
      }
    }
  }
}

function flushAnnouncements() {
  flushScheduled = false;
  postAll(null);
}

function post(peer, message) {
  peer.outbox.push(message);
  unposted.add(peer);
  if (!flushScheduled) {
    flushScheduled = true;
    setTimeout(flushAnnouncements, 0);
  }
}

function heardOfOthers(peer) {
  if (peer.others) return;
  peer.others = true;
  const since = performance.now() - REPLAY_MS;
  peer.recentBytes = 0;
  for (const [at, message] of peer.recent.splice(0)) {
    if (at >= since) post(peer, message);
  }
}

// Joins the channel `name`: null where there is no BroadcastChannel.
export function joinChannel(name) {
  if (typeof globalThis.BroadcastChannel === 'undefined') return null;
  const peer = {
    channel: new BroadcastChannel(name),
    others: false,
    recent: [],
    recentBytes: 0,
    outbox: [],
    received: [],
    receivedBytes: 0,
    onMessage: null,
  };
  peer.channel.onmessage = (event) => {
    const data = event.data;
    if (data instanceof Uint8Array) {
      if (peer.onMessage) {
        peer.onMessage(data);
        return;
      }
      // Kept until the database listens (bounded: the oldest go first).
      peer.received.push(data);
      peer.receivedBytes += data.length;
      while (peer.receivedBytes > REPLAY_BYTES) peer.receivedBytes -= peer.received.shift().length;
    } else if (data === 'hello') {
      peer.channel.postMessage('here');
      heardOfOthers(peer);
    } else if (data === 'here') {
      heardOfOthers(peer);
    }
  };
  peer.channel.postMessage('hello');
  return peer;
}

// Hands received messages to `onMessage`, those that came before first.
export function listenChannel(peer, onMessage) {
  peer.onMessage = onMessage;
  peer.receivedBytes = 0;
  for (const message of peer.received.splice(0)) onMessage(message);
}

export function announceSoon(peer, message) {
  if (peer.others) {
    post(peer, message);
    return;
  }
  const now = performance.now();
  peer.recent.push([now, message]);
  peer.recentBytes += message.length;
  while (peer.recent.length && (peer.recent[0][0] < now - REPLAY_MS || peer.recentBytes > REPLAY_BYTES)) {
    peer.recentBytes -= peer.recent.shift()[1].length;
  }
}

export function closeChannel(peer) {
  postAll(peer);
  peer.channel.close();
}

if (typeof globalThis.addEventListener === 'function') {
  globalThis.addEventListener('pagehide', flushAnnouncements);
}

// The global scope's StorageManager, where it has one: whether the origin's
// storage is persistent (asking for it first when `requestPersist` and the
// scope can ask: `persist()` exists in pages, not in workers), and how much
// of the quota is used. Resolves to { persisted, requested, usage, quota }
// with null for what the scope cannot tell.
export async function storageHealth(requestPersist) {
  const storage = globalThis.navigator && globalThis.navigator.storage;
  const health = { persisted: null, requested: false, usage: null, quota: null };
  if (!storage) return health;
  try {
    if (typeof storage.persisted === 'function') health.persisted = await storage.persisted();
    if (requestPersist && health.persisted === false && typeof storage.persist === 'function') {
      health.requested = true;
      health.persisted = await storage.persist();
    }
  } catch {
    // Some scopes refuse (opaque origins); the answer stays unknown.
  }
  try {
    if (typeof storage.estimate === 'function') {
      const estimate = await storage.estimate();
      health.usage = estimate.usage ?? null;
      health.quota = estimate.quota ?? null;
    }
  } catch {
    // Unknown.
  }
  return health;
}
