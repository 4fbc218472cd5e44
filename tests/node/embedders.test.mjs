// The built-in embedders through the npm package in Node: `minilm-static`
// against the Python reference (tokens and vectors of models/minilm-static/
// check.json, recall@10 against all-MiniLM-L6-v2 on the benchmark corpus),
// `minilm` (the transformer, WebAssembly) against the float32 reference
// (models/minilm/check.json and the 1,050 real sentences of
// tests/data/sentences-minilm.bin), and both by name in PluresDB.open.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import init, { PluresDB } from '../../pkg/node.js';
import { EXACT_MODEL, loadEmbedder, STATIC_MODEL } from '../../pkg/embedders.js';
import { loadCorpus } from '../../bench/lib/corpus.mjs';

await init();
const root = new URL('../../', import.meta.url);

test('minilm-static gives the Python reference its vectors (check.json)', async () => {
  const check = JSON.parse(readFileSync(new URL('models/minilm-static/check.json', root), 'utf8'));
  const embed = await loadEmbedder(STATIC_MODEL);
  assert.equal(embed.modelName, 'minilm-static@1');
  assert.equal(embed.dimension, 256);
  const vectors = await embed(check.samples.map((s) => s.text));
  assert.equal(check.samples.length, 20);
  check.samples.forEach((sample, i) => {
    sample.embedding_head.forEach((expected, d) => {
      assert.ok(Math.abs(vectors[i][d] - expected) < 1e-5,
        `${JSON.stringify(sample.text)} component ${d}: ${vectors[i][d]} against ${expected}`);
    });
  });
});

test('minilm-static finds a quarter of MiniLM\'s true top 10 on 300 real queries', async () => {
  const lines = readFileSync(new URL('bench/data/corpus.txt', root), 'utf8').split('\n');
  const corpus = await loadCorpus(new URL('bench/data/corpus-minilm.bin', root));
  const embed = await loadEmbedder(STATIC_MODEL);
  const base = await embed(lines.slice(0, 20000));
  const queries = await embed(lines.slice(20000, 20300));
  let hits = 0;
  queries.forEach((query, q) => {
    const scored = base.map((v, i) => {
      let s = 0;
      for (let d = 0; d < v.length; d++) s += v[d] * query[d];
      return [s, i];
    });
    scored.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const truth = new Set(corpus.truth[q].subarray(0, 10));
    hits += scored.slice(0, 10).filter(([, i]) => truth.has(i)).length;
  });
  const recall = hits / (10 * queries.length);
  // 0.2828 over all 1,000 queries (scripts/distill-static-model.py); a
  // static model of this kind tops out near 0.3 here.
  assert.ok(recall >= 0.25, `recall@10 ${recall}`);
});

test('minilm-static reads only the first 512 tokens of a text, however long', async () => {
  const embed = await loadEmbedder(STATIC_MODEL);
  const word = `${'q'.repeat(99)}x`;
  // 6 words of 100 single-letter pieces pass 512 tokens; what follows changes nothing.
  const head = Array(6).fill(word).join(' ');
  const tail = Array(100000).fill('book flights to lisbon').join(' ');
  const [headVector, hugeVector, tailVector] = await embed([head, `${head} ${tail}`, tail]);
  assert.deepEqual(hugeVector, headVector);
  assert.notDeepEqual(tailVector, headVector);
});

function cosine(a, b) {
  let sum = 0;
  for (let d = 0; d < a.length; d++) sum += a[d] * b[d];
  return sum;
}

/** tests/data/sentences-minilm.bin: 1,000 sentences and 50 queries with the reference's vectors. */
function readSentences() {
  const data = readFileSync(new URL('tests/data/sentences-minilm.bin', root));
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  assert.equal(data.subarray(0, 8).toString('latin1'), 'PLDBEMB1');
  const [count, queries, dimension] = [8, 12, 16].map((at) => view.getUint32(at, true));
  const texts = [];
  const vectors = [];
  let at = 20;
  for (let i = 0; i < count + queries; i++) {
    const length = view.getUint32(at, true);
    texts.push(data.subarray(at + 4, at + 4 + length).toString('utf8'));
    at += 4 + length + (i >= count ? 4 : 0);
    vectors.push(new Float32Array(data.buffer.slice(data.byteOffset + at, data.byteOffset + at + 4 * dimension)));
    at += 4 * dimension;
  }
  assert.equal(at, data.length);
  return { texts, vectors, count };
}

