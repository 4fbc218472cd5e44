// Size suite: the gzipped size users download, PluresDB's .wasm and JS glue
// against Dexie, PouchDB, RxDB core and automerge as published on npm
// (bundled and minified with esbuild where a package is many modules).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

const gz = (bytes) => gzipSync(bytes, { level: 9 }).length;

function bundle(root, dir, name, source, extra = []) {
  const entry = join(dir, `${name}-entry.js`);
  const out = join(dir, `${name}.bundle.js`);
  writeFileSync(entry, source);
  execFileSync(join(root, 'node_modules', '.bin', 'esbuild'), [
    entry, '--bundle', '--minify', '--format=esm', `--outfile=${out}`,
    '--log-level=error', '--define:global=globalThis', '--platform=browser', ...extra,
  ], { cwd: dir, stdio: 'inherit' });
  return readFileSync(out);
}

function findWasm(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      const found = findWasm(path);
      if (found) return found;
    } else if (entry.name.endsWith('.wasm') && !entry.name.includes('node')) {
      return path;
    }
  }
  return null;
}

export function runSizeSuite(root) {
  const dir = join(root, 'bench', 'tmp', 'size');
  mkdirSync(dir, { recursive: true });
  const versions = { rxdb: '17.6.0', automerge: '3.5.0' };
  if (!existsSync(join(dir, 'node_modules', 'rxdb')) || !existsSync(join(dir, 'node_modules', '@automerge', 'automerge'))) {
    console.log('bench: size: installing rxdb and @automerge/automerge into bench/tmp/size');
    writeFileSync(join(dir, 'package.json'), '{"private": true}\n');
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error',
      `rxdb@${versions.rxdb}`, `@automerge/automerge@${versions.automerge}`, 'pouchdb-browser@9.0.0', 'events@3'],
    { cwd: dir, stdio: 'inherit' });
  }
  const info = JSON.parse(readFileSync(join(root, 'pkg', 'build-info.json'), 'utf8'));
  const version = (name) => JSON.parse(readFileSync(join(dir, 'node_modules', ...name.split('/'), 'package.json'), 'utf8')).version;
  const rootVersion = (name) => JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')).version;
  const results = {
    pluresdb: { version: info.version, wasmGzip: info.wasmGzipBytes, jsGzip: info.glueGzipBytes },
    dexie: { version: rootVersion('dexie'), wasmGzip: 0, jsGzip: gz(readFileSync(join(root, 'node_modules', 'dexie', 'dist', 'dexie.min.js'))) },
    pouchdb: {
      version: version('pouchdb-browser'), wasmGzip: 0,
      jsGzip: gz(bundle(root, dir, 'pouchdb', "import PouchDB from 'pouchdb-browser';\nglobalThis.PouchDB = PouchDB;\n")),
    },
    rxdb: {
      version: version('rxdb'), wasmGzip: 0,
      jsGzip: gz(bundle(root, dir, 'rxdb', "import { createRxDatabase } from 'rxdb';\nglobalThis.createRxDatabase = createRxDatabase;\n")),
    },
  };
  const automergeDir = join(dir, 'node_modules', '@automerge', 'automerge');
  const wasm = findWasm(automergeDir);
  results.automerge = {
    version: version('@automerge/automerge'),
    wasmGzip: wasm ? gz(readFileSync(wasm)) : 0,
    jsGzip: gz(bundle(root, dir, 'automerge', "import * as Automerge from '@automerge/automerge/slim';\nglobalThis.Automerge = Automerge;\n", ['--loader:.wasm=file'])),
  };
  for (const r of Object.values(results)) r.totalGzip = r.wasmGzip + r.jsGzip;
  return results;
}
