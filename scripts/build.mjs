// Builds the npm package into pkg/:
//   wasm32 release build -> wasm-bindgen (ES module) -> pkg-template files
//   (package.json stamped with the crate version) -> wasm-opt -Oz,
// then prints the raw and gzipped size of the .wasm.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { platformTriple } from '../pkg-template/platform.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = join(root, 'pkg');
const target = 'wasm32-unknown-unknown';

function run(command, args) {
  execFileSync(command, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
}

function crateVersion() {
  const manifest = readFileSync(join(root, 'Cargo.toml'), 'utf8');
  const match = manifest.match(/^\[package\][^[]*?^version\s*=\s*"([^"]+)"/ms);
  if (!match) throw new Error('cannot read the package version from Cargo.toml');
  return match[1];
}

function kib(bytes) {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

console.log('build: compiling the wasm32 release build');
run('cargo', ['build', '--quiet', '--lib', '--profile', 'wasm-release', '--target', target]);

rmSync(pkg, { recursive: true, force: true });
mkdirSync(pkg, { recursive: true });
console.log('build: generating JavaScript bindings (wasm-bindgen)');
run('wasm-bindgen', [
  '--target', 'web',
  '--out-dir', pkg,
  '--out-name', 'pluresdb',
  '--remove-name-section',
  '--remove-producers-section',
  join(root, 'target', target, 'wasm-release', 'pluresdb.wasm'),
]);

for (const file of ['README.md', 'node.js', 'node.d.ts', 'node-wasm.js', 'node-addon.js', 'platform.js', 'worker.js', 'worker.d.ts', 'worker-host.js', 'hyperswarm.js', 'hyperswarm.d.ts']) {
  cpSync(join(root, 'pkg-template', file), join(pkg, file));
}
// Built-in models: separate assets, fetched only when a database asks for
// one (never part of the .wasm); `pluresdb/embedders` re-exports their
// loader from the snippet the .wasm itself imports.
for (const file of ['vocab.txt', 'embeddings.bin', 'README.md']) {
  cpSync(join(root, 'models', 'minilm-static', file), join(pkg, 'models', 'minilm-static', file));
}
// The exact model: its own WebAssembly module (crates/minilm, with SIMD,
// optimised for speed, not size), its weights and the vocabulary.
console.log('build: compiling the minilm model module (wasm32, release)');
run('cargo', ['build', '--quiet', '-p', 'pluresdb-minilm', '--lib', '--release', '--target', target]);
const minilm = join(pkg, 'models', 'minilm');
run('wasm-bindgen', [
  '--target', 'web',
  '--out-dir', minilm,
  '--out-name', 'minilm',
  '--no-typescript',
  '--remove-name-section',
  '--remove-producers-section',
  join(root, 'target', target, 'release', 'pluresdb_minilm.wasm'),
]);
run('wasm-opt', [
  '-O3', '--enable-bulk-memory', '--enable-reference-types', '--enable-nontrapping-float-to-int',
  '--enable-sign-ext', '--enable-mutable-globals', '--enable-multivalue', '--enable-simd',
  join(minilm, 'minilm_bg.wasm'), '-o', join(minilm, 'minilm_bg.wasm'),
]);
cpSync(join(root, 'models', 'minilm-static', 'vocab.txt'), join(minilm, 'vocab.txt'));
for (const file of ['model.safetensors', 'README.md']) cpSync(join(root, 'models', 'minilm', file), join(minilm, file));
console.log(`build: pkg/models/minilm/minilm_bg.wasm ${kib(statSync(join(minilm, 'minilm_bg.wasm')).size)}, ` +
  `weights ${kib(statSync(join(minilm, 'model.safetensors')).size)}`);
const snippets = join(pkg, 'snippets');
const [crateSnippets] = readdirSync(snippets).filter((dir) => dir.startsWith('pluresdb-'));
writeFileSync(join(pkg, 'embedders.js'),
  `// Built-in embedders (see README.md, "Search by meaning, offline").\nexport * from './snippets/${crateSnippets}/src/wasm/embedders.js';\n`);
cpSync(join(root, 'pkg-template', 'embedders.d.ts'), join(pkg, 'embedders.d.ts'));
// The JSON checks the .wasm uses, for the native addon's wrapper too.
writeFileSync(join(pkg, 'json.js'),
  `// JSON validation shared by the WebAssembly build and the native addon.\nexport * from './snippets/${crateSnippets}/src/wasm/json.js';\n`);
const manifest = JSON.parse(readFileSync(join(root, 'pkg-template', 'package.json'), 'utf8'));
manifest.version = crateVersion();
// The prebuilt addons ship as one package per platform, at this version.
for (const name of Object.keys(manifest.optionalDependencies ?? {})) manifest.optionalDependencies[name] = manifest.version;
writeFileSync(join(pkg, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);

// The Node addon for this machine's platform (crates/node): beside node.js
// as `pluresdb.<triple>.node`, and as the per-platform package
// `pkg-native/<triple>/` (`pluresdb-<triple>`, one of the main package's
// optionalDependencies) that a release publishes for every platform.
const triple = platformTriple();
console.log(`build: compiling the Node addon for ${triple}`);
run('cargo', ['build', '--quiet', '-p', 'pluresdb-node', '--profile', 'node-addon']);
const library = { win32: 'pluresdb_node.dll', darwin: 'libpluresdb_node.dylib' }[process.platform] ?? 'libpluresdb_node.so';
const addonFile = `pluresdb.${triple}.node`;
cpSync(join(root, 'target', 'node-addon', library), join(pkg, addonFile));
const platformDir = join(root, 'pkg-native', triple);
rmSync(platformDir, { recursive: true, force: true });
mkdirSync(platformDir, { recursive: true });
cpSync(join(pkg, addonFile), join(platformDir, addonFile));
const [os, cpu, abi] = triple.split('-');
writeFileSync(join(platformDir, 'package.json'), `${JSON.stringify({
  name: `pluresdb-${triple}`,
  version: crateVersion(),
  description: `PluresDB's native addon (SQLite) for ${triple}; installed by \`pluresdb\` as an optional dependency.`,
  main: addonFile,
  files: [addonFile],
  os: [os],
  cpu: [cpu],
  ...(os === 'linux' ? { libc: [abi === 'musl' ? 'musl' : 'glibc'] } : {}),
  license: 'MIT OR Apache-2.0',
  engines: { node: '>=20' },
}, null, 2)}\n`);
console.log(`build: pkg/${addonFile} and pkg-native/${triple}/ (${kib(statSync(join(pkg, addonFile)).size)})`);

const wasm = join(pkg, 'pluresdb_bg.wasm');
const before = statSync(wasm).size;
console.log('build: optimising with wasm-opt -Oz');
// --low-memory-unused lets wasm-opt fold constant offsets into loads and
// stores (1.7 KiB gzipped). It assumes nothing reads or writes below address
// 1024: rustc lays the 1 MiB shadow stack out first, growing down towards
// 0, so only a stack within 1 KiB of overflowing would reach there, and the
// folded form turns such a wrapped access into a trap.
run('wasm-opt', [
  '-Oz', '--converge', '--low-memory-unused',
  '--enable-bulk-memory', '--enable-reference-types', '--enable-nontrapping-float-to-int',
  '--enable-sign-ext', '--enable-mutable-globals', '--enable-multivalue', '--enable-simd',
  wasm, '-o', `${wasm}.opt`,
]);
renameSync(`${wasm}.opt`, wasm);

const bytes = readFileSync(wasm);
const gzipped = gzipSync(bytes, { level: 9 }).length;
const glue = readFileSync(join(pkg, 'pluresdb.js'));
console.log(
  `build: pkg/pluresdb_bg.wasm ${kib(bytes.length)} raw (${kib(before)} before wasm-opt), ` +
  `${kib(gzipped)} gzipped; JS glue ${kib(glue.length)} raw, ${kib(gzipSync(glue).length)} gzipped`,
);
writeFileSync(join(pkg, 'build-info.json'), `${JSON.stringify({
  version: manifest.version,
  wasmBytes: bytes.length,
  wasmGzipBytes: gzipped,
  glueBytes: glue.length,
  glueGzipBytes: gzipSync(glue).length,
}, null, 2)}\n`);
