// Built-in text embedders, by name: `PluresDB.open(name, { embedder:
// 'minilm-static' })` and `openInWorker` resolve names here, and
// `pluresdb/embedders` exports the same loader for direct use.
//
// `minilm-static` is a static model distilled from all-MiniLM-L6-v2
// (`models/minilm-static/`, made by `scripts/distill-static-model.py`): a
// text is split into BERT WordPiece tokens (uncased), the tokens' rows of a
// 30,522 x 256 table are averaged and the mean is scaled to unit length. No
// network access but the package's own files; the table (15.6 MB) is fetched
// the first time a database asks for the model, once per page or worker.
//
// `minilm` is all-MiniLM-L6-v2 itself, the transformer (`models/minilm/`,
// exported with 8-bit weights by `scripts/export-minilm.py`; within cosine
// 0.999 of the float32 model): the same tokenizer here, then the model
// compiled to WebAssembly from `crates/minilm` (SIMD), a module of
// its own with its weights (23.6 MB), fetched when a database first asks
// for it. A few milliseconds per text: embed in `openInWorker` or a Worker.

export const STATIC_MODEL = 'minilm-static';
export const EXACT_MODEL = 'minilm';
/** Texts per call into the transformer: sorted by length, so little padding. */
const EXACT_BATCH = 32;
/** Word pieces the transformer reads, [CLS] and [SEP] aside (max_seq_length 256). */
const EXACT_MAX_PIECES = 254;
const MAGIC = 'PLDBSTM1';
const MAX_WORD_CHARS = 100;
// Tokens of a text that count (as src/index/static_embedder.rs): a text
// costs no more to embed past them, however long.
const MAX_TOKENS = 512;

/** Where the package keeps its models (this file is `snippets/<crate>/src/wasm/embedders.js`). */
function defaultModelUrl(name) {
  return new URL(`../../../../models/${name}/`, import.meta.url);
}

