// Node entry point (also Deno and Electron's main process).
//
// With the native addon (the per-platform package `pluresdb-<triple>`, or a
// `pluresdb.<triple>.node` built from source beside this file), `PluresDB`
// is the native database on SQLite: `PluresDB.open(name)` keeps a file in
// the user's data directory. Without it, `PluresDB` is the WebAssembly build
// with in-memory storage, after a one-line warning. Everything else
// (`hashEmbed`, types) comes from the WebAssembly build either way.
import init, { PluresDB as WasmPluresDB } from './node-wasm.js';
import { nativeClass } from './node-addon.js';

const native = nativeClass();
if (!native.PluresDB && process.env.PLURESDB_NO_ADDON !== '1') {
  console.warn(`pluresdb: ${native.reason}; using WebAssembly with in-memory storage (data is not persisted)`);
}

export * from './node-wasm.js';
export default init;

/** The database class: native on SQLite when the addon loads, else WebAssembly in memory. */
export const PluresDB = native.PluresDB ?? WasmPluresDB;

/** `'native'` (addon, SQLite) or `'wasm'` (WebAssembly, memory). */
export const backend = native.PluresDB ? 'native' : 'wasm';