function topTen(vectors, count, q) {
  return vectors.slice(0, count)
    .map((v, i) => [i === q ? -Infinity : cosine(v, vectors[q]), i])
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, 10)
    .map(([, i]) => i);
}

test('minilm gives the float32 reference its tokens and vectors (check.json)', async (t) => {
  const check = JSON.parse(readFileSync(new URL('models/minilm/check.json', root), 'utf8'));
  const embed = await loadEmbedder(EXACT_MODEL);
  assert.equal(embed.modelName, 'minilm@1');
  assert.equal(embed.dimension, 384);
  const vectors = await embed(check.samples.map((s) => s.text));
  let lowest = 1;
  check.samples.forEach((sample, i) => {
    const similarity = cosine(vectors[i], sample.vector);
    lowest = Math.min(lowest, similarity);
    assert.ok(similarity >= 0.995, `${JSON.stringify(sample.text)}: cosine ${similarity}`);
  });
  t.diagnostic(`lowest cosine to the reference: ${lowest.toFixed(5)}`);
});

test('minilm on 1,050 real sentences: every vector within cosine 0.99 of the reference, recall@10 >= 0.95', async (t) => {
  const { texts, vectors: reference, count } = readSentences();
  const embed = await loadEmbedder(EXACT_MODEL);
  const ours = await embed(texts);
  let worst = 1;
  ours.forEach((vector, i) => { worst = Math.min(worst, cosine(vector, reference[i])); });
  assert.ok(worst >= 0.99, `lowest cosine ${worst}`);
  let hits = 0;
  for (let q = 0; q < count; q++) {
    const truth = new Set(topTen(reference, count, q));
    hits += topTen(ours, count, q).filter((i) => truth.has(i)).length;
  }
  // 0.979 in scripts/export-minilm.py, through PyTorch with the same weights.
  const recall = hits / (10 * count);
  assert.ok(recall >= 0.95, `recall@10 ${recall}`);
  t.diagnostic(`lowest cosine ${worst.toFixed(5)}, recall@10 ${recall.toFixed(3)}`);
});

test('minilm: a vector made by the WebAssembly model and one made by the database (the addon: native Rust) agree', async () => {
  // The record's vector comes from the WebAssembly module; the query is
  // embedded by the database's own 'minilm' (natively on the addon
  // backend, in WebAssembly on the fallback). The same text must score 1.
  const embed = await loadEmbedder(EXACT_MODEL);
  const texts = ['Book flights to Lisbon for the conference', 'naïve façade résumé, 中文 and 🙂'];
  const vectors = await embed(texts);
  const db = await PluresDB.open('node-minilm-agree', { storage: 'memory', embedder: EXACT_MODEL });
  for (const [i, vector] of vectors.entries()) await db.putWithEmbedding(`t${i}`, { i }, vector);
  for (const [i, text] of texts.entries()) {
    const [hit] = await db.search(text, { k: 1 });
    assert.equal(hit.id, `t${i}`);
    assert.ok(hit.score > 0.9999, `${text}: score ${hit.score}`);
  }
  await db.close();
});

for (const name of [STATIC_MODEL, EXACT_MODEL]) test(`embedder: '${name}' by name: 'travel plans' finds the Lisbon note`, async () => {
  const db = await PluresDB.open(`node-${name}`, { storage: 'memory', embedder: name, embedFields: ['text'] });
  await db.put('kids', { text: 'Pick up the kids from football practice at 5' });
  await db.put('lisbon', { text: 'Book flights to Lisbon for the conference' });
  await db.put('anna', { text: 'Buy a birthday present for Anna' });
  const [best] = await db.search('travel plans', { k: 3 });
  assert.equal(best.id, 'lisbon');
  assert.equal((await db.search('gift ideas', { k: 1 }))[0].id, 'anna');
  assert.equal((await db.search('soccer', { k: 1 }))[0].id, 'kids');
  await db.close();
});

test("embedder: 'hash' by name, and an unknown name is a typed error", async () => {
  const db = await PluresDB.open('node-hash-by-name', { storage: 'memory', embedder: 'hash', embedderDimension: 64 });
  await db.put('n1', { text: 'Buy oat milk and bread' });
  const [hit] = await db.search('bread', { k: 1 });
  assert.equal(hit.id, 'n1');
  assert.equal(db.indexStats().dimension, 64);
  await db.close();
  await assert.rejects(PluresDB.open('node-bad-embedder', { storage: 'memory', embedder: 'gpt-9' }),
    (error) => error.name === 'InvalidInputError' && /unknown embedder 'gpt-9'/.test(error.message));
});
