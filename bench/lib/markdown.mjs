// Renders docs/BENCHMARKS.md from the results object.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { table, range, ratio, fmt, writeChart } from './report.mjs';

const LABELS = {
  pluresdb: 'PluresDB', dexie: 'Dexie', indexeddb: 'raw IndexedDB', pouchdb: 'PouchDB',
  'pluresdb-relaxed': "PluresDB, `durability: 'relaxed'`", 'indexeddb-strict': "raw IndexedDB, `durability: 'strict'`",
};
const label = (name) => LABELS[name] ?? name;

function storageSection(docsDir, s) {
  if (!s) return '';
  const names = Object.keys(s.bulk);
  const base = s.bulk.pluresdb;
  const out = [`## Browser storage (headless Chromium)${s.quick ? ' — quick run' : ''}`, ''];
  out.push(`Identical ~1 KB JSON documents for every contender, in one page, one run; measured ${s.measuredAt}.`);
  out.push('Ratios are contender time ÷ PluresDB time (above 1× means PluresDB is faster).', '');

  out.push(`### Bulk insert of ${s.docs.toLocaleString('en-US')} documents in one call (persisted)`, '');
  out.push(table(['database', 'time', 'documents/s', 'vs PluresDB'], names.map((n) => [
    label(n), range(s.bulk[n]), fmt(s.bulk[n].perSecond, 0), ratio(s.bulk[n].median, base.median),
  ])));
  out.push('', writeChart(docsDir, 'storage-bulk.svg', {
    title: `Bulk insert, ${s.docs} docs (lower is better)`, unit: 'ms',
    bars: names.map((n) => ({ label: label(n), ...s.bulk[n], highlight: n === 'pluresdb' })),
  }), '');
  if (s.bulk.dexie && s.bulk.indexeddb) {
    out.push(`Targets: at least 3× Dexie (measured ${ratio(s.bulk.dexie.median, base.median)}), ` +
      `no slower than raw IndexedDB per document (measured ${ratio(s.bulk.indexeddb.median, base.median)}).`, '');
  }

  out.push('### 300 single awaited inserts', '');
  out.push("Each insert is awaited before the next, so every one is its own transaction. PluresDB asks IndexedDB for `durability: 'strict'` by default (the promise resolves only once the write is flushed to disk, which its crash test relies on); Dexie, raw IndexedDB and PouchDB use the browser default, which may report completion before the flush. The rows with a durability are the same inserts at the other setting.", '');
  out.push(table(['database', 'time', 'inserts/s', 'vs PluresDB'], Object.keys(s.single).map((n) => [
    label(n), range(s.single[n]), fmt(s.single[n].perSecond, 0), ratio(s.single[n].median, s.single.pluresdb.median),
  ])), '');
  if (s.single['indexeddb-strict']) {
    const strict = s.single['indexeddb-strict'];
    out.push(`Target: an awaited PluresDB insert no slower than raw IndexedDB's at the same durability ` +
      `(measured ${ratio(strict.median, s.single.pluresdb.median)} strict` +
      (s.single['pluresdb-relaxed'] ? `, ${ratio(s.single.indexeddb.median, s.single['pluresdb-relaxed'].median)} relaxed against the default` : '') +
      (strict.median >= s.single.pluresdb.median ? ').' : '; not met yet).'), '');
  }

  if (s.singleLarge) {
    const large = Object.keys(s.singleLarge).filter((n) => n !== 'size');
    out.push(`### 300 single awaited inserts into a database of ${s.singleLarge.size.toLocaleString('en-US')} records`, '');
    out.push('The same inserts into the database the cold-open test below populated (PouchDB is not populated at this size), at each contender\'s default durability.', '');
    out.push(table(['database', 'time', 'inserts/s', 'vs PluresDB'], large.map((n) => [
      label(n), range(s.singleLarge[n]), fmt(s.singleLarge[n].perSecond, 0), ratio(s.singleLarge[n].median, s.singleLarge.pluresdb.median),
    ])), '');
  }

  out.push('### 2,000 awaited gets by id, and a query by field', '');
  out.push('Query: `category == "c3" and score >= 500`, sorted by `n` (Dexie and raw IndexedDB use an index on `category`; PouchDB scans, as it has no query engine without plugins).', '');
  out.push(table(['database', 'gets', 'gets/s', 'query', 'query hits'], names.map((n) => [
    label(n), range(s.reads[n].get), fmt(s.reads[n].get.perSecond, 0), range(s.reads[n].query), s.reads[n].query.hits,
  ])), '');

  for (const [size, byName] of Object.entries(s.coldOpen ?? {})) {
    out.push(`### Cold open of ${Number(size).toLocaleString('en-US')} records until the first get returns`, '');
    out.push('A new page opens the existing database and reads one record. PluresDB reads every record here: it keeps each one\'s id, clocks and index entries in memory, and documents up to its cache (64 MiB by default; beyond that they are read back from IndexedDB when needed); the others read lazily.', '');
    const cold = Object.keys(byName);
    out.push(table(['database', 'time'], cold.map((n) => [label(n), range(byName[n])])), '');
    out.push(writeChart(docsDir, `storage-cold-${size}.svg`, {
      title: `Cold open, ${size} records (lower is better)`, unit: 'ms',
      bars: cold.map((n) => ({ label: label(n), ...byName[n], highlight: n === 'pluresdb' })),
    }), '');
    if (Number(size) === 100_000 && byName.pluresdb) {
      out.push(`Target: under 1 s (measured ${fmt(byName.pluresdb.median)} ms).`, '');
    }
  }
  if (s.beyondCache?.open?.pluresdb) {
    const b = s.beyondCache;
    const size = b.size.toLocaleString('en-US');
    out.push(`### Documents beyond the cache: ${size} records of ~1 KB`, '');
    out.push(`The database of the cold open above (about ${fmt(b.size * 1.05 / 1024, 0)} MiB of JSON). PluresDB keeps \`cacheBytes\` of document text in memory (default 64 MiB in the browser) and leaves the rest in IndexedDB, read back by id when needed; ids, clocks and indexes stay in memory. Cold open until the first get, and the page's WebAssembly memory after it:`, '');
    const openLabels = { 'pluresdb-all': 'every document in memory', pluresdb: 'default cache (64 MiB)', 'pluresdb-16': '`cacheBytes` 16 MiB' };
    out.push(table(['PluresDB', 'cold open', 'wasm memory'], Object.keys(b.open).map((n) => [
      openLabels[n] ?? n, range(b.open[n]), mib(b.open[n].wasmBytes),
    ])), '');
    const readers = Object.keys(b.reads);
    if (b.reads.pluresdb) {
      out.push(`${b.gets.toLocaleString('en-US')} awaited gets of random records in a fresh page, none of them in memory (PluresDB opened with \`cacheBytes: 0\`, so each get is a read of IndexedDB):`, '');
      out.push(table(['database', 'gets', 'gets/s', 'vs PluresDB'], readers.map((n) => [
        label(n), range(b.reads[n]), fmt(b.gets / b.reads[n].median * 1000, 0), ratio(b.reads[n].median, b.reads.pluresdb.median),
      ])), '');
      if (b.reads.dexie) {
        const slower = b.reads.pluresdb.median / b.reads.dexie.median;
        out.push(`Target: within 1.5× of Dexie's \`get\` (measured ${fmt(slower, 2)}× Dexie's time${slower <= 1.5 ? '' : '; not met'}).`, '');
      }
    }
  }
  if (s.notes?.pluresdb) {
    const count = s.notes.count;
    const names = Object.keys(s.notes).filter((n) => n !== 'count');
    out.push(`### Cold open of ${count.toLocaleString('en-US')} small notes until the first get returns`, '');
    out.push('Notes of about 45 bytes of JSON (`{ title, category, n }`), written in batches of 10,000. A new page opens the database and reads one note. PluresDB holds every record\'s id and clocks in WebAssembly memory once open (the memory column, the size of its memory after the read), and its cache (64 MiB by default) fills with the documents read; the others hold nothing until read.', '');
    const noteLabel = (n) => ({ pluresdbNoCache: 'PluresDB, `cacheBytes: 0`', pluresdbBackground: 'PluresDB, `loadInBackground`' }[n] ?? label(n));
    out.push(table(['database', 'populate', 'cold open', 'vs PluresDB', 'wasm memory'], names.map((n) => [
      noteLabel(n), `${fmt(s.notes[n].populateMs / 1000, 1)} s`, range(s.notes[n]), ratio(s.notes[n].median, s.notes.pluresdb.median),
      n.startsWith('pluresdb') ? mib(s.notes[n].wasmBytes) : '–',
    ])), '');
    const bare = s.notes.pluresdbNoCache;
    if (bare) out.push(`The \`cacheBytes: 0\` row opens the same database with no cache at all: what every record's resident metadata (id, versions, clocks) takes alone. The default row opens with an empty cache, which fills as documents are read.`, '');
    const listing = s.notes.pluresdb.afterListing;
    if (listing) out.push(`Listing every note once (pages of 10,000, ${fmt(listing.elapsed / 1000, 1)} s) fills the default cache with ${mib(listing.cachedBytes)} of documents: the page's WebAssembly memory is then ${mib(listing.wasmBytes)}.`, '');
    const background = s.notes.pluresdbBackground;
    if (background) out.push(`The \`loadInBackground\` row opens the same database with the default cache, \`open\` resolving once IndexedDB is open: its first get reads the note straight from IndexedDB (the id lists' index and one part) while the million records load, and the load completed ${fmt(background.loadedMs)} ms after the open began (median; the memory column is after it). Until then every other call waits for the load.`, '');
    const memoryMet = s.notes.pluresdb.wasmBytes < 100 * 1048576;
    const bareMet = bare && bare.wasmBytes < 100 * 1048576;
    out.push(`Targets (issue #26): cold open under 250 ms and memory under 100 MiB at 1,000,000 records (measured ${fmt(s.notes.pluresdb.median)} ms and ${mib(s.notes.pluresdb.wasmBytes)} with the default cache${bare ? `, ${mib(bare.wasmBytes)} with no cache` : ''}; ${memoryMet ? `memory met after the open${listing ? `, not once the cache is full (${mib(listing.wasmBytes)})` : ''}` : bareMet ? 'memory met only with no cache' : 'memory not met'}; cold open ${s.notes.pluresdb.median < 250 ? 'met' : background && background.median < 250 ? `met only with \`loadInBackground\` (${fmt(background.median)} ms to the first get; a full load takes ${fmt(background.loadedMs)} ms)` : 'not met: every record\'s metadata is read at open and stays resident'}).`, '');
  }
  return out.join('\n');
}

const VECTOR_LABELS = {
  pluresdb: 'PluresDB', pluresdbIndexedDb: 'PluresDB on IndexedDB', hnswlib: 'hnswlib-wasm', voy: 'voy-search', bruteforce: 'brute force (JS)',
};
const mib = (bytes) => (Number.isFinite(bytes) ? `${fmt(bytes / 1048576, 1)} MiB` : '–');
const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
/** `median (min–max)` of numbers, or the one number of a single run. */
const spread = (values, digits = 0, unit = '') => {
  const f = (x) => `${fmt(x, digits)}${unit}`;
  if (values.length === 1) return f(values[0]);
  return `${f(median(values))} (${f(Math.min(...values))}–${f(Math.max(...values))})`;
};

/**
 * QPS at `target` recall on a curve of `{ recall, qps }` points: linear
 * between the two measured breadths around it; the fastest point at or
 * above it when none is below; null when none reaches it.
 */
export function qpsAtRecall(points, target = 0.95) {
  const sorted = points.filter((p) => Number.isFinite(p.recall)).sort((a, b) => a.recall - b.recall);
  const above = sorted.findIndex((p) => p.recall >= target);
  if (above < 0) return null;
  if (above === 0) return Math.max(...sorted.filter((p) => p.recall >= target).map((p) => p.qps));
  const [low, high] = [sorted[above - 1], sorted[above]];
  const t = (target - low.recall) / (high.recall - low.recall || 1);
  return low.qps + t * (high.qps - low.qps);
}

const curve = (queries) => Object.entries(queries).filter(([ef]) => ef !== 'default').map(([, q]) => q);

function realVectorSection(docsDir, real, measuredAt, quick) {
  const runs = real.runs;
  const first = runs[0];
  const out = [`### Real sentence embeddings${quick ? ' — quick run' : ''}`, ''];
  out.push(`${first.count.toLocaleString('en-US')} real ${first.dim}-d sentence embeddings (all-MiniLM-L6-v2 over Debian package descriptions, \`bench/data/corpus-minilm.bin\`, made by \`scripts/generate-corpus-embeddings.py\`) and ${first.queries.toLocaleString('en-US')} held-out queries; recall@${first.k} against the exact top ${first.k} shipped with the set; one thread; ${runs.length} round${runs.length > 1 ? 's' : ''}, figures are the median (min–max) over them; measured ${measuredAt}. ` +
    'PluresDB stores every vector with `putMany` (1,000 per call) and builds its index with `flushIndex()`, on memory storage and, in its own page, on IndexedDB; hnswlib-wasm is built with M 16 and ef_construction 200 (its usual settings), PluresDB with M 16 and ef_construction 100 (its defaults).', '');
  const names = Object.keys(first.contenders).filter((n) => n !== 'bruteforce');
  const all = (name, pick) => runs.map((r) => pick(r.contenders[name])).filter((x) => Number.isFinite(x));
  out.push(table(['library', 'build', 'vectors/s', 'memory after the build', 'memory growth'], names.map((n) => [
    VECTOR_LABELS[n] ?? n, spread(all(n, (c) => c.build.ms), 0, ' ms'), spread(all(n, (c) => c.build.perSecond)),
    spread(all(n, (c) => c.build.memoryTotal / 1048576), 1, ' MiB'), spread(all(n, (c) => c.build.memoryBytes / 1048576), 1, ' MiB'),
  ])), '');
  out.push('Memory is each library\'s whole WebAssembly memory once its index is built (the peak: WebAssembly memory never shrinks), and how much it grew during the build. ' +
    'hnswlib-wasm starts with a heap that already has room, so its growth understates what it holds; the whole memory is the fair figure. ' +
    `PluresDB's holds the records too (ids, versions, the embeddings themselves, which the index shares instead of copying). The raw vectors alone are ${mib(first.count * first.dim * 4)}.`, '');
  const p = first.contenders.pluresdb.build;
  if (p.stats?.graphBytes !== undefined && p.memoryInserted !== undefined) {
    out.push(`Where PluresDB's ${mib(p.memoryTotal)} go (memory storage, from \`indexStats()\` and the module's memory between the steps): ` +
      `${mib(p.memoryTotal - p.memoryBytes)} before the database opened; ${mib(p.memoryInserted)} once every record is stored, of which ${mib(p.stats.vectorBytes)} are the embeddings (held once, by the records and the index) and the rest records, ids and versions; ` +
      `the HNSW graph ${mib(p.stats.graphBytes)} (byte-quantised vectors, links, id table); the remaining ${mib(p.memoryBytes - p.memoryInserted - p.stats.graphBytes)} is the peak of building and encoding the segment for storage.`, '');
  }
  const efs = Object.keys(first.contenders.pluresdb.queries);
  const rows = efs.map((ef) => {
    const row = [ef === 'default' ? 'default' : ef];
    for (const n of ['pluresdb', 'hnswlib']) {
      const q = runs.map((r) => r.contenders[n]?.queries?.[ef]).filter(Boolean);
      row.push(q.length ? spread(q.map((x) => x.recall), 3) : '–', q.length ? spread(q.map((x) => x.qps)) : '–');
    }
    return row;
  });
  out.push(table(['ef', 'PluresDB recall@10', 'PluresDB QPS', 'hnswlib-wasm recall@10', 'hnswlib-wasm QPS'], rows), '');
  const brute = runs.map((r) => r.contenders.bruteforce?.queries?.exact?.qps).filter(Number.isFinite);
  if (brute.length) out.push(`Exact brute force in JavaScript: ${spread(brute)} QPS.`, '');
  const ratios = runs.map((r) => qpsAtRecall(curve(r.contenders.pluresdb.queries)) / qpsAtRecall(curve(r.contenders.hnswlib.queries)));
  const atTarget = (n) => runs.map((r) => qpsAtRecall(curve(r.contenders[n].queries)));
  const memoryRatios = runs.map((r) => r.contenders.pluresdb.build.memoryTotal / r.contenders.hnswlib.build.memoryTotal);
  const defaultRecall = runs.map((r) => r.contenders.pluresdb.queries.default.recall);
  const insert = runs.map((r) => r.contenders.pluresdb.build.perSecond);
  const insertIdb = runs.map((r) => r.contenders.pluresdbIndexedDb?.build?.perSecond).filter(Number.isFinite);
  out.push(table(['target', 'measured per round', 'met'], [
    ['default search: recall@10 ≥ 0.95', defaultRecall.map((x) => x.toFixed(3)).join(', '), defaultRecall.every((x) => x >= 0.95) ? 'yes' : 'no'],
    ['QPS at recall@10 0.95 (interpolated) ≥ 1.3× hnswlib-wasm\'s', `${ratios.map((x) => `${x.toFixed(2)}×`).join(', ')} (PluresDB ${atTarget('pluresdb').map((x) => fmt(x, 0)).join(', ')}; hnswlib-wasm ${atTarget('hnswlib').map((x) => fmt(x, 0)).join(', ')})`, ratios.every((x) => x >= 1.3) ? 'yes' : 'no'],
    ['memory after the build ≤ 1.5× hnswlib-wasm\'s', memoryRatios.map((x) => `${x.toFixed(2)}×`).join(', '), memoryRatios.every((x) => x <= 1.5) ? 'yes' : 'no'],
    ['insert ≥ 2,000 vectors/s', `${insert.map((x) => fmt(x, 0)).join(', ')} (memory storage); ${insertIdb.map((x) => fmt(x, 0)).join(', ')} (IndexedDB)`, [...insert, ...insertIdb].every((x) => x >= 2000) ? 'yes' : 'no'],
  ]), '');
  out.push('Before issue #22 (main at 2a6e10c, `instant-distance` graphs, measured on a comparable set of 20,000 MiniLM embeddings): recall@10 0.86 by default (`ef` 10 and 16 gave identical results), 0.57–0.65× hnswlib-wasm\'s QPS at recall 0.95, 187 MiB of memory (4.6× hnswlib-wasm\'s), 1,570 vectors/s.', '');
  out.push(writeChart(docsDir, 'vector-real-qps.svg', {
    title: 'Real embeddings: queries per second at recall@10 0.95 (higher is better)', unit: 'q/s',
    bars: ['pluresdb', 'hnswlib'].map((n) => {
      const v = atTarget(n);
      return { label: VECTOR_LABELS[n], median: median(v), min: Math.min(...v), max: Math.max(...v), highlight: n === 'pluresdb' };
    }),
  }), '');
  return out.join('\n');
}

