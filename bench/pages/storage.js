// Browser storage benchmarks: PluresDB against Dexie, raw IndexedDB and
// PouchDB with identical documents, in one page, so ratios share one run.
import init, { PluresDB } from '/pkg/pluresdb.js';
import Dexie from '/node_modules/dexie/dist/dexie.mjs';
import PouchDB from '/bench/tmp/pouchdb.mjs';
import { measure, documents, deleteIdb, idbRequest, idbDone, rng } from './common.js';

const wasm = await init();

let counter = 0;
const fresh = (prefix) => `${prefix}-${Date.now()}-${counter++}`;

// --- contenders: each opens a fresh store and offers the same operations ---

const contenders = {
  pluresdb: {
    // `variant`: 'relaxed' (durability), or { cacheBytes }.
    async open(name, variant) {
      if (variant === 'relaxed') return PluresDB.open(name, { durability: 'relaxed' });
      return PluresDB.open(name, typeof variant === 'object' ? variant : undefined);
    },
    async bulk(db, docs) { await db.putMany(docs.map((d) => [d.id, d])); },
    async put(db, doc) { await db.put(doc.id, doc); },
    async get(db, id) { return db.get(id); },
    async query(db) {
      return db.query({ where: { category: 'c3', score: { $gte: 500 } }, sort: 'n' });
    },
    async close(db) { await db.close(); },
    async destroy(db) { await db.destroy(); },
  },
  dexie: {
    async open(name) {
      const db = new Dexie(name);
      db.version(1).stores({ docs: 'id, category, score' });
      await db.open();
      return db;
    },
    async bulk(db, docs) { await db.docs.bulkPut(docs); },
    async put(db, doc) { await db.docs.put(doc); },
    async get(db, id) { return db.docs.get(id); },
    async query(db) {
      const rows = await db.docs.where('category').equals('c3').filter((d) => d.score >= 500).toArray();
      return rows.sort((a, b) => a.n - b.n);
    },
    async close(db) { db.close(); },
    async destroy(db) { await db.delete(); },
  },
  indexeddb: {
    async open(name, variant) {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => {
        const store = request.result.createObjectStore('docs', { keyPath: 'id' });
        store.createIndex('category', 'category');
      };
      const db = await idbRequest(request);
      db.benchName = name;
      db.strict = variant === 'strict';
      return db;
    },
    async bulk(db, docs) {
      const tx = db.transaction('docs', 'readwrite');
      const store = tx.objectStore('docs');
      for (const doc of docs) store.put(doc);
      await idbDone(tx);
    },
    async put(db, doc) {
      const tx = db.transaction('docs', 'readwrite', db.strict ? { durability: 'strict' } : undefined);
      tx.objectStore('docs').put(doc);
      await idbDone(tx);
    },
    async get(db, id) {
      return idbRequest(db.transaction('docs').objectStore('docs').get(id));
    },
    async query(db) {
      const rows = await idbRequest(
        db.transaction('docs').objectStore('docs').index('category').getAll('c3'));
      return rows.filter((d) => d.score >= 500).sort((a, b) => a.n - b.n);
    },
    async close(db) { db.close(); },
    async destroy(db) { db.close(); await deleteIdb(db.benchName); },
  },
  pouchdb: {
    async open(name) { return new PouchDB(name); },
    async bulk(db, docs) { await db.bulkDocs(docs.map((d) => ({ ...d, _id: d.id }))); },
    async put(db, doc) { await db.put({ ...doc, _id: doc.id }); },
    async get(db, id) { return db.get(id); },
    async query(db) {
      // PouchDB without plugins: scan and filter, as its users do for ad-hoc queries.
      const { rows } = await db.allDocs({ include_docs: true });
      return rows.map((r) => r.doc).filter((d) => d.category === 'c3' && d.score >= 500)
        .sort((a, b) => a.n - b.n);
    },
    async close(db) { await db.close(); },
    async destroy(db) { await db.destroy(); },
  },
};

/** Bulk insert of `count` documents in one call, fresh database each run. */
async function bulkInsert(name, count, runs) {
  const contender = contenders[name];
  const docs = documents(count);
  let db;
  const result = await measure(runs, async () => { await contender.bulk(db, docs); }, {
    setup: async () => {
      if (db) await contender.destroy(db);
      db = await contender.open(fresh(`bulk-${name}`));
    },
  });
  await contender.destroy(db);
  return { ...result, perSecond: (count / result.median) * 1000 };
}

/**
 * `count` sequential awaited single inserts; `variant` 'strict' or 'relaxed'
 * picks the durability where the contender lets one choose.
 */
async function singleInserts(name, count, runs, variant) {
  const contender = contenders[name];
  const docs = documents(count, 99);
  let db;
  const result = await measure(runs, async () => {
    for (const doc of docs) await contender.put(db, doc);
  }, {
    setup: async () => {
      if (db) await contender.destroy(db);
      db = await contender.open(fresh(`single-${name}`), variant);
    },
  });
  await contender.destroy(db);
  return { ...result, perSecond: (count / result.median) * 1000 };
}

