// Browser vector suite driver: bench/pages/vector.js in headless Chromium.
export async function runVectorSuite({ context, baseUrl, quick }) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error('bench page error:', error));
  await page.goto(`${baseUrl}/bench/pages/vector.html`);
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  const count = quick ? 5000 : 20000;
  console.log(`bench: vector: ${count} x 384-d vectors, PluresDB, hnswlib-wasm, voy-search, brute force`);
  const results = await page.evaluate((n) => globalThis.bench.run({ count: n }), count);
  await page.close();
  return results;
}