function syntheticVectorSection(docsDir, v) {
  const out = ['### Synthetic clustered vectors', ''];
  out.push(`${v.count.toLocaleString('en-US')} clustered ${v.dim}-d vectors (100 Gaussian centres), ${v.queries} queries near stored vectors, k = ${v.k}; recall@${v.k} against exact search; one round. ` +
    'PluresDB runs on memory storage here; voy-search is a k-d tree (exact). Friendlier than real embeddings: every method reaches a higher recall at a given breadth.', '');
  out.push(table(['library', 'time to index all vectors', 'vectors/s', 'memory after the build'], Object.entries(v.contenders)
    .map(([name, c]) => [VECTOR_LABELS[name] ?? name, name === 'bruteforce' ? '–' : `${fmt(c.build.ms)} ms`,
      name === 'bruteforce' ? '–' : fmt(c.build.perSecond, 0), mib(c.build.memoryTotal ?? c.build.memoryBytes)])), '');
  const rows = [];
  const bars = [];
  const brute = v.contenders.bruteforce?.queries?.exact;
  for (const [name, c] of Object.entries(v.contenders)) {
    for (const [ef, q] of Object.entries(c.queries)) {
      rows.push([VECTOR_LABELS[name] ?? name, ef, q.recall.toFixed(3), `${fmt(q.p50, 2)} ms`, `${fmt(q.p99, 2)} ms`, fmt(q.qps, 0), brute ? `${(q.qps / brute.qps).toFixed(1)}×` : '–']);
      bars.push({ label: `${VECTOR_LABELS[name] ?? name} ${ef}`, median: q.qps, highlight: name === 'pluresdb' });
    }
  }
  out.push(table(['library', 'ef', `recall@${v.k}`, 'p50', 'p99', 'QPS', 'vs brute force'], rows), '');
  out.push(writeChart(docsDir, 'vector-qps.svg', { title: `Synthetic: queries per second, ${v.count} x ${v.dim}-d (higher is better)`, unit: 'q/s', bars }), '');
  return out.join('\n');
}

