// Vector search through the npm package in Node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import init, { PluresDB, hashEmbed } from '../../pkg/node.js';

await init();

function randomVector(seed, dim) {
  let state = seed * 2654435761 >>> 0 || 1;
  return Float32Array.from({ length: dim }, () => {
    state ^= state << 13; state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5; state >>>= 0;
    return state / 4294967296 - 0.5;
  });
}

test('putWithEmbedding and search by vector, with k, minScore and filter', async () => {
  const db = await PluresDB.open('node-vectors', { index: { sealThreshold: 64, efConstruction: 64 } });
  for (let i = 0; i < 300; i++) {
    await db.putWithEmbedding(`v${i}`, { i, even: i % 2 === 0 }, randomVector(i + 1, 32));
  }
  await db.flushIndex();
  const stats = db.indexStats();
  assert.equal(stats.dimension, 32);
  assert.equal(stats.vectors, 300);
  assert.ok(stats.segments.length >= 1, JSON.stringify(stats));
  // Memory: the exact vectors, and graphs of at least one code byte per component.
  assert.equal(stats.vectorBytes, 300 * 32 * 4);
  assert.ok(stats.graphBytes >= 300 * 32, JSON.stringify(stats));

  const hits = await db.search(randomVector(43, 32), { k: 5 });
  assert.equal(hits.length, 5);
  assert.deepEqual(hits[0], { id: 'v42', score: hits[0].score, data: { i: 42, even: true } });
  assert.ok(hits[0].score > 0.999);
  assert.ok(hits.every((h, i) => i === 0 || hits[i - 1].score >= h.score));

  const even = await db.search(Array.from(randomVector(44, 32)), { k: 3, filter: { where: { even: true } } });
  assert.equal(even.length, 3);
  assert.ok(even.every((h) => h.data.even));
  const strict = await db.search(randomVector(43, 32), { minScore: 0.99 });
  assert.deepEqual(strict.map((h) => h.id), ['v42']);

  await db.delete('v42');
  assert.ok((await db.search(randomVector(43, 32), { k: 300 })).every((h) => h.id !== 'v42'));
  await db.close();
});

test('bad vectors are DimensionMismatchError or InvalidInputError and store nothing', async () => {
  const db = await PluresDB.open('node-bad-vectors');
  await db.putWithEmbedding('a', 1, [1, 0, 0]);
  await assert.rejects(db.putWithEmbedding('b', 1, [1, 0]), { name: 'DimensionMismatchError', message: /3/ });
  await assert.rejects(db.putWithEmbedding('b', 1, [1, NaN, 0]), { name: 'InvalidInputError', message: /NaN/ });
  await assert.rejects(db.putWithEmbedding('b', 1, []), { name: 'InvalidInputError' });
  await assert.rejects(db.putWithEmbedding('b', 1, 'nope'), { name: 'InvalidInputError' });
  await assert.rejects(db.putWithEmbedding('b', 1, ['x', 1, 2]), { name: 'InvalidInputError' });
  await assert.rejects(db.search([1, 0]), { name: 'DimensionMismatchError' });
  await assert.rejects(db.search([1, 0, 0], { k: 0 }), { name: 'InvalidInputError' });
  await assert.rejects(db.search('text needs an embedder'), { name: 'EmbedderError' });
  assert.equal(await db.get('b'), undefined);
  await db.close();
});

test('a JavaScript embedder embeds text fields on put, and search accepts text', async () => {
  let calls = 0;
  const db = await PluresDB.open('node-embedder', {
    embedder: async (texts) => { calls++; return hashEmbed(texts); },
    embedFields: ['title', 'body'],
  });
  await db.put('n1', { title: 'Groceries', body: 'oat milk, bread, apples and coffee beans' });
  await db.put('n2', { title: 'Tax return', body: 'send the quarterly tax report to the accountant' });
  await db.put('n3', { title: 'Garden', body: 'water the tomatoes and plant basil', n: 3 });
  await db.put('n4', { count: 4 }); // no text: not embedded
  assert.equal(calls, 3);
  assert.equal(db.indexStats().vectors, 3);
  const hits = await db.search('buy bread and milk', { k: 2 });
  assert.equal(hits[0].id, 'n1');
  const vectors = hashEmbed(['hello world', ''], 64);
  assert.equal(vectors.length, 2);
  assert.ok(vectors[0] instanceof Float32Array && vectors[0].length === 64);
  await db.close();

  const failing = await PluresDB.open('node-embedder-fails', {
    embedder: async () => { throw new Error('model not loaded'); },
  });
  await assert.rejects(failing.put('x', { text: 'hi' }), { name: 'EmbedderError', message: /model not loaded/ });
  assert.equal(await failing.get('x'), undefined);
  await failing.close();
  await assert.rejects(PluresDB.open('x', { embedder: 42 }), { name: 'InvalidInputError' });
});

test('384-d search through the WebAssembly kernels: recall against exact search, exact scores', async () => {
  // Clustered unit vectors, so nearest neighbours are well separated from the rest.
  const dim = 384;
  const centres = Array.from({ length: 20 }, (_, c) => randomVector(c + 1, dim));
  const unit = (v) => { let n = 0; for (const x of v) n += x * x; n = Math.sqrt(n); return v.map((x) => x / n); };
  const vectors = Array.from({ length: 1500 }, (_, i) => {
    const noise = randomVector(i + 100, dim);
    return unit(centres[i % 20].map((c, d) => c + 0.5 * noise[d]));
  });
  const db = await PluresDB.open('node-vectors-384', { index: { sealThreshold: 500 } });
  await db.putMany(vectors.map((v, i) => [`v${i}`, { i }, v]));
  await db.flushIndex();
  assert.ok(db.indexStats().segments.length >= 1, JSON.stringify(db.indexStats()));
  const dot = (a, b) => { let s = 0; for (let d = 0; d < dim; d++) s += a[d] * b[d]; return s; };
  let found = 0;
  for (let q = 0; q < 30; q++) {
    const query = unit(vectors[q * 37].map((x, d) => x + 0.2 * randomVector(q + 9000, dim)[d]));
    const exact = vectors.map((v, i) => ({ id: `v${i}`, score: dot(query, v) }))
      .sort((a, b) => b.score - a.score).slice(0, 10);
    const hits = await db.search(query, { k: 10, ef: 64 });
    assert.equal(hits.length, 10);
    const wanted = new Set(exact.map((h) => h.id));
    found += hits.filter((h) => wanted.has(h.id)).length;
    for (const hit of hits) {
      // Scores are the exact cosine (the graph's byte-quantised distances are re-scored).
      assert.ok(Math.abs(hit.score - dot(query, vectors[hit.data.i])) < 1e-4, `${hit.id} ${hit.score}`);
    }
  }
  const recall = found / 300;
  assert.ok(recall >= 0.95, `recall@10 ${recall}`);
  await db.close();
});
