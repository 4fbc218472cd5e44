// `npm run bench`: runs the benchmark suites and writes
// bench/results/<date>.json and docs/BENCHMARKS.md (tables and SVG charts).
//
//   node bench/run.mjs                 every suite
//   node bench/run.mjs storage vector  only these (others keep their last results)
//   node bench/run.mjs --quick         smaller data and fewer runs (a smoke test)
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser } from '../tests/e2e/harness.mjs';
import { startStaticServer } from './lib/server.mjs';
import { runCriterion } from './suites/native.mjs';
import { runStorageSuite } from './suites/storage.mjs';
import { runVectorSuite } from './suites/vector.mjs';
import { runEmbedSuite } from './suites/embed.mjs';
import { runSyncSuite } from './suites/sync.mjs';
import { runClusterSuite } from './suites/cluster.mjs';
import { runSizeSuite } from './suites/size.mjs';
import { runIdleSuite } from './suites/idle.mjs';
import { runNatSuite } from './suites/nat.mjs';
import { runNodeSuite } from './suites/node.mjs';
import { writeMarkdown } from './lib/markdown.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const runsArg = args.indexOf('--runs');
const runs = runsArg >= 0 ? Number(args[runsArg + 1]) : quick ? 3 : 5;
const allSuites = ['storage', 'vector', 'embed', 'node', 'sync', 'cluster', 'idle', 'nat', 'size', 'native'];
const requested = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--runs');
const suites = requested.length ? requested : allSuites;
for (const suite of suites) {
  if (!allSuites.includes(suite)) {
    console.error(`bench: unknown suite '${suite}' (suites: ${allSuites.join(', ')})`);
    process.exit(2);
  }
}

function bundleBrowserDependencies() {
  const out = join(root, 'bench', 'tmp');
  mkdirSync(out, { recursive: true });
  const entry = join(out, 'pouchdb-entry.js');
  writeFileSync(entry, "import PouchDB from 'pouchdb-browser';\nexport default PouchDB;\n");
  execFileSync(join(root, 'node_modules', '.bin', 'esbuild'), [
    entry, '--bundle', '--format=esm', `--outfile=${join(out, 'pouchdb.mjs')}`,
    '--log-level=warning', '--define:global=globalThis',
  ], { cwd: root, stdio: 'inherit' });
}

function latestResults() {
  const dir = join(root, 'bench', 'results');
  if (!existsSync(dir)) return {};
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  return files.length ? JSON.parse(readFileSync(join(dir, files.at(-1)), 'utf8')) : {};
}

function chromiumVersion() {
  try {
    return execFileSync(process.env.CHROMIUM ?? '/usr/bin/chromium', ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

const previous = latestResults();
const results = {
  ...previous,
  date: new Date().toISOString(),
  machine: {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    chromium: chromiumVersion(),
  },
  suites: { ...(previous.suites ?? {}) },
};

const needsBrowser = suites.some((s) => ['storage', 'vector', 'embed'].includes(s));
let server;
let browser;
try {
  if (needsBrowser) {
    bundleBrowserDependencies();
    server = await startStaticServer(root);
    browser = await launchBrowser();
  }
  for (const suite of suites) {
    const started = Date.now();
    console.log(`bench: ===== ${suite} =====`);
    if (suite === 'storage') {
      results.suites.storage = await runStorageSuite({ context: browser.context, baseUrl: server.url, runs, quick });
    } else if (suite === 'vector') {
      results.suites.vector = await runVectorSuite({ context: browser.context, baseUrl: server.url, quick });
    } else if (suite === 'embed') {
      results.suites.embed = await runEmbedSuite({ context: browser.context, baseUrl: server.url, root, runs, quick });
    } else if (suite === 'sync') {
      results.suites.sync = runSyncSuite(root, quick);
    } else if (suite === 'cluster') {
      results.suites.cluster = runClusterSuite(root, quick);
    } else if (suite === 'node') {
      results.suites.node = runNodeSuite(root, { runs, quick });
    } else if (suite === 'idle') {
      results.suites.idle = await runIdleSuite(root, quick);
    } else if (suite === 'nat') {
      results.suites.nat = runNatSuite(root, quick);
    } else if (suite === 'size') {
      results.suites.size = runSizeSuite(root);
    } else if (suite === 'native') {
      // PLURESDB_NATIVE_BENCHES=vector re-runs only some criterion benches;
      // the others' last samples (target/criterion) are read as they are.
      const benches = process.env.PLURESDB_NATIVE_BENCHES?.split(',') ?? ['crdt', 'storage', 'vector'];
      // Benches not re-run keep their last results (from bench/results).
      results.suites.native = { ...(previous.suites?.native ?? {}), ...runCriterion(root, benches) };
    }
    results.suites[suite].measuredAt = new Date().toISOString();
    results.suites[suite].quick = quick;
    console.log(`bench: ${suite} took ${Math.round((Date.now() - started) / 1000)} s`);
  }
} finally {
  await browser?.close();
  await server?.close();
}

const resultsDir = join(root, 'bench', 'results');
mkdirSync(resultsDir, { recursive: true });
const file = join(resultsDir, `${results.date.slice(0, 10)}.json`);
writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
writeMarkdown(root, results);
console.log(`bench: wrote ${file} and docs/BENCHMARKS.md`);