function vectorSection(docsDir, v) {
  if (!v) return '';
  const out = [`## Vector search (headless Chromium)${v.quick ? ' — quick run' : ''}`, ''];
  if (v.real) out.push(realVectorSection(docsDir, v.real, v.measuredAt, v.quick), '');
  const synthetic = v.synthetic ?? (v.contenders ? v : null);
  if (synthetic) out.push(syntheticVectorSection(docsDir, synthetic), '');
  return out.join('\n');
}

function embedSection(docsDir, e) {
  if (!e) return '';
  const out = [`## Embedding text (built-in models)${e.quick ? ' — quick run' : ''}`, ''];
  out.push(`${e.count.toLocaleString('en-US')} short real sentences (the held-out queries of \`bench/data/corpus.txt\`, 69 characters on average), one embedding each; measured ${e.measuredAt}. ` +
    'In the browser every run starts a fresh dedicated Worker that loads the model from the package over HTTP (from this machine, so download time is local) and then embeds; natively `cargo run --release --example embed_speed`; the Python reference is sentence-transformers\' all-MiniLM-L6-v2 (the full transformer, the model `minilm-static` is distilled from) on CPU, 2 threads, batches of 32. Median (min–max) over the runs.', '');
  const rates = (values) => spread(values);
  const browser = e.browser.runs;
  const exactRows = browser[0].exactPerSecond === undefined ? [] : [
    [`\`minilm\`, browser Worker (WebAssembly, ${browser[0].exactCount} sentences)`, rates(browser.map((r) => r.exactPerSecond)), `${spread(browser.map((r) => r.exactReadyMs))} ms to ready`],
    ['`minilm`, native (Rust)', rates(e.native.exact), `${fmt(e.native.exactLoadMs, 0)} ms to load the built-in weights`],
  ];
  const rows = [
    ...exactRows,
    ['`minilm-static`, browser Worker (JavaScript)', rates(browser.map((r) => r.staticPerSecond)), `${spread(browser.map((r) => r.readyMs))} ms to ready`],
    ['`minilm-static`, native (Rust)', rates(e.native.static), `${fmt(e.native.loadMs, 0)} ms to decode the built-in table`],
    ['`hash`, browser Worker (WebAssembly)', rates(browser.map((r) => r.hashPerSecond)), '–'],
    ['`hash`, native', rates(e.native.hash), '–'],
    e.python.skipped
      ? ['all-MiniLM-L6-v2, Python reference', e.python.skipped, '–']
      : ['all-MiniLM-L6-v2, Python reference (torch ' + e.python.torch + ')', rates(e.python.perSecond), `${fmt(e.python.loadMs, 0)} ms to load`],
  ];
  out.push(table(['embedder', 'sentences/s', 'first load'], rows), '');
  const bytes = Object.values(e.modelBytes).reduce((a, b) => a + b, 0);
  out.push(`The model's files: ${fmt(bytes / 1e6, 1)} MB (\`vocab.txt\` and the half-float table), fetched once and cached by the demo's service worker; never part of the \`.wasm\`. ` +
    'Quality is in `models/minilm-static/README.md`: recall@10 0.283 against the full model\'s top 10 on the benchmark corpus. ' +
    `Targets (issue #27): a static model ≥ 2,000 sentences/s in the browser (measured ${fmt(median(browser.map((r) => r.staticPerSecond)), 0)}), the default model ≤ 25 MB (${fmt(bytes / 1e6, 1)} MB).`, '');
  if (e.exactBytes) {
    const exactBytes = Object.values(e.exactBytes).reduce((a, b) => a + b, 0);
    const python = e.python.skipped ? null : median(e.python.perSecond);
    out.push(`\`minilm\` is the transformer itself (8-bit weights widened to float32 on load, the word embeddings widened as they are read): ${fmt(exactBytes / 1e6, 1)} MB to download ` +
      `(weights ${fmt(e.exactBytes['model.safetensors'] / 1e6, 1)} MB, WebAssembly module ${fmt(e.exactBytes['minilm_bg.wasm'] / 1e6, 1)} MB, vocabulary), its own module beside the core \`.wasm\`. ` +
      'Quality is in `models/minilm/README.md`: every vector within cosine 0.999 of the float32 model\'s. ' +
      `Targets (issue #27): ≥ 50 sentences/s in the browser for the exact model (measured ${fmt(median(browser.map((r) => r.exactPerSecond)), 0)}); ` +
      `natively at least as fast as the Python reference (measured ${python ? `${fmt(median(e.native.exact) / python, 2)}×` : 'no reference'}).`, '');
  }
  return out.join('\n');
}

