// Types of the package's Node entry: the browser build's API, plus which
// implementation runs.
export * from './pluresdb.js';
export { default } from './pluresdb.js';

/** `'native'`: the addon, on SQLite; `'wasm'`: the WebAssembly build, in memory. */
export const backend: 'native' | 'wasm';
