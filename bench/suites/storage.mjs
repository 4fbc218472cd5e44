// Browser storage suite driver: bench/pages/storage.js in headless Chromium.

/** Median, min and max of `times`. */
function summary(times) {
  const sorted = [...times].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted.at(-1), runs: times.length };
}

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
      const inFreshPage = async (work) => {
        const fresh = await context.newPage();
        await fresh.goto(`${baseUrl}/bench/pages/storage.html`);
        await fresh.waitForSelector('body[data-ready="true"]', { state: 'attached' });
        const result = await work(fresh);
        await fresh.close();
        return result;
      };
      const coldOpens = (variant) => inFreshPage((fresh) => fresh.evaluate(
        ([n, db, v]) => globalThis.bench.coldOpen(n, db, v), [name, dbName, variant]));
      const times = [];
      for (let run = 0; run < runs; run++) times.push((await coldOpens(undefined)).elapsed);
      if (size === sizes.at(-1) && name !== 'pouchdb') {
        // Documents beyond the cache: PluresDB's memory and cold open at
        // three cache sizes, and gets that each read IndexedDB.
        const beyond = (results.beyondCache ??= { size, gets: 2_000, open: {}, reads: {} });
        const variants = name === 'pluresdb'
          ? { 'pluresdb-all': { cacheBytes: Number.MAX_SAFE_INTEGER }, pluresdb: undefined, 'pluresdb-16': { cacheBytes: 16 * 1024 * 1024 } }
          : {};
        for (const [label, variant] of Object.entries(variants)) {
          console.log(`bench: storage/${label}: cold open of ${size} records, memory`);
          const opened = [];
          for (let run = 0; run < runs; run++) opened.push(await coldOpens(variant));
          beyond.open[label] = { ...summary(opened.map((o) => o.elapsed)), wasmBytes: Math.max(...opened.map((o) => o.wasmBytes)) };
        }
        const readVariant = name === 'pluresdb' ? { cacheBytes: 0 } : undefined;
        console.log(`bench: storage/${name}: ${beyond.gets} gets of records not in memory`);
        const elapsed = [];
        for (let run = 0; run < runs; run++) {
          elapsed.push(await inFreshPage((fresh) => fresh.evaluate(
            ([n, db, s, g, v]) => globalThis.bench.gets(n, db, s, g, v), [name, dbName, size, beyond.gets, readVariant])));
        }
        beyond.reads[name] = summary(elapsed);
      }
      if (size === sizes.at(-1)) {
        console.log(`bench: storage/${name}: single inserts into ${size} records`);
        results.singleLarge ??= { size };
        results.singleLarge[name] = await page.evaluate(
          ([n, db, r]) => globalThis.bench.singleInsertsInto(n, db, 300, r), [name, dbName, runs]);
      }
      await page.evaluate(([n, db]) => globalThis.bench.destroy(n, db), [name, dbName]);
      (results.coldOpen[size] ??= {})[name] = summary(times);
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
    const coldOpens = async (variant) => {
      const times = [];
      const loaded = [];
      let wasmBytes = 0;
      for (let run = 0; run < runs; run++) {
        const fresh = await context.newPage();
        await fresh.goto(`${baseUrl}/bench/pages/storage.html`);
        await fresh.waitForSelector('body[data-ready="true"]', { state: 'attached' });
        const result = await fresh.evaluate(([n, db, v]) => globalThis.bench.coldOpenNotes(n, db, v), [name, dbName, variant]);
        times.push(result.elapsed);
        loaded.push(result.loadedMs);
        wasmBytes = Math.max(wasmBytes, result.wasmBytes);
        await fresh.close();
      }
      const sorted = [...times].sort((a, b) => a - b);
      const loadedMs = [...loaded].sort((a, b) => a - b)[Math.floor(loaded.length / 2)];
      return { median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted.at(-1), runs: times.length, wasmBytes, loadedMs };
    };
    results.notes[name] = { ...(await coldOpens(undefined)), populateMs };
    if (name === 'pluresdb') {
      // The cache fills with what is read: the memory once every note was.
      console.log(`bench: storage/${name}: memory after listing ${notes} small notes`);
      const fresh = await context.newPage();
      await fresh.goto(`${baseUrl}/bench/pages/storage.html`);
      await fresh.waitForSelector('body[data-ready="true"]', { state: 'attached' });
      results.notes[name].afterListing = await fresh.evaluate(([n, db]) => globalThis.bench.memoryAfterListing(n, db), [name, dbName]);
      await fresh.close();
    }
    // The same database with no documents kept: what its metadata alone
    // holds in memory.
    if (name === 'pluresdb') results.notes.pluresdbNoCache = { ...(await coldOpens({ cacheBytes: 0 })), populateMs };
    // Opened to load in the background: the first get reads IndexedDB.
    if (name === 'pluresdb') results.notes.pluresdbBackground = { ...(await coldOpens({ loadInBackground: true })), populateMs };
    await page.evaluate(([n, db]) => globalThis.bench.destroy(n, db), [name, dbName]);
  }
  await page.close();
  return results;
}