function syncSection(docsDir, s) {
  if (!s) return '';
  const out = [`## Sync through a loopback relay (native)${s.quick ? ' — quick run' : ''}`, '', `Measured ${s.measuredAt} with \`benches/sync.rs\`: two databases on SQLite, the relay in the same process, all on 127.0.0.1.`, ''];
  out.push(table(['measure', 'result', 'target'], [
    [`fresh peer catches up ${s.catchUp.records.toLocaleString('en-US')} records (~1 KB each)`, range(s.catchUp.ms), '–'],
    ['live propagation, commit on A until visible on B (p50 / p99)', `${fmt(s.latency.ms.p50, 2)} ms / ${fmt(s.latency.ms.p99, 2)} ms over ${s.latency.samples} writes`, '–'],
    ['bytes per update beyond the encoded record (AEAD tag included)', `${s.overhead.overheadBytes} B (record ${s.overhead.operationBytes} B, envelope ${s.overhead.envelopeBytes} B)`, '≤ 64 B'],
    ['relay: WebSocket clients held at once', `${s.fanOut.connectionsHeld} (refused ${s.fanOut.refused})`, '≥ 1,000'],
    ['relay: deliveries per second fanned out', `${fmt(s.fanOut.deliveriesPerSecond, 0)} (${s.fanOut.delivered.toLocaleString('en-US')} of ${s.fanOut.expectedDeliveries.toLocaleString('en-US')} delivered in the window)`, '≥ 20,000'],
    ...(s.firstSync ? [[`first sync of ${fmt(s.firstSync.bytes / 1e6, 0)} MB (${s.firstSync.records.toLocaleString('en-US')} records of ~10 KB of real text) through a relay with default limits: A publishes / a fresh B holds everything`, `${fmt(s.firstSync.publishMs / 1000, 1)} s / ${fmt(s.firstSync.catchUpMs / 1000, 1)} s (refused ${s.firstSync.refused}, dropped as slow ${s.firstSync.tooSlow})`, 'finishes']] : []),
  ]), '');
  out.push(`Fan-out: ${s.fanOut.clients} clients on ${s.fanOut.topics} topics, one publisher per topic sending 200-byte envelopes every millisecond; clients and relay share this machine's 2 cores. Relay frames add ${s.overhead.publishFrameBytes - s.overhead.envelopeBytes} bytes on the way in and ${s.overhead.deliveredFrameBytes - s.overhead.envelopeBytes} on the way out (plus the WebSocket header).`, '');
  return out.join('\n');
}