async function readBytes(url, onProgress) {
  if (url.protocol === 'file:') {
    // Node: fetch() does not read files.
    const { readFile } = await import('node:fs/promises');
    const bytes = new Uint8Array(await readFile(url));
    onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength });
    return bytes;
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`loading ${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get('content-length')) || undefined;
  if (!response.body || !onProgress) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.byteLength;
    onProgress({ loaded, total });
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.byteLength;
  }
  return bytes;
}

// ---- BERT uncased WordPiece, as Hugging Face `tokenizers` does it --------

const WHITESPACE = /^\s$/u;
const CONTROL = /^[\p{Cc}\p{Cf}\p{Co}]$/u;
const PUNCTUATION = /^\p{P}$/u;
const MARK = /\p{Mn}/gu;

function isCjk(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) || (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

function isPunctuation(ch, cp) {
  return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
    (cp >= 123 && cp <= 126) || PUNCTUATION.test(ch);
}

/** The normalised text: control characters dropped, CJK spaced, accents stripped, lower case. */
function normalize(text) {
  let out = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    // Control characters go first (U+000B, U+000C and U+FEFF are
    // whitespace to JavaScript but controls to BERT, which drops them).
    const keptControl = ch === '\t' || ch === '\n' || ch === '\r';
    if (cp === 0 || cp === 0xfffd || (CONTROL.test(ch) && !keptControl)) continue;
    if (keptControl || WHITESPACE.test(ch)) {
      out += ' ';
    } else if (isCjk(cp)) {
      out += ` ${ch} `;
    } else {
      out += ch;
    }
  }
  return out.normalize('NFD').replace(MARK, '').toLowerCase();
}

/** Words: split on whitespace, every punctuation character a word of its own. */
function preTokenize(text) {
  const words = [];
  let current = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (ch === ' ' || WHITESPACE.test(ch)) {
      if (current) words.push(current);
      current = '';
    } else if (isPunctuation(ch, cp)) {
      if (current) words.push(current);
      current = '';
      words.push(ch);
    } else {
      current += ch;
    }
  }
  if (current) words.push(current);
  return words;
}

/** WordPiece ids of a text (no [CLS]/[SEP]), at most MAX_TOKENS. */
export function wordPieceIds(vocab, unknown, text) {
  const ids = [];
  for (const word of preTokenize(normalize(String(text)))) {
    const chars = Array.from(word);
    if (chars.length > MAX_WORD_CHARS) {
      ids.push(unknown);
      continue;
    }
    const pieces = [];
    let start = 0;
    let failed = false;
    while (start < chars.length) {
      let end = chars.length;
      let found;
      while (start < end) {
        const piece = (start > 0 ? '##' : '') + chars.slice(start, end).join('');
        found = vocab.get(piece);
        if (found !== undefined) break;
        end -= 1;
      }
      if (found === undefined) {
        failed = true;
        break;
      }
      pieces.push(found);
      start = end;
    }
    if (failed) ids.push(unknown);
    else ids.push(...pieces);
    if (ids.length >= MAX_TOKENS) return ids.slice(0, MAX_TOKENS);
  }
  return ids;
}

// ---- The static model ------------------------------------------------------

function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** Decodes `vocab.txt` and `embeddings.bin` into a model. */
export function decodeStaticModel(vocabText, tableBytes) {
  const view = new DataView(tableBytes.buffer, tableBytes.byteOffset, tableBytes.byteLength);
  const magic = String.fromCharCode(...tableBytes.subarray(0, 8));
  if (magic !== MAGIC) throw new Error(`not a static embedding table (magic ${JSON.stringify(magic)})`);
  const size = view.getUint32(8, true);
  const dimension = view.getUint32(12, true);
  if (tableBytes.byteLength !== 16 + size * dimension * 2) {
    throw new Error(`static embedding table: ${tableBytes.byteLength} bytes, its header says ${16 + size * dimension * 2}`);
  }
  const tokens = vocabText.split('\n');
  if (tokens.at(-1) === '') tokens.pop();
  if (tokens.length !== size) throw new Error(`vocabulary has ${tokens.length} tokens, the table ${size}`);
  const vocab = new Map(tokens.map((token, id) => [token, id]));
  const unknown = vocab.get('[UNK]');
  const halves = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) halves[bits] = halfToFloat(bits);
  const table = new Float32Array(size * dimension);
  for (let i = 0; i < table.length; i++) table[i] = halves[view.getUint16(16 + 2 * i, true)];
  return { vocab, unknown, dimension, table };
}

/** The unit-length embedding of `text` (zeros when no token has a row). */
export function embedStatic(model, text) {
  const { dimension, table } = model;
  const sum = new Float64Array(dimension);
  const ids = wordPieceIds(model.vocab, model.unknown, text);
  for (const id of ids) {
    const row = id * dimension;
    for (let d = 0; d < dimension; d++) sum[d] += table[row + d];
  }
  let norm = 0;
  for (let d = 0; d < dimension; d++) norm += sum[d] * sum[d];
  norm = Math.sqrt(norm);
  const out = new Float32Array(dimension);
  if (norm > 0) for (let d = 0; d < dimension; d++) out[d] = sum[d] / norm;
  return out;
}

const loading = new Map();

/**
 * Loads a built-in model (once per page or worker) and returns its embedder:
 * `async (texts) => Float32Array[]`, with `modelName` and `dimension`
 * properties. `options.url` overrides where the model's files are (a
 * directory URL ending in `/`); `options.onProgress({ loaded, total })`
 * reports the download.
 */
export async function loadEmbedder(name = STATIC_MODEL, options = {}) {
  if (name !== STATIC_MODEL && name !== EXACT_MODEL) {
    throw Object.assign(new Error(`unknown embedder '${name}': the built-in ones are 'hash', '${EXACT_MODEL}' and '${STATIC_MODEL}'`), {
      name: 'InvalidInputError',
    });
  }
  const base = options.url ? new URL(options.url, globalThis.location?.href) : defaultModelUrl(name);
  // One load per model and place (an `embedderUrl` names a directory of one model's files).
  const key = `${name} ${base.href}`;
  if (!loading.has(key)) {
    loading.set(key, name === STATIC_MODEL ? loadStatic(base, options.onProgress) : loadExact(base, options.onProgress));
    loading.get(key).catch(() => loading.delete(key));
  }
  const model = await loading.get(key);
  const embed = name === STATIC_MODEL
    ? async (texts) => texts.map((text) => embedStatic(model, text))
    : (texts) => embedExact(model, texts);
  return Object.assign(embed, { modelName: `${name}@1`, dimension: model.dimension });
}

async function loadStatic(base, onProgress) {
  const [vocab, table] = await Promise.all([
    readBytes(new URL('vocab.txt', base)),
    readBytes(new URL('embeddings.bin', base), onProgress),
  ]);
  return decodeStaticModel(new TextDecoder().decode(vocab), table);
}

// ---- The exact model -------------------------------------------------------

async function loadExact(base, onProgress) {
  let glue;
  try {
    glue = await import(new URL('minilm.js', base).href);
  } catch (error) {
    const inServiceWorker = typeof globalThis.ServiceWorkerGlobalScope === 'function'
      && globalThis instanceof globalThis.ServiceWorkerGlobalScope;
    throw new Error(inServiceWorker
      ? `the '${EXACT_MODEL}' model cannot load in a service worker (import() is not allowed there): embed in a page or a Worker, or use '${STATIC_MODEL}'`
      : `loading the '${EXACT_MODEL}' model from ${base}: ${error?.message ?? error}`);
  }
  const [vocab, wasm, weights] = await Promise.all([
    readBytes(new URL('vocab.txt', base)),
    readBytes(new URL('minilm_bg.wasm', base)),
    readBytes(new URL('model.safetensors', base), onProgress),
  ]);
  await glue.default({ module_or_path: wasm });
  const model = new glue.MiniLm(weights);
  const tokens = new TextDecoder().decode(vocab).split('\n');
  if (tokens.at(-1) === '') tokens.pop();
  const vocabMap = new Map(tokens.map((token, id) => [token, id]));
  return { vocab: vocabMap, unknown: vocabMap.get('[UNK]'), dimension: model.dimension, model };
}

/**
 * Embeds texts with the transformer, a batch of similar lengths at a time,
 * yielding to the event loop between batches so a page stays responsive.
 */
async function embedExact(model, texts) {
  const ids = texts.map((text) => wordPieceIds(model.vocab, model.unknown, text).slice(0, EXACT_MAX_PIECES));
  const order = ids.map((_, index) => index).sort((a, b) => ids[a].length - ids[b].length);
  const out = new Array(texts.length);
  for (let at = 0; at < order.length; at += EXACT_BATCH) {
    if (at > 0) await new Promise((resolve) => setTimeout(resolve, 0));
    const batch = order.slice(at, at + EXACT_BATCH);
    const flat = new Uint32Array(batch.reduce((total, index) => total + ids[index].length, 0));
    const lengths = new Uint32Array(batch.length);
    let offset = 0;
    batch.forEach((index, row) => {
      flat.set(ids[index], offset);
      offset += ids[index].length;
      lengths[row] = ids[index].length;
    });
    const vectors = model.model.embed(flat, lengths);
    batch.forEach((index, row) => {
      out[index] = vectors.slice(row * model.dimension, (row + 1) * model.dimension);
    });
  }
  return out;
}

/** For `PluresDB.open`: the embedder `name` with the open options' `embedderUrl` and `onEmbedderProgress`. */
export function namedEmbedder(name, openOptions) {
  return loadEmbedder(name, { url: openOptions?.embedderUrl, onProgress: openOptions?.onEmbedderProgress });
}
