// The npm package in Node: the JavaScript API end to end, on the native
// addon (SQLite) or, with PLURESDB_NO_ADDON=1, the WebAssembly build
// (memory); scripts/test runs every Node test file both ways.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import init, { PluresDB, backend } from '../../pkg/node.js';

await init();

test('opens under Node: a SQLite file on the addon, memory on WebAssembly', async () => {
  const db = await PluresDB.open('node-open');
  assert.equal(db.name, 'node-open');
  assert.equal(db.storageKind, backend === 'native' ? 'sqlite' : 'memory');
  await db.close();
});

test('put, get, delete round-trip plain JSON', async () => {
  const db = await PluresDB.open('node-crud');
  const value = { name: 'Alice', tags: ['a', 'b'], nested: { n: 1.5, ok: true, none: null } };
  await db.put('user:1', value);
  assert.deepEqual(await db.get('user:1'), value);
  assert.equal(await db.get('missing'), undefined);
  assert.equal(await db.delete('user:1'), true);
  assert.equal(await db.get('user:1'), undefined);
  assert.equal(await db.delete('user:1'), false);
  await db.close();
});

test('putMany and list with prefix, limit and cursor', async () => {
  const db = await PluresDB.open('node-list');
  await db.putMany([
    ['b:2', 2],
    ['a:1', 1],
    { id: 'b:1', data: { one: 1 } },
    ['b:3', [3]],
  ]);
  const first = await db.list({ prefix: 'b:', limit: 2 });
  assert.deepEqual(first.items, [{ id: 'b:1', data: { one: 1 } }, { id: 'b:2', data: 2 }]);
  assert.equal(first.nextCursor, 'b:2');
  const rest = await db.list({ prefix: 'b:', cursor: first.nextCursor });
  assert.deepEqual(rest.items, [{ id: 'b:3', data: [3] }]);
  assert.equal(rest.nextCursor, null);
  assert.equal((await db.list()).items.length, 4);
  await db.close();
});

test('values that are not JSON are rejected with InvalidInputError', async () => {
  const db = await PluresDB.open('node-invalid');
  const cyclic = { a: 1 };
  cyclic.self = cyclic;
  const cases = [
    [{ when: new Date() }, /Date/],
    [{ missing: undefined }, /undefined/],
    [{ fn() {} }, /function/],
    [{ n: NaN }, /finite/],
    [{ n: Infinity }, /finite/],
    [new Map([[1, 2]]), /Map/],
    [cyclic, /cycle/],
    [10n, /BigInt/],
    [[1, , 3], /sparse/], // eslint-disable-line no-sparse-arrays
  ];
  for (const [value, pattern] of cases) {
    await assert.rejects(db.put('x', value), (error) => {
      assert.equal(error.name, 'InvalidInputError');
      assert.match(error.message, pattern);
      return true;
    });
  }
  assert.equal(await db.get('x'), undefined, 'nothing was stored');
  await db.close();
});

test('bad ids and arguments are typed errors', async () => {
  const db = await PluresDB.open('node-bad-args');
  await assert.rejects(db.put('', 1), { name: 'InvalidInputError', message: /empty/ });
  await assert.rejects(db.put('a'.repeat(2000), 1), { name: 'InvalidInputError', message: /1024/ });
  await assert.rejects(db.putMany('nope'), { name: 'InvalidInputError' });
  await assert.rejects(db.putMany([[1, 2]]), { name: 'InvalidInputError', message: /string id/ });
  await assert.rejects(db.list({ limit: -1 }), { name: 'InvalidInputError' });
  await assert.rejects(PluresDB.open('x', { storage: 'floppy' }), { name: 'InvalidInputError' });
  await db.close();
});

test('a closed database refuses calls with ClosedError', async () => {
  const db = await PluresDB.open('node-closed');
  await db.put('a', 1);
  await db.close();
  await assert.rejects(db.get('a'), { name: 'ClosedError' });
  await assert.rejects(db.put('a', 2), { name: 'ClosedError' });
});

test('a large putMany is one transaction: a bad entry late in it stores nothing and is named', async () => {
  // The addon sends batches over 4,096 entries in slices; error messages
  // and atomicity must not show it.
  const db = await PluresDB.open('node-large-batch', { storage: 'memory' });
  const entries = Array.from({ length: 10_000 }, (_, i) => [`big:${String(i).padStart(5, '0')}`, { i }]);
  entries[9_000] = ['big:09000', { when: new Date(0) }];
  await assert.rejects(db.putMany(entries), { name: 'InvalidInputError', message: /entries\[9000\]\.data/ });
  entries[9_500] = [42, {}];
  entries[9_000] = ['big:09000', { i: 9_000 }];
  await assert.rejects(db.putMany(entries), { name: 'InvalidInputError', message: /entry 9500 has no string id/ });
  assert.equal((await db.list({ prefix: 'big:' })).items.length, 0, 'nothing was stored');
  entries[9_500] = ['big:09500', { i: 9_500 }];
  entries[8_191] = { id: 'big:08191', data: { i: 8_191, object: true }, vector: [1, 0, 0] };
  await db.putMany(entries);
  const page = await db.list({ prefix: 'big:', limit: 10_000 });
  assert.equal(page.items.length, 10_000);
  assert.deepEqual(page.items[8_191], { id: 'big:08191', data: { i: 8_191, object: true } });
  assert.deepEqual(page.items[9_999], { id: 'big:09999', data: { i: 9_999 } });
  assert.equal((await db.search([1, 0, 0], { k: 1 }))[0].id, 'big:08191');
  await db.close();
});

test('indexes: a query on an indexed field reads only its matches (explain), a scan of many records warns once', async () => {
  const db = await PluresDB.open(`node-indexes-${process.pid}`, { indexes: ['category', 'score'] });
  await db.putMany(Array.from({ length: 2_000 }, (_, n) => [
    `n${String(n).padStart(4, '0')}`, { category: `c${n % 20}`, score: n, other: n % 20 },
  ]));
  const hits = await db.query({ where: { category: 'c7', score: { $gte: 1_000 } }, sort: '-score' });
  assert.equal(hits.length, 50);
  assert.deepEqual(hits[0], { id: 'n1987', data: { category: 'c7', score: 1_987, other: 7 } });
  assert.deepEqual(await db.explain({ where: { category: 'c7' } }), { index: 'category', reads: 100 });
  assert.deepEqual(await db.explain({ where: { score: { $gt: 1_989 } } }), { index: 'score', reads: 10 });
  assert.deepEqual(await db.explain({ where: { other: 7 } }), { index: null, reads: 2_000 });
  // The scan gives the same answer; on WebAssembly it warns on the console
  // once per set of fields (natively, through the log).
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.join(' '));
  try {
    assert.equal((await db.query({ where: { other: 7 } })).length, 100);
    assert.equal((await db.query({ where: { other: 8 } })).length, 100);
  } finally {
    console.warn = warn;
  }
  if (backend !== 'native') {
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0], /query on other read all 2000 records.*indexes/);
  }
  await assert.rejects(PluresDB.open('node-indexes-bad', { indexes: 'category' }),
    { name: 'InvalidInputError', message: /`indexes` must be an array of field names/ });
  await assert.rejects(PluresDB.open('node-indexes-bad', { indexes: ['a', 'a'] }),
    { name: 'InvalidInputError', message: /indexed twice/ });
  await db.destroy();
});