function clusterSection(c) {
  if (!c) return '';
  const single = c.setups.find((s) => s.relays === 1 && /SQLite/.test(s.name));
  const out = [`## Relay cluster: SQLite against Redis (native)${c.quick ? ' — quick run' : ''}`, '',
    `Measured ${c.measuredAt} with \`benches/relay_cluster.rs\`: every relay is a \`pluresdb relay\` process (release build), Redis is Debian's \`redis-server\` with its append-only file fsynced every second (the SQLite backlog's WAL with \`synchronous=NORMAL\` is as durable); clients, relays and Redis share this machine's 2 cores on 127.0.0.1.`, ''];
  const rows = c.setups.map((s) => {
    const f = s.fanOut;
    return [
      s.name,
      `${f.held.toLocaleString('en-US')} of ${f.clients.toLocaleString('en-US')}`,
      `${fmt(f.deliveriesPerSecond, 0)} (${f.delivered.toLocaleString('en-US')} of ${f.expected.toLocaleString('en-US')})`,
      single ? `${fmt(f.deliveriesPerSecond / single.fanOut.deliveriesPerSecond, 2)}×` : '–',
      `${range(s.catchUp.ms)}`,
    ];
  });
  out.push(table(['setup', 'clients held', 'deliveries/s (delivered of published × members)', 'vs one relay on SQLite', `catch-up of ${c.setups[0].catchUp.records.toLocaleString('en-US')} records`], rows), '');
  out.push(`Deliveries: ${c.setups[0].fanOut.clients} clients on ${c.setups[0].fanOut.topics} topics (spread over the relays), one publisher per topic sending a kept 200-byte envelope every millisecond; what was published in the window and delivered within a second after it counts. The offered load (about 10,000 publishes a second, each for 99 members) is more than any setup here delivers, so the rate is each setup's capacity on these 2 cores. Two relays share the same 2 cores with Redis and the clients, so the second relay adds cost (every delivery crosses Redis to both relays) and no CPU; what relays on separate machines add is not measured here. Catch-up: A publishes ~1 KB records through the first relay; a fresh B joins through the last one (another process in the two-relay setup) and holds every record.`, '');
  out.push(`Failover: two relays on one Redis behind a TCP load balancer; A syncs through the balancer (the first relay), B through the second. The first relay is SIGKILLed and A writes at once; until B has the write (A notices, backs off 0.25–0.75 s, reconnects through the balancer to the second relay, publishes): ${range(c.failover.ms)} over ${c.failover.ms.runs} runs.`, '');
  const redis = c.setups.find((s) => s.relays === 1 && /Redis/.test(s.name));
  if (single && redis) {
    const ratio = redis.fanOut.deliveriesPerSecond / single.fanOut.deliveriesPerSecond;
    out.push(`Targets: a Redis-backed relay delivers at least half the single-node rate per relay process (measured ${fmt(ratio, 2)}×); failover under 2 s (measured median ${fmt(c.failover.ms.median / 1000, 2)} s).`, '');
  }
  return out.join('\n');
}

