// Builds the npm package into pkg/:
//   wasm32 release build -> wasm-bindgen (ES module) -> pkg-template files
//   (package.json stamped with the crate version) -> wasm-opt -Oz,
// then prints the raw and gzipped size of the .wasm.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

for (const file of ['README.md', 'node.js', 'worker.js', 'worker.d.ts', 'worker-host.js', 'hyperswarm.js', 'hyperswarm.d.ts']) {
  cpSync(join(root, 'pkg-template', file), join(pkg, file));
}
// Built-in models: separate assets, fetched only when a database asks for
// one (never part of the .wasm); `pluresdb/embedders` re-exports their
// loader from the snippet the .wasm itself imports.
for (const file of ['vocab.txt', 'embeddings.bin', 'README.md']) {
  cpSync(join(root, 'models', 'minilm-static', file), join(pkg, 'models', 'minilm-static', file));
}
const snippets = join(pkg, 'snippets');
const [crateSnippets] = readdirSync(snippets).filter((dir) => dir.startsWith('pluresdb-'));
writeFileSync(join(pkg, 'embedders.js'),
  `// Built-in embedders (see README.md, "Search by meaning, offline").\nexport * from './snippets/${crateSnippets}/src/wasm/embedders.js';\n`);
cpSync(join(root, 'pkg-template', 'embedders.d.ts'), join(pkg, 'embedders.d.ts'));
const manifest = JSON.parse(readFileSync(join(root, 'pkg-template', 'package.json'), 'utf8'));
manifest.version = crateVersion();
writeFileSync(join(pkg, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);

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
