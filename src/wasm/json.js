// JSON validation for values crossing from JavaScript into PluresDB.
// JSON.stringify silently drops `undefined` and functions, turns NaN into
// null and Dates into strings; a database must refuse such values instead of
// storing something other than what it was given.
//
// The fast path only answers "is it plain JSON?"; when it is not (or the
// value nests suspiciously deep, as a cycle would), a slow walk finds the
// offending path for the error message.

const MAX_FAST_DEPTH = 200;

function isPlainJson(value, depth) {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return value - value === 0; // false for NaN and ±Infinity
    case 'object': {
      if (value === null) return true;
      if (depth > MAX_FAST_DEPTH) return false;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          if (!(i in value) || !isPlainJson(value[i], depth + 1)) return false;
        }
        return true;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return false;
      for (const key in value) {
        if (!isPlainJson(value[key], depth + 1)) return false;
      }
      return Object.getOwnPropertySymbols(value).length === 0;
    }
    default:
      return false;
  }
}

function invalid(path, what) {
  const error = new TypeError(
    `cannot store the value at ${path}: it is ${what}. PluresDB stores JSON: ` +
    'plain objects, arrays, strings, finite numbers, booleans and null ' +
    '(convert Dates to ISO strings, Maps to objects, and so on).');
  error.name = 'InvalidInputError';
  return error;
}

function explain(value, path, ancestors) {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw invalid(path, `${value}, not a finite number`);
      return;
    case 'undefined':
      throw invalid(path, 'undefined');
    case 'function':
      throw invalid(path, 'a function');
    case 'bigint':
      throw invalid(path, 'a BigInt');
    case 'symbol':
      throw invalid(path, 'a Symbol');
    default:
      break;
  }
  if (value === null) return;
  if (ancestors.has(value)) throw invalid(path, 'a reference to itself (a cycle)');
  ancestors.add(value);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (!(i in value)) throw invalid(`${path}[${i}]`, 'a hole in a sparse array');
      explain(value[i], `${path}[${i}]`, ancestors);
    }
  } else {
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      const name = (value.constructor && value.constructor.name) || 'non-plain';
      throw invalid(path, `a ${name} object`);
    }
    if (Object.getOwnPropertySymbols(value).length > 0) {
      throw invalid(path, 'an object with Symbol keys');
    }
    for (const key in value) explain(value[key], `${path}.${key}`, ancestors);
  }
  ancestors.delete(value);
}

function checkJson(value, path) {
  if (!isPlainJson(value, 0)) {
    explain(value, path, new Set());
    // Plain JSON nested deeper than the fast path follows.
  }
}

function invalidArgument(message) {
  const error = new TypeError(message);
  error.name = 'InvalidInputError';
  return error;
}

// Returns the JSON text of `value`, or throws an InvalidInputError naming
// the first part of it that is not JSON.
export function toJsonText(value) {
  checkJson(value, '$');
  return JSON.stringify(value);
}

// Validates putMany entries ([id, data, vector?] or { id, data, vector? })
// and returns { text, vectors }: the pairs as one JSON text `[[id, data],
// ...]` (one string crosses into WebAssembly for the whole batch), and the
// vectors (null when no entry has one; otherwise one slot per entry,
// undefined where an entry has none). `first` is the index of entries[0] in
// the caller's whole batch, for error messages when it sends a batch in
// slices.
export function entriesToJsonText(entries, first = 0) {
  if (!Array.isArray(entries)) {
    throw invalidArgument('putMany takes an array of [id, data] or { id, data }');
  }
  let normalized = null;
  let vectors = null;
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    let id;
    let data;
    let vector;
    if (Array.isArray(entry)) {
      id = entry[0];
      data = entry[1];
      vector = entry[2];
      if (entry.length !== 2 && normalized === null) normalized = entries.slice(0, i).map((e) => [e[0], e[1]]);
    } else if (entry !== null && typeof entry === 'object') {
      id = entry.id;
      data = entry.data;
      vector = entry.vector;
      if (normalized === null) normalized = entries.slice(0, i).map((e) => [e[0], e[1]]);
    } else {
      throw invalidArgument(`putMany entry ${first + i} is neither [id, data] nor { id, data }`);
    }
    if (typeof id !== 'string') throw invalidArgument(`putMany entry ${first + i} has no string id`);
    checkJson(data, `entries[${first + i}].data`);
    if (normalized !== null) normalized.push([id, data]);
    if (vector !== undefined && vector !== null) {
      if (vectors === null) vectors = new Array(entries.length);
      vectors[i] = vector;
    }
  }
  return { text: JSON.stringify(normalized ?? entries), vectors };
}

// Builds an Error with a stable `name`, as the JavaScript API throws.
export function makeError(name, message) {
  const error = new Error(message);
  error.name = name;
  return error;
}