function nodeSection(s) {
  if (!s) return '';
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const range = (values) => `${Math.round(Math.min(...values)).toLocaleString('en')}–${Math.round(Math.max(...values)).toLocaleString('en')}`;
  const rate = (count, values) => `${Math.round(count / (median(values) / 1000)).toLocaleString('en')}/s`;
  const names = { addon: 'PluresDB, native addon (SQLite)', 'better-sqlite3': `better-sqlite3 ${s.betterSqlite3} (raw SQLite)`, wasm: 'PluresDB, WebAssembly (memory)' };
  const n = s.records.toLocaleString('en');
  const k = s.singles.toLocaleString('en');
  const out = [`## Node: the native addon${s.quick ? ' — quick run' : ''}`, '',
    `Measured ${s.measuredAt} by \`bench/suites/node.mjs\` (${s.node}): every engine in fresh processes, side by side, ${s.rounds} rounds; records are real documents (Debian package names and descriptions, ~150 bytes of JSON). better-sqlite3 is what a Node user would pick for raw speed: one table of (id, JSON text), WAL with \`synchronous=NORMAL\` (PluresDB's default), a batch in one transaction. Cold open is a fresh process until the first record is read, loading the library included. Median ms (min–max), and the rate.`, ''];
  const cell = (values, count) => (values.length ? `${Math.round(median(values)).toLocaleString('en')} ms (${range(values)})${count ? `, ${rate(count, values)}` : ''}` : '–');
  out.push(table(['', `putMany of ${n}`, `${k} awaited single puts`, `${k} gets`, `cold open of ${n}`],
    Object.entries(s.rows).map(([engine, r]) => [names[engine] ?? engine, cell(r.putManyMs, s.records), cell(r.singlePutMs, s.singles), cell(r.getMs, s.singles), cell(r.openMs)])), '');
  const addon = s.rows.addon;
  const raw = s.rows['better-sqlite3'];
  if (addon && raw) {
    const ratio = median(addon.putManyMs) / median(raw.putManyMs);
    out.push(`putMany: the addon takes ${ratio.toFixed(2)}× raw better-sqlite3's time (target ≤ 1.3×). Awaited single puts: ${rate(s.singles, addon.singlePutMs)} (target ≥ 5,000/s). The addon also keeps every record's CRDT metadata (vector clock, HLC, writer) and an in-memory copy for queries, which is why its cold open reads the whole file while better-sqlite3's reads one row.`, '');
  }
  return out.join('\n');
}

