// JSON validation for values crossing from JavaScript into PluresDB.
// JSON.stringify silently drops `undefined` and functions, turns NaN into
// null and Dates into strings; a database must refuse such values instead of
// storing something other than what it was given.

function invalid(path, what) {
  const error = new TypeError(
    `cannot store the value at ${path}: it is ${what}. PluresDB stores JSON: ` +
    'plain objects, arrays, strings, finite numbers, booleans and null ' +
    '(convert Dates to ISO strings, Maps to objects, and so on).');
  error.name = 'InvalidInputError';
  return error;
}

function check(value, path, ancestors) {
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
      check(value[i], `${path}[${i}]`, ancestors);
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
    for (const key of Object.keys(value)) {
      check(value[key], `${path}.${key}`, ancestors);
    }
  }
  ancestors.delete(value);
}

// Returns the JSON text of `value`, or throws an InvalidInputError naming
// the first part of it that is not JSON.
export function toJsonText(value) {
  check(value, '$', new Set());
  return JSON.stringify(value);
}

// Builds an Error with a stable `name`, as the JavaScript API throws.
export function makeError(name, message) {
  const error = new Error(message);
  error.name = name;
  return error;
}
