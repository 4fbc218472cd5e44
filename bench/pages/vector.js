// Vector search benchmarks: PluresDB's index against hnswlib-wasm, voy-search
// and exact brute force, on identical vectors in one page: real sentence
// embeddings (bench/data/corpus-minilm.bin) or synthetic clustered ones.
import init, { PluresDB } from '/pkg/pluresdb.js';
import { loadHnswlib } from '/node_modules/hnswlib-wasm/dist/hnswlib.js';
import * as voyGlue from '/node_modules/voy-search/voy_search_bg.js';
import { rng, stats } from './common.js';
import { decodeCorpus } from '/bench/lib/corpus.mjs';

const pluresWasm = await init();

async function loadVoy() {
  const bytes = await (await fetch('/node_modules/voy-search/voy_search_bg.wasm')).arrayBuffer();
  const { instance } = await WebAssembly.instantiate(bytes, { './voy_search_bg.js': voyGlue });
  voyGlue.__wbg_set_wasm(instance.exports);
  return { voy: voyGlue, memory: instance.exports.memory };
}

/** `count` unit vectors of `dim` around `clusters` random centres. */
export function clustered(count, dim, clusters, seed, spread = 0.6) {
  const random = rng(seed);
  const gaussian = () => {
    const u = Math.max(random(), 1e-9);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
  };
  const centres = Array.from({ length: clusters }, () => Float32Array.from({ length: dim }, gaussian));
  return Array.from({ length: count }, (_, i) => {
    const centre = centres[(i * 7919) % clusters];
    const v = Float32Array.from(centre, (c) => c + spread * gaussian());
    let norm = 0;
    for (const x of v) norm += x * x;
    norm = Math.sqrt(norm);
    for (let d = 0; d < dim; d++) v[d] /= norm;
    return v;
  });
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function bruteForce(vectors, query, k) {
  const scored = new Array(vectors.length);
  for (let i = 0; i < vectors.length; i++) scored[i] = [dot(vectors[i], query), i];
  scored.sort((a, b) => b[0] - a[0]);
  return scored.slice(0, k).map((s) => s[1]);
}

function recall(found, truth) {
  let hits = 0;
  for (let q = 0; q < truth.length; q++) {
    const expected = new Set(truth[q]);
    for (const id of found[q]) if (expected.has(id)) hits++;
  }
  return hits / (truth.length * truth[0].length);
}

/** Times every query; returns recall@k and latency figures. */
function measureQueries(queries, truth, k, search) {
  return measureQueriesAsync(queries, truth, k, search);
}

async function measureQueriesAsync(queries, truth, k, search) {
  // Warm up (caches, lazily built structures) before measuring.
  for (const query of queries.slice(0, 10)) await search(query, k);
  const found = [];
  const times = [];
  for (const query of queries) {
    const start = performance.now();
    found.push(await search(query, k));
    times.push(performance.now() - start);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const total = times.reduce((a, b) => a + b, 0);
  return {
    recall: recall(found, truth),
    p50: sorted[Math.floor(sorted.length * 0.5)],
    p99: sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))],
    qps: (queries.length / total) * 1000,
  };
}

function normalise(v) {
  let norm = 0;
  for (const x of v) norm += x * x;
  norm = Math.sqrt(norm);
  return v.map((x) => x / norm);
}

/** The vectors, queries and exact top-k of one data set. */
async function dataSet(set, { count, queryCount, k }) {
  if (set === 'real') {
    // Real sentence embeddings (all-MiniLM-L6-v2 over 21,000 Debian package
    // descriptions; scripts/generate-corpus-embeddings.py), shipped as half
    // floats with the exact top-100 of every held-out query.
    const bytes = await (await fetch('/bench/data/corpus-minilm.bin')).arrayBuffer();
    const corpus = decodeCorpus(bytes);
    // Half floats are unit length to about 1e-4: renormalise, as a model's
    // own output is.
    return {
      vectors: corpus.base.map(normalise),
      queries: corpus.queries.map(normalise),
      truth: corpus.truth.map((row) => Array.from(row.subarray(0, k))),
      dim: corpus.dim,
    };
  }
  const dim = 384;
  const vectors = clustered(count, dim, 100, 11);
  const queries = clustered(queryCount, dim, 100, 11 + 1).map((q, i) => {
    // Queries near stored vectors, not copies of them.
    const base = vectors[(i * 97) % count];
    return normalise(Float32Array.from(base, (x, d) => x + 0.5 * q[d]));
  });
  return { vectors, queries, truth: queries.map((q) => bruteForce(vectors, q, k)), dim };
}