function idleSection(docsDir, s) {
  if (!s) return '';
  const out = [`## Idle Hyperswarm peers${s.quick ? ' — quick run' : ''}`, '', `Measured ${s.measuredAt} by \`bench/suites/idle.mjs\`: on a stock HyperDHT testnet on 127.0.0.1, three pairs of peers connect, then sit idle side by side for ${s.windowSeconds} s; each process's CPU time (utime + stime) over that window, in % of one core.`, ''];
  const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;
  out.push(table(['peer', 'CPU per peer (% of a core)', 'mean'], s.rows.map((row) => [
    row.name, row.cpuPercentPerPeer.map((v) => v.toFixed(2)).join(', '), `${mean(row.cpuPercentPerPeer).toFixed(2)} %`,
  ])), '');
  const native = s.rows[0];
  out.push(`Target: an idle peer under 2 % of a core (measured ${mean(native.cpuPercentPerPeer).toFixed(2)} % for the native peer). An idle native peer looks its topic up every 3 s and renews its announcements every 5 minutes; UDX streams arm no timer while idle.`, '');
  return out.join('\n');
}

function natSection(s) {
  if (!s) return '';
  const out = [`## Connecting through NATs${s.quick ? ' — quick run' : ''}`, '', `Measured ${s.measuredAt} by \`bench/suites/nat.mjs\` (\`bench_connect_times\` in \`tests/hyperswarm_nat.rs\`): per pairing, a world of network namespaces (a public bridge with a stock HyperDHT testnet, sites behind \`MASQUERADE\` routers for consistent NATs and \`MASQUERADE --random-fully\` for random ones, or on the bridge for open), then a server and a client, native Rust ↔ Rust and stock Node \`hyperdht\` ↔ Node side by side. Each figure is the time from \`connect\` to the echo of a first message (after bootstrap and the reachability check, which both stacks do first), median of the samples with min–max. Random pairings start a fresh server and client per sample, since stock hyperdht allows one random punch per node every 20 s.`, ''];
  const cell = (r) => {
    if (!r || !r.ms.length) return `failed (${r?.failures.length ?? 0})`;
    const sorted = [...r.ms].sort((a, b) => a - b);
    const failed = r.failures.length ? `, ${r.failures.length} failed` : '';
    return `${median(r.ms).toFixed(0)} ms (${sorted[0]}–${sorted.at(-1)}, n=${r.ms.length}${failed})`;
  };
  out.push(table(['pairing', 'native Rust', 'stock Node', 'native / Node'], s.pairings.map((p) => [
    p.pairing, cell(p.results.rust), cell(p.results.node),
    p.results.rust.ms.length && p.results.node.ms.length ? `${(median(p.results.rust.ms) / median(p.results.node.ms)).toFixed(2)}×` : '–',
  ])), '');
  if (s.idleServer) {
    // /proc counts CPU time in 10 ms ticks: no tick over the window is
    // "under one tick's share", not zero.
    const idle = (percent) => (percent > 0 ? `${percent.toFixed(3)} %` : `under ${(1 / s.idleServer.seconds).toFixed(3)} % (not one 10 ms clock tick in ${s.idleServer.seconds} s)`);
    out.push(`An idle server behind a consistent NAT, over ${s.idleServer.seconds} s: native ${idle(s.idleServer.rust)} of a core, stock Node ${idle(s.idleServer.node)} (target under 2 %). The native server pings its relays every 10 s to keep its NAT mappings.`, '');
  }
  out.push('A random pairing is a birthday search (256 sockets on the random side, a probe to a random port every 20 ms from the other), so its time varies widely between samples. A stock node on the open site calls itself firewalled for its first minutes (dht-rpc\'s adaptive mode), so the stock "open server" figure is a punch.', '');
  out.push('Two random NATs cannot be punched: the server names a blind relay on the public bridge (`pluresdb blind-relay` for the native pair, npm `blind-relay` on a stock node for the Node pair), and each client connects the same server one connection after another. The native client first tries the punch (round one shows both NATs random, so it gives up at once and tells the server) and then pairs through the relay; the stock client pairs through the relay at once while it tries the punch.', '');
  return out.join('\n');
}

function sizeSection(docsDir, z) {
  if (!z) return '';
  const kb = (b) => `${(b / 1024).toFixed(1)} KiB`;
  const out = ['## Download size (gzip -9)', '', 'What a browser downloads: PluresDB\'s `.wasm` and JS glue as built into `pkg/`; the others as published on npm (single-file builds, or bundled and minified with esbuild where the package is many modules).', ''];
  const names = { pluresdb: 'PluresDB', dexie: 'Dexie', pouchdb: 'PouchDB (pouchdb-browser)', rxdb: 'RxDB core (createRxDatabase)', automerge: 'Automerge' };
  out.push(table(['package', 'version', '.wasm', 'JS', 'total'], Object.entries(z).filter(([k]) => names[k]).map(([k, v]) => [
    names[k], v.version, v.wasmGzip ? kb(v.wasmGzip) : '–', kb(v.jsGzip), kb(v.totalGzip),
  ])), '');
  out.push(writeChart(docsDir, 'size.svg', {
    title: 'Gzipped download size (lower is better)', unit: 'KiB',
    bars: Object.entries(z).filter(([k]) => names[k]).map(([k, v]) => ({ label: names[k].split(' ')[0], median: v.totalGzip / 1024, highlight: k === 'pluresdb' })),
  }), '');
  out.push(`Target: the PluresDB \`.wasm\` at most 250 KiB gzipped (measured ${kb(z.pluresdb.wasmGzip)}). PluresDB includes persistence, CRDT sync with encryption and a vector index; Dexie is a wrapper over IndexedDB without sync or vectors.`, '');
  return out.join('\n');
}

