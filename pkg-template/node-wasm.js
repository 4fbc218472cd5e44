// `pluresdb/wasm` in Node: the WebAssembly build, loaded synchronously from
// this package's directory, whatever the platform. Its databases live in
// memory (Node has no IndexedDB); use it for what only the WebAssembly
// build does, such as syncing over a JavaScript `SyncTransport`
// (`pluresdb/hyperswarm`). The package's main entry uses the native addon
// when it is installed.
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
