// One engine's Node workload, in a process of its own (bench/suites/node.mjs
// starts it): `node node-workload.mjs <engine> <dir> <records> <singles>
// <phase>`, printing one JSON line of timings in milliseconds.
//
// engines: `addon` (PluresDB on the native addon, SQLite), `wasm`
// (PluresDB's WebAssembly build in Node, memory) and `better-sqlite3` (raw
// SQLite: one table of (id, JSON text), WAL with synchronous=NORMAL like
// PluresDB's default, every write of a batch in one transaction).
// phase `write`: putMany of <records> into a fresh database, <singles>
// awaited single puts, <singles> gets of random ids; phase `open`: a cold
// open of the file the write phase left, until the first record is read.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const [engine, dir, recordsArg, singlesArg, phase] = process.argv.slice(2);
const records = Number(recordsArg);
const singles = Number(singlesArg);
const root = fileURLToPath(new URL('../../', import.meta.url));

/** Real documents: Debian package names and descriptions, cycled. */
function documents(count) {
  const names = readFileSync(join(root, 'bench/data/corpus-packages.txt'), 'utf8').split('\n').filter(Boolean);
  const texts = readFileSync(join(root, 'bench/data/corpus.txt'), 'utf8').split('\n').filter(Boolean);
  return Array.from({ length: count }, (_, i) => {
    const k = i % texts.length;
    return [`pkg:${String(i).padStart(7, '0')}`, { name: names[k], description: texts[k], rank: i, tags: ['debian', names[k].split('-')[0]] }];
  });
}

function shuffledIds(count, n) {
  let seed = 0x2545f491;
  return Array.from({ length: n }, () => {
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
    return `pkg:${String((seed >>> 0) % count).padStart(7, '0')}`;
  });
}

async function time(fn) {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

async function openEngine(name, file) {
  if (name === 'better-sqlite3') {
    const Database = createRequire(join(root, 'bench/tmp/node-deps/package.json'))('better-sqlite3');
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec('CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, data TEXT NOT NULL)');
    const insert = db.prepare('INSERT OR REPLACE INTO records (id, data) VALUES (?, ?)');
    const select = db.prepare('SELECT data FROM records WHERE id = ?');
    const many = db.transaction((entries) => {
      for (const [id, data] of entries) insert.run(id, JSON.stringify(data));
    });
    return {
      putMany: async (entries) => many(entries),
      put: async (id, data) => { insert.run(id, JSON.stringify(data)); },
      get: async (id) => {
        const row = select.get(id);
        return row === undefined ? undefined : JSON.parse(row.data);
      },
      close: async () => db.close(),
    };
  }
  if (name === 'addon') {
    const { PluresDB, backend } = await import(join(root, 'pkg/node.js'));
    if (backend !== 'native') throw new Error('the addon did not load');
    return PluresDB.open('bench', { path: file });
  }
  const { PluresDB } = await import(join(root, 'pkg/node-wasm.js'));
  return PluresDB.open('bench', { storage: 'memory' });
}

const out = {};
if (phase === 'write') {
  const entries = documents(records);
  const bulk = await openEngine(engine, join(dir, 'bulk.db'));
  out.putManyMs = await time(() => bulk.putMany(entries));
  const ids = shuffledIds(records, singles);
  out.getMs = await time(async () => {
    for (const id of ids) {
      if ((await bulk.get(id)) === undefined) throw new Error(`${id} is missing`);
    }
  });
  await bulk.close();
  const single = await openEngine(engine, join(dir, 'single.db'));
  const few = entries.slice(0, singles);
  out.singlePutMs = await time(async () => {
    for (const [id, data] of few) await single.put(id, data);
  });
  await single.close();
} else {
  const start = performance.now();
  const db = await openEngine(engine, join(dir, 'bulk.db'));
  if ((await db.get('pkg:0000000')) === undefined) throw new Error('the first record is missing');
  out.openMs = performance.now() - start;
  await db.close();
}
console.log(JSON.stringify(out));