function nativeSection(docsDir, n) {
  if (!n) return '';
  const get = (id) => n[id];
  const out = ['## Native (criterion)', '', `Measured ${n.measuredAt}; per-iteration median (min–max) over criterion's samples.`, ''];
  const put = ['sqlite putMany 100k/pluresdb', 'sqlite putMany 100k/raw rusqlite', 'sqlite putMany 100k/raw rusqlite, no checkpoint at commit'].filter(get);
  if (put.length) {
    const base = get('sqlite putMany 100k/pluresdb');
    out.push('### SQLite: `putMany` of 100,000 JSON records in one transaction', '');
    out.push('Raw rusqlite inserts `(id TEXT PRIMARY KEY, data TEXT)` rows (JSON serialised by serde_json) with WAL, synchronous=NORMAL, a 64 MB cache. PluresDB also stamps and encodes CRDT metadata, keeps the records in memory, and checkpoints its write-ahead log in the background instead of at commit; the third row shows raw SQLite configured that way too.', '');
    out.push(table(['implementation', 'time', 'records/s', 'PluresDB ÷ this'], put.map((id) => [
      id.split('/')[1], range(get(id)), fmt(100_000 / get(id).median * 1000, 0), ratio(base.median, get(id).median),
    ])), '');
    out.push(writeChart(docsDir, 'native-putmany.svg', {
      title: 'SQLite putMany, 100k records (lower is better)', unit: 'ms',
      bars: put.map((id) => ({ label: id.split('/')[1], ...get(id), highlight: id.endsWith('pluresdb') })),
    }), '');
    out.push(`Target: within 1.3× of raw rusqlite (measured ${ratio(base.median, get('sqlite putMany 100k/raw rusqlite').median)} against its defaults, ` +
      `${ratio(base.median, get('sqlite putMany 100k/raw rusqlite, no checkpoint at commit')?.median)} against raw SQLite without checkpoints at commit). ` +
      'The ratio moves from run to run on this machine: five runs on 2026-12-04, after large commits began encoding while SQLite writes (and staging their install meanwhile), gave 1.09×, 1.22×, 1.01×, 1.09× and 1.06× (median 1.09×), with PluresDB\'s own time between 196 and 284 ms and raw rusqlite\'s between 184 and 267 ms. Before that change six runs on 2026-11-25 gave 1.09× to 1.58× (median 1.24×), so the target was met at the median but not reliably.', '');
  }
  const reads = ['sqlite get by id/pluresdb', 'sqlite get by id/pluresdb, document not in memory', 'sqlite get by id/raw rusqlite'].filter(get);
  if (reads.length) {
    out.push('### Get one record by id (and parse it)', '');
    out.push('"Document not in memory" opens the same file with `cache_bytes: 0`, so every get reads its row back from SQLite (one `SELECT`, on the caller\'s thread when no commit holds the connection), as for a database far larger than its cache.', '');
    const micro = (stat) => ({ median: stat.median * 1000, min: stat.min * 1000, max: stat.max * 1000 });
    const readBase = get('sqlite get by id/pluresdb');
    out.push(table(['implementation', 'time', 'this ÷ PluresDB'], reads.map((id) => [
      id.split('/')[1], range(micro(get(id)), 'µs'), readBase ? ratio(get(id).median, readBase.median) : '–',
    ])), '');
  }
  const vectorIds = Object.keys(n).filter((id) => id.startsWith('vector search'));
  if (vectorIds.length) {
    const exact = Object.entries(n).find(([id]) => id.endsWith('/exact search'))?.[1];
    out.push('### Vector search, 20,000 × 384-d (`benches/vector.rs`)', '');
    out.push('Per batch of 100 queries, k = 10; exact search uses the same dot-product kernel over every vector. `cargo bench --bench vector` prints the recall.', '');
    out.push(table(['implementation', 'time per 100 queries', 'QPS', 'vs exact'], vectorIds.map((id) => [
      id.split('/')[1], range(get(id)), fmt(100 / get(id).median * 1000, 0), exact ? ratio(exact.median, get(id).median) : '–',
    ])), '');
  }
  const crdt = Object.keys(n).filter((id) => id.startsWith('crdt/'));
  if (crdt.length) {
    out.push('### CRDT core', '');
    out.push(table(['benchmark', 'time', 'operations/s'], crdt.map((id) => [
      id.slice(5), range(get(id)), fmt(get(id).elements / get(id).median * 1000, 0),
    ])), '');
  }
  return out.join('\n');
}

export function writeMarkdown(root, results) {
  const docsDir = join(root, 'docs');
  const m = results.machine;
  const parts = [
    '# PluresDB benchmarks',
    '',
    '*Generated by `npm run bench` (`bench/run.mjs`); do not edit by hand. See `bench/README.md`.*',
    '',
    `Last run ${results.date} on ${m.cpu} (${m.cores} cores, ${m.memoryGiB} GiB), ${m.node}, ${m.chromium}.`,
    'Every comparison is measured side by side in one run on the same machine; each figure is the median of several runs, with min–max.',
    '',
    storageSection(docsDir, results.suites?.storage),
    vectorSection(docsDir, results.suites?.vector),
    embedSection(docsDir, results.suites?.embed),
    nodeSection(results.suites?.node),
    syncSection(docsDir, results.suites?.sync),
    clusterSection(results.suites?.cluster),
    idleSection(docsDir, results.suites?.idle),
    natSection(results.suites?.nat),
    sizeSection(docsDir, results.suites?.size),
    nativeSection(docsDir, results.suites?.native),
  ];
  writeFileSync(join(docsDir, 'BENCHMARKS.md'), `${parts.filter((p) => p !== undefined).join('\n')}\n`);
}
