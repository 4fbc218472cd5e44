// Browser vector suite driver: bench/pages/vector.js in headless Chromium.
//
// Real sentence embeddings first (the headline: three rounds, so the spread
// shows), then the synthetic clustered set. Every PluresDB build runs in a
// fresh page, as its memory figure is the growth of a module's memory.
async function inPage(context, baseUrl, options) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error('bench page error:', error));
  try {
    await page.goto(`${baseUrl}/bench/pages/vector.html`);
    await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
    return await page.evaluate((o) => globalThis.bench.run(o), options);
  } finally {
    await page.close();
  }
}

export async function runVectorSuite({ context, baseUrl, quick }) {
  const rounds = quick ? 1 : 3;
  const real = { runs: [] };
  for (let round = 1; round <= rounds; round++) {
    console.log(`bench: vector: real embeddings, round ${round} of ${rounds}: PluresDB (memory), hnswlib-wasm, brute force`);
    const first = await inPage(context, baseUrl, { set: 'real', contenders: ['bruteforce', 'pluresdb', 'hnswlib'] });
    console.log(`bench: vector: real embeddings, round ${round} of ${rounds}: PluresDB (IndexedDB)`);
    const second = await inPage(context, baseUrl, { set: 'real', contenders: ['pluresdbIndexedDb'] });
    real.runs.push({ ...first, contenders: { ...first.contenders, ...second.contenders } });
    const p = first.contenders.pluresdb;
    console.log(`bench: vector: PluresDB ${Math.round(p.build.perSecond)} vectors/s, default recall ${p.queries.default.recall.toFixed(3)} at ${Math.round(p.queries.default.qps)} QPS`);
  }
  const count = quick ? 5000 : 20000;
  console.log(`bench: vector: synthetic: ${count} x 384-d clustered vectors, PluresDB, hnswlib-wasm, voy-search, brute force`);
  const synthetic = await inPage(context, baseUrl, { set: 'synthetic', count, efs: [16, 32, 64, 128] });
  return { real, synthetic };
}
