// Reader for the vector-search benchmark corpus (bench/data/corpus-minilm.bin,
// made by scripts/generate-corpus-embeddings.py, whose docstring documents
// the texts, the model and the layout). Works in Node and in the browser:
//   import { loadCorpus, decodeCorpus } from './corpus.mjs';
//   const { dim, k, base, queries, truth } = await loadCorpus('bench/data/corpus-minilm.bin');
// base[i] and queries[j] are Float32Array(dim), the float16 values widened
// exactly (unit length to about 1e-4; renormalise if that matters);
// truth[j] is a Uint32Array(k) of base indices, best first (exact cosine).
//
// Layout, little-endian, no padding: "PLDBVEC1", u32 dim, u32 base count,
// u32 query count, u32 k, base x dim f16, queries x dim f16, queries x k u32.

const MAGIC = 'PLDBVEC1';
const HEADER = 24;

// float16 bits -> float32 value, for all 65,536 patterns.
let table = null;
function f16Table() {
  if (table) return table;
  table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v;
    if (exp === 0) v = frac * 2 ** -24; // zero and subnormals
    else if (exp === 31) v = frac ? NaN : Infinity;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    table[h] = sign * v;
  }
  return table;
}

/** Decode one float16 (given as its 16 bits) to a number. */
export function f16ToNumber(bits) {
  return f16Table()[bits & 0xffff];
}

/**
 * Decode a corpus file held in memory.
 * @param {ArrayBuffer|ArrayBufferView} input
 * @returns {{dim:number, k:number, base:Float32Array[], queries:Float32Array[], truth:Uint32Array[]}}
 */
export function decodeCorpus(input) {
  const bytes = input instanceof ArrayBuffer
    ? new Uint8Array(input)
    : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < HEADER) throw new Error('corpus: file too short');
  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  if (magic !== MAGIC) throw new Error(`corpus: bad magic ${JSON.stringify(magic)}`);
  const dim = view.getUint32(8, true);
  const nBase = view.getUint32(12, true);
  const nQueries = view.getUint32(16, true);
  const k = view.getUint32(20, true);
  const vecBytes = (nBase + nQueries) * dim * 2;
  const expected = HEADER + vecBytes + nQueries * k * 4;
  if (bytes.byteLength !== expected) {
    throw new Error(`corpus: ${bytes.byteLength} bytes, header says ${expected}`);
  }

  const t = f16Table();
  const readVectors = (offset, count) => {
    const out = new Array(count);
    let p = offset;
    for (let i = 0; i < count; i++) {
      const v = new Float32Array(dim);
      for (let d = 0; d < dim; d++, p += 2) v[d] = t[view.getUint16(p, true)];
      out[i] = v;
    }
    return out;
  };
  const base = readVectors(HEADER, nBase);
  const queries = readVectors(HEADER + nBase * dim * 2, nQueries);

  const truth = new Array(nQueries);
  let p = HEADER + vecBytes;
  for (let q = 0; q < nQueries; q++) {
    const row = new Uint32Array(k);
    for (let j = 0; j < k; j++, p += 4) row[j] = view.getUint32(p, true);
    truth[q] = row;
  }
  return { dim, k, base, queries, truth };
}

/**
 * Load and decode a corpus file: a path in Node (read with node:fs), a URL
 * (string or URL object) fetched in the browser, or the bytes themselves.
 * @param {string|URL|ArrayBuffer|ArrayBufferView} path
 */
export async function loadCorpus(path) {
  if (path instanceof ArrayBuffer || ArrayBuffer.isView(path)) return decodeCorpus(path);
  const isNode = typeof process !== 'undefined' && process.versions?.node;
  const isHttp = typeof path === 'string' ? /^https?:/i.test(path) : /^https?:$/.test(path.protocol);
  if (isNode && !isHttp) {
    const { readFile } = await import('node:fs/promises');
    return decodeCorpus(await readFile(path));
  }
  const response = await fetch(path);
  if (!response.ok) throw new Error(`corpus: ${response.status} fetching ${path}`);
  return decodeCorpus(await response.arrayBuffer());
}