/** PluresDB: `putMany` of 1,000 vectors per call, then `flushIndex`. */
async function pluresdb(storage, { vectors, queries, truth, dim }, { efs, k }) {
  // Memory: how much the module's linear memory grew (it never shrinks).
  const memoryBefore = pluresWasm.memory.buffer.byteLength;
  const name = `vectors-${storage}-${Date.now()}`;
  const db = await PluresDB.open(name, { storage, index: { dimension: dim } });
  const start = performance.now();
  const chunk = 1000;
  for (let i = 0; i < vectors.length; i += chunk) {
    const entries = [];
    for (let j = i; j < Math.min(vectors.length, i + chunk); j++) entries.push([`v${j}`, {}, vectors[j]]);
    await db.putMany(entries);
  }
  const inserted = performance.now() - start;
  const memoryInserted = pluresWasm.memory.buffer.byteLength - memoryBefore;
  await db.flushIndex();
  const built = performance.now() - start;
  const memoryTotal = pluresWasm.memory.buffer.byteLength;
  const memoryBytes = memoryTotal - memoryBefore;
  const stats = db.indexStats();
  const byEf = {};
  for (const ef of efs) {
    byEf[ef] = await measureQueries(queries, truth, k, async (q) =>
      (await db.search(q, { k, ef })).map((h) => Number(h.id.slice(1))));
  }
  // Last, like the others warmed up (the first series measured after the
  // build runs slower in every library).
  byEf.default = await measureQueries(queries, truth, k, async (q) =>
    (await db.search(q, { k })).map((h) => Number(h.id.slice(1))));
  // Closes the database and deletes what it stored.
  await db.destroy();
  return {
    build: { ms: built, insertMs: inserted, perSecond: (vectors.length / built) * 1000, stats, memoryBytes, memoryInserted, memoryTotal },
    queries: byEf,
  };
}

/** hnswlib-wasm (cosine, M 16, ef_construction 200). */
async function hnswlib({ vectors, queries, truth, dim }, { efs, k }) {
  const lib = await loadHnswlib();
  const heap = () => lib.HEAPU8?.buffer.byteLength ?? NaN;
  const memoryBefore = heap();
  const index = new lib.HierarchicalNSW('cosine', dim, '');
  const start = performance.now();
  index.initIndex(vectors.length, 16, 200, 100);
  for (let i = 0; i < vectors.length; i++) index.addPoint(vectors[i], i, false);
  const built = performance.now() - start;
  const memoryTotal = heap();
  const memoryBytes = memoryTotal - memoryBefore;
  const byEf = {};
  for (const ef of efs) {
    index.setEfSearch(Math.max(ef, k));
    byEf[ef] = await measureQueries(queries, truth, k, (q) => index.searchKnn(q, k, undefined).neighbors);
  }
  return { build: { ms: built, perSecond: (vectors.length / built) * 1000, memoryBytes, memoryTotal }, queries: byEf };
}

/** voy-search (a k-d tree: exact). */
async function voy({ vectors, queries, truth }, { k }) {
  const { voy: lib, memory } = await loadVoy();
  const memoryBefore = memory.buffer.byteLength;
  const start = performance.now();
  const index = new lib.Voy({
    embeddings: vectors.map((v, i) => ({ id: String(i), title: '', url: '', embeddings: Array.from(v) })),
  });
  const built = performance.now() - start;
  return {
    build: { ms: built, perSecond: (vectors.length / built) * 1000, memoryBytes: memory.buffer.byteLength - memoryBefore },
    queries: {
      default: await measureQueries(queries, truth, k, (q) => index.search(q, k).neighbors.map((n) => Number(n.id))),
    },
  };
}

/**
 * One round of a data set (`real` or `synthetic`) for the named contenders
 * (`bruteforce`, `pluresdb`, `pluresdbIndexedDb`, `hnswlib`, `voy`). Run
 * each PluresDB contender in a fresh page: its memory figure is the growth
 * of the module's memory, which never shrinks.
 */
export async function run({
  set = 'synthetic', count = 20000, queries: queryCount = 200, efs = [10, 16, 24, 32, 48, 64, 128], k = 10,
  contenders = ['bruteforce', 'pluresdb', 'hnswlib', 'voy'],
} = {}) {
  const data = await dataSet(set, { count, queryCount, k });
  const results = { set, count: data.vectors.length, dim: data.dim, queries: data.queries.length, k, contenders: {} };
  for (const name of contenders) {
    if (name === 'bruteforce') {
      // Exact brute force in JavaScript (the baseline every index must beat).
      results.contenders.bruteforce = {
        build: { ms: 0, memoryBytes: data.vectors.length * data.dim * 4 },
        queries: { exact: await measureQueries(data.queries, data.truth, k, (q) => bruteForce(data.vectors, q, k)) },
      };
    } else if (name === 'pluresdb') {
      results.contenders.pluresdb = await pluresdb('memory', data, { efs, k });
    } else if (name === 'pluresdbIndexedDb') {
      results.contenders.pluresdbIndexedDb = await pluresdb('indexeddb', data, { efs, k });
    } else if (name === 'hnswlib') {
      results.contenders.hnswlib = await hnswlib(data, { efs, k });
    } else if (name === 'voy') {
      results.contenders.voy = await voy(data, { k });
    } else {
      throw new Error(`unknown contender ${name}`);
    }
  }
  return results;
}

globalThis.bench = { run };
document.body.dataset.ready = 'true';
