// Node entry point: loads the WebAssembly module synchronously from this
// package's directory, then exposes the same API as the browser build.
// Node has no IndexedDB, so databases opened here live in memory.
import { readFileSync } from 'node:fs';
import { initSync } from './pluresdb.js';

const output = initSync({
  module: readFileSync(new URL('./pluresdb_bg.wasm', import.meta.url)),
});

export * from './pluresdb.js';

/** Already initialised in Node; kept so browser code runs unchanged. */
export default async function init() {
  return output;
}
