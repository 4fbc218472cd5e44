// Browser storage suite driver: bench/pages/storage.js in headless Chromium.
export async function runStorageSuite({ context, baseUrl, runs, quick }) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error('bench page error:', error));
  await page.goto(`${baseUrl}/bench/pages/storage.html`);
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  const contenders = await page.evaluate(() => globalThis.bench.contenders);
  const docs = quick ? 2_000 : 10_000;
  const results = { docs, bulk: {}, single: {}, reads: {}, coldOpen: {} };
  for (const name of contenders) {
    console.log(`bench: storage/${name}: bulk insert, single inserts, reads`);
    results.bulk[name] = await page.evaluate(([n, d, r]) => globalThis.bench.bulkInsert(n, d, r), [name, docs, runs]);
    results.single[name] = await page.evaluate(([n, r]) => globalThis.bench.singleInserts(n, 300, r), [name, runs]);
    results.reads[name] = await page.evaluate(([n, d, r]) => globalThis.bench.reads(n, d, r), [name, docs, runs]);
  }
  // The same single inserts at the other durability.
  for (const [name, variant] of [['pluresdb', 'relaxed'], ['indexeddb', 'strict']]) {
    console.log(`bench: storage/${name}: single inserts, durability ${variant}`);
    results.single[`${name}-${variant}`] = await page.evaluate(
      ([n, r, v]) => globalThis.bench.singleInserts(n, 300, r, v), [name, runs, variant]);
  }
  const sizes = quick ? [10_000] : [10_000, 100_000];
  for (const size of sizes) {
    for (const name of contenders) {
      if (name === 'pouchdb' && size > 10_000) continue; // populating takes minutes
      console.log(`bench: storage/${name}: cold open of ${size} records`);
      const dbName = `cold-${name}-${size}-${Date.now()}`;
      await page.evaluate(([n, db, s]) => globalThis.bench.populate(n, db, s), [name, dbName, size]);
      const times = [];
      for (let run = 0; run < runs; run++) {
        const fresh = await context.newPage();
        await fresh.goto(`${baseUrl}/bench/pages/storage.html`);
        await fresh.waitForSelector('body[data-ready="true"]', { state: 'attached' });
        times.push(await fresh.evaluate(([n, db]) => globalThis.bench.coldOpen(n, db), [name, dbName]));
        await fresh.close();
      }
      if (size === sizes.at(-1)) {
        console.log(`bench: storage/${name}: single inserts into ${size} records`);
        results.singleLarge ??= { size };
        results.singleLarge[name] = await page.evaluate(
          ([n, db, r]) => globalThis.bench.singleInsertsInto(n, db, 300, r), [name, dbName, runs]);
      }
      await page.evaluate(([n, db]) => globalThis.bench.destroy(n, db), [name, dbName]);
      const sorted = [...times].sort((a, b) => a - b);
      (results.coldOpen[size] ??= {})[name] = {
        median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted.at(-1), runs: times.length,
      };
    }
  }
  // A million small notes: PluresDB holds every record in memory, the
  // others read lazily.
  const notes = quick ? 100_000 : 1_000_000;
  results.notes = { count: notes };
  for (const name of contenders) {
    if (name === 'pouchdb') continue; // populating takes far too long
    console.log(`bench: storage/${name}: cold open of ${notes} small notes`);
    const dbName = `notes-${name}-${Date.now()}`;
    const started = Date.now();
    await page.evaluate(([n, db, c]) => globalThis.bench.populateNotes(n, db, c), [name, dbName, notes]);
    const populateMs = Date.now() - started;
    const times = [];
    let wasmBytes = 0;
    for (let run = 0; run < runs; run++) {
      const fresh = await context.newPage();
      await fresh.goto(`${baseUrl}/bench/pages/storage.html`);
      await fresh.waitForSelector('body[data-ready="true"]', { state: 'attached' });
      const result = await fresh.evaluate(([n, db]) => globalThis.bench.coldOpenNotes(n, db), [name, dbName]);
      times.push(result.elapsed);
      wasmBytes = Math.max(wasmBytes, result.wasmBytes);
      await fresh.close();
    }
    await page.evaluate(([n, db]) => globalThis.bench.destroy(n, db), [name, dbName]);
    const sorted = [...times].sort((a, b) => a - b);
    results.notes[name] = {
      median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted.at(-1), runs: times.length,
      populateMs, wasmBytes,
    };
  }
  await page.close();
  return results;
}