/** Random awaited gets and one query, on a database of `count` documents. */
async function reads(name, count, runs) {
  const contender = contenders[name];
  const docs = documents(count);
  const db = await contender.open(fresh(`reads-${name}`));
  await contender.bulk(db, docs);
  const random = rng(5);
  const ids = Array.from({ length: 2000 }, () => docs[Math.floor(random() * count)].id);
  const gets = await measure(runs, async () => {
    for (const id of ids) {
      const doc = await contender.get(db, id);
      if (!doc) throw new Error(`${name}: ${id} missing`);
    }
  });
  let hits = 0;
  const query = await measure(runs, async () => { hits = (await contender.query(db)).length; });
  await contender.destroy(db);
  return {
    get: { ...gets, perSecond: (ids.length / gets.median) * 1000 },
    query: { ...query, hits },
  };
}

/** Populates a database for the cold-open measurement (run in another page). */
async function populate(name, dbName, count) {
  const contender = contenders[name];
  const db = await contender.open(dbName);
  const docs = documents(count);
  for (let start = 0; start < count; start += 10_000) {
    await contender.bulk(db, docs.slice(start, start + 10_000));
  }
  await contender.close(db);
}

/** `count` awaited single inserts into the existing database `dbName`, new ids each run. */
async function singleInsertsInto(name, dbName, count, runs) {
  const contender = contenders[name];
  const db = await contender.open(dbName);
  let run = 0;
  const result = await measure(runs, async () => {
    const docs = documents(count, 100 + run).map((doc, i) => ({ ...doc, id: `more:${run}:${i}` }));
    run++;
    for (const doc of docs) await contender.put(db, doc);
  });
  await contender.close(db);
  return { ...result, perSecond: (count / result.median) * 1000 };
}

/**
 * Opens an existing database and reads one record: the cold-open time, and
 * the WebAssembly memory the page's PluresDB module holds afterwards.
 */
async function coldOpen(name, dbName, variant) {
  const contender = contenders[name];
  const start = performance.now();
  const db = await contender.open(dbName, variant);
  const doc = await contender.get(db, 'doc:000042');
  const elapsed = performance.now() - start;
  if (!doc) throw new Error(`${name}: cold open found no document`);
  const wasmBytes = wasm.memory.buffer.byteLength;
  await contender.close(db);
  return { elapsed, wasmBytes };
}

/**
 * Opens the existing database `dbName` of `count` documents (not timed),
 * then `gets` awaited gets of random ids, each its own read: for PluresDB
 * opened with `{ cacheBytes: 0 }` every one reads IndexedDB.
 */
async function gets(name, dbName, count, gets, variant) {
  const contender = contenders[name];
  const db = await contender.open(dbName, variant);
  const random = rng(11);
  const ids = Array.from({ length: gets }, () => `doc:${String(Math.floor(random() * count)).padStart(6, '0')}`);
  const start = performance.now();
  for (const id of ids) {
    if (!(await contender.get(db, id))) throw new Error(`${name}: ${id} missing`);
  }
  const elapsed = performance.now() - start;
  await contender.close(db);
  return elapsed;
}

async function destroy(name, dbName) {
  const contender = contenders[name];
  await contender.destroy(await contender.open(dbName));
}

/** `count` small notes (`{ title, category, n }`, about 45 bytes of JSON), in batches of 10,000. */
async function populateNotes(name, dbName, count) {
  const contender = contenders[name];
  const db = await contender.open(dbName);
  for (let start = 0; start < count; start += 10_000) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + 10_000); i++) {
      batch.push({ id: `note:${String(i).padStart(7, '0')}`, title: `Note ${i}`, category: `c${i % 10}`, n: i });
    }
    await contender.bulk(db, batch);
  }
  await contender.close(db);
}

/**
 * Opens a database of notes in a fresh page and reads one: the time, and
 * the WebAssembly memory the page's PluresDB module holds afterwards
 * (`variant` as for `open`).
 */
async function coldOpenNotes(name, dbName, variant) {
  const contender = contenders[name];
  const start = performance.now();
  const db = await contender.open(dbName, variant);
  const note = await contender.get(db, 'note:0000042');
  const elapsed = performance.now() - start;
  if (!note) throw new Error(`${name}: cold open found no note`);
  // Opened with `loadInBackground`, the load goes on after the get: its
  // end, and the memory once loaded.
  if (db.loaded) await db.loaded;
  const loadedMs = performance.now() - start;
  const wasmBytes = wasm.memory.buffer.byteLength;
  await contender.close(db);
  return { elapsed, loadedMs, wasmBytes };
}

// PluresDB's WebAssembly memory once every note was listed (in pages of
// 10,000): its cache then holds what fits of the documents it read.
async function memoryAfterListing(name, dbName, variant) {
  const contender = contenders[name];
  const db = await contender.open(dbName, variant);
  if (db.loaded) await db.loaded;
  const start = performance.now();
  let cursor;
  let listed = 0;
  do {
    const page = await db.list({ prefix: 'note:', limit: 10_000, cursor });
    listed += page.items.length;
    cursor = page.nextCursor;
  } while (cursor);
  const elapsed = performance.now() - start;
  const wasmBytes = wasm.memory.buffer.byteLength;
  const { cachedBytes } = await db.storageStatus();
  await contender.close(db);
  return { listed, elapsed, wasmBytes, cachedBytes };
}

globalThis.bench = { memoryAfterListing, bulkInsert, singleInserts, singleInsertsInto, reads, populate, coldOpen, gets, populateNotes, coldOpenNotes, destroy, contenders: Object.keys(contenders) };
document.body.dataset.ready = 'true';
