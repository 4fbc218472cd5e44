// Vector search benchmarks: PluresDB's index against hnswlib-wasm, voy-search
// and exact brute force, on identical clustered vectors, in one page.
import init, { PluresDB } from '/pkg/pluresdb.js';
import { loadHnswlib } from '/node_modules/hnswlib-wasm/dist/hnswlib.js';
import * as voyGlue from '/node_modules/voy-search/voy_search_bg.js';
import { rng, stats } from './common.js';

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

export async function run({ count = 20000, dim = 384, queries: queryCount = 200, efs = [16, 32, 64, 128], k = 10 } = {}) {
  const vectors = clustered(count, dim, 100, 11);
  const queries = clustered(queryCount, dim, 100, 11 + 1).map((q, i) => {
    // Queries near stored vectors, not copies of them.
    const base = vectors[(i * 97) % count];
    const mixed = Float32Array.from(base, (x, d) => x + 0.5 * q[d]);
    let norm = 0;
    for (const x of mixed) norm += x * x;
    return mixed.map((x) => x / Math.sqrt(norm));
  });
  const truth = queries.map((q) => bruteForce(vectors, q, k));
  const results = { count, dim, queries: queryCount, k, contenders: {} };

  // Exact brute force in JavaScript (the baseline every index must beat).
  results.contenders.bruteforce = {
    build: { ms: 0, memoryBytes: count * dim * 4 },
    queries: { exact: await measureQueries(queries, truth, k, (q) => bruteForce(vectors, q, k)) },
  };

  // PluresDB (memory storage: the index alone; IndexedDB costs are in the storage suite).
  {
    // Memory: how much the module's linear memory grew (it never shrinks).
    const memoryBefore = pluresWasm.memory.buffer.byteLength;
    const db = await PluresDB.open(`vectors-${Date.now()}`, { storage: 'memory', index: { dimension: dim } });
    const start = performance.now();
    const chunk = 1000;
    for (let i = 0; i < count; i += chunk) {
      const entries = [];
      for (let j = i; j < Math.min(count, i + chunk); j++) entries.push([`v${j}`, {}, vectors[j]]);
      await db.putMany(entries);
    }
    const inserted = performance.now() - start;
    await db.flushIndex();
    const built = performance.now() - start;
    const byEf = {};
    for (const ef of efs) {
      byEf[ef] = await measureQueries(queries, truth, k, async (q) =>
        (await db.search(q, { k, ef })).map((h) => Number(h.id.slice(1))));
    }
    results.contenders.pluresdb = {
      build: {
        ms: built, insertMs: inserted, perSecond: (count / built) * 1000, stats: db.indexStats(),
        memoryBytes: pluresWasm.memory.buffer.byteLength - memoryBefore,
      },
      queries: byEf,
    };
    await db.close();
  }

  // hnswlib-wasm (cosine, M 16, ef_construction 200).
  {
    const lib = await loadHnswlib();
    const heap = () => lib.HEAPU8?.buffer.byteLength ?? NaN;
    const memoryBefore = heap();
    const index = new lib.HierarchicalNSW('cosine', dim, '');
    const start = performance.now();
    index.initIndex(count, 16, 200, 100);
    for (let i = 0; i < count; i++) index.addPoint(vectors[i], i, false);
    const built = performance.now() - start;
    const memoryBytes = heap() - memoryBefore;
    const byEf = {};
    for (const ef of efs) {
      index.setEfSearch(Math.max(ef, k));
      byEf[ef] = await measureQueries(queries, truth, k, (q) => index.searchKnn(q, k, undefined).neighbors);
    }
    results.contenders.hnswlib = { build: { ms: built, perSecond: (count / built) * 1000, memoryBytes }, queries: byEf };
  }

  // voy-search (k-d tree).
  {
    const { voy, memory } = await loadVoy();
    const memoryBefore = memory.buffer.byteLength;
    const start = performance.now();
    const index = new voy.Voy({
      embeddings: vectors.map((v, i) => ({ id: String(i), title: '', url: '', embeddings: Array.from(v) })),
    });
    const built = performance.now() - start;
    results.contenders.voy = {
      build: { ms: built, perSecond: (count / built) * 1000, memoryBytes: memory.buffer.byteLength - memoryBefore },
      queries: {
        default: await measureQueries(queries, truth, k, (q) => index.search(q, k).neighbors.map((n) => Number(n.id))),
      },
    };
  }
  return results;
}

globalThis.bench = { run };
document.body.dataset.ready = 'true';
