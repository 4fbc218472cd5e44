// The PluresDB class on the native addon (Node, Deno, Electron): the same
// API and error names as the WebAssembly build, with SQLite underneath.
//
// The addon (crates/node) speaks JSON text. This file validates JavaScript
// values with the browser build's own json.js, sends records as JSON text and
// vectors as Float32Arrays, parses what comes back, and turns the addon's
// "<ErrorName>: <message>" errors into errors with that `name`.
import { createRequire } from 'node:module';
import { statSync } from 'node:fs';
import { toJsonText, entriesToJsonText, makeError } from './json.js';
import { platformTriple } from './platform.js';

const require = createRequire(import.meta.url);

/** `{ cachedBytes, documentsInStorage }` of an open addon database. */
function cacheStatus(native) {
  const [cachedBytes, documentsInStorage] = native.cacheStatus();
  return { cachedBytes, documentsInStorage };
}

/**
 * Loads the addon: the per-platform package `pluresdb-<triple>` (installed
 * through optionalDependencies), else `pluresdb.<triple>.node` beside this
 * file (a build from source). `{ addon }` or `{ addon: null, reason }`.
 */
export function loadAddon() {
  if (process.env.PLURESDB_NO_ADDON === '1') {
    return { addon: null, reason: 'PLURESDB_NO_ADDON=1' };
  }
  const triple = platformTriple();
  const tried = [];
  for (const specifier of [`pluresdb-${triple}`, `./pluresdb.${triple}.node`]) {
    try {
      return { addon: require(specifier), triple };
    } catch (error) {
      tried.push(`${specifier}: ${error.code ?? error.message}`);
    }
  }
  return { addon: null, reason: `no native addon for ${triple} (${tried.join('; ')})` };
}

const ERROR = /^([A-Za-z]+Error): ([\s\S]*)$/;

function translate(error) {
  const match = ERROR.exec(error?.message ?? '');
  return match ? makeError(match[1], match[2]) : error;
}

async function call(promise) {
  try {
    return await promise;
  } catch (error) {
    throw translate(error);
  }
}

function now(fn) {
  try {
    return fn();
  } catch (error) {
    throw translate(error);
  }
}

function invalid(message) {
  return makeError('InvalidInputError', message);
}

function vectorOf(value, what) {
  if (value instanceof Float32Array) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (typeof value[i] !== 'number') throw invalid(`${what}[${i}] is not a number`);
    }
    return Float32Array.from(value);
  }
  throw invalid(`${what} must be a Float32Array or an array of numbers`);
}

// Options as JSON: absent (undefined) options are left out; a non-finite
// number becomes its name, so the addon reports it as the wrong type.
/** Entries per slice of a large `putMany`. */
const SLICE = 4096;

/** putMany's vectors as Float32Arrays (null where an entry has none). */
function vectorsOf(vectors, first) {
  return vectors === null
    ? null
    : Array.from(vectors, (v, i) => (v === undefined || v === null ? null : vectorOf(v, `entries[${first + i}].vector`)));
}

function optionsJson(options, what) {
  if (options === undefined || options === null) return '{}';
  if (typeof options !== 'object') throw invalid(`${what} must be an object`);
  return JSON.stringify(options, (key, value) => (
    typeof value === 'number' && !Number.isFinite(value) ? String(value) : value));
}

/** A query (or filter) must be JSON, as in the WebAssembly build. */
function queryJson(query) {
  return query === undefined || query === null ? 'null' : toJsonText(query);
}

/** A user's embedder as the addon calls it: plain arrays of numbers back. */
function embedderForAddon(embedder) {
  return async (texts) => {
    const vectors = await embedder(texts);
    if (!Array.isArray(vectors)) throw new Error('the embedder must return an array of vectors');
    return vectors.map((vector, i) => Array.from(vectorOf(vector, `embedder result [${i}]`)));
  };
}

function createClass(addon, triple) {
  /** A PluresDB database on SQLite, through the native addon. */
  class PluresDB {
    #native;
    #closed = false;

    constructor(native) {
      this.#native = native;
    }

    /**
     * Opens (or creates) the database `name`: a SQLite file in the user's
     * data directory (`$PLURESDB_DATA_DIR`, else `~/.local/share/pluresdb`
     * on Linux) unless `{ path }` or `{ storage: 'memory' }` says otherwise.
     */
    static async open(name, options) {
      if (typeof name !== 'string') throw invalid('a database name must be a string');
      const { embedder, ...rest } = options ?? {};
      if (rest.storage === 'indexeddb') {
        throw invalid("storage 'indexeddb' is a browser's: in Node use 'sqlite' (the default) or 'memory'");
      }
      let named;
      let jsEmbedder = null;
      let model = null;
      if (typeof embedder === 'string') {
        named = embedder;
      } else if (typeof embedder === 'function') {
        jsEmbedder = embedderForAddon(embedder);
        model = typeof embedder.modelName === 'string' ? embedder.modelName : null;
      } else if (embedder !== undefined && embedder !== null) {
        throw invalid("option `embedder` must be an async function (texts) => vectors, 'hash', 'minilm' or 'minilm-static'");
      }
      // Browser-only options (SQLite loads at open).
      for (const key of ['onEmbedderProgress', 'embedderUrl', 'persist', 'durability', 'loadInBackground']) delete rest[key];
      const json = optionsJson({ ...rest, embedder: named }, 'options');
      const native = await call(addon.open(name, json, jsEmbedder, model));
      return new PluresDB(native);
    }

    /** The database name. */
    get name() { return this.#native.name; }
    /** Resolved: a SQLite database is loaded when `open` resolves. */
    get loaded() { return Promise.resolve(); }
    /** The actor id this instance writes under. */
    get actorId() { return this.#native.actorId; }
    /** Where the data lives: `'sqlite'` or `'memory'`. */
    get storageKind() { return this.#native.path === null ? 'memory' : 'sqlite'; }
    /** The SQLite file (Node only), or `null` in memory. */
    get path() { return this.#native.path; }

    put(id, data) {
      return call((async () => this.#native.put(id, toJsonText(data)))());
    }

    putMany(entries) {
      return call((async () => {
        if (!Array.isArray(entries) || entries.length <= SLICE) {
          const { text, vectors } = entriesToJsonText(entries);
          return this.#native.putMany(text, vectorsOf(vectors, 0));
        }
        // A large batch goes in slices: the addon parses one while this
        // thread serialises the next; one transaction all the same.
        const batch = this.#native.putManyBegin();
        for (let first = 0; first < entries.length; first += SLICE) {
          const { text, vectors } = entriesToJsonText(entries.slice(first, first + SLICE), first);
          batch.add(text, vectorsOf(vectors, first));
        }
        return batch.commit();
      })());
    }

    get(id) {
      // A lookup in memory: synchronous in the addon, a promise here
      // (`false`: the answer needs storage).
      try {
        const text = this.#native.get(id);
        if (text === false) {
          return call((async () => {
            const stored = await this.#native.getStored(id);
            return stored === null ? undefined : JSON.parse(stored);
          })());
        }
        return Promise.resolve(text === null ? undefined : JSON.parse(text));
      } catch (error) {
        return Promise.reject(translate(error));
      }
    }

    delete(id) { return call(this.#native.delete(id)); }

    list(options) {
      return call((async () => JSON.parse(await this.#native.list(optionsJson(options, 'list options'))))());
    }

    putWithEmbedding(id, data, vector) {
      return call((async () => this.#native.putWithEmbedding(id, toJsonText(data), vectorOf(vector, 'vector')))());
    }

    search(query, options) {
      return call((async () => {
        const json = optionsJson(options, 'search options');
        const text = typeof query === 'string'
          ? await this.#native.search(null, query, json)
          : await this.#native.search(vectorOf(query, 'the search vector'), null, json);
        return JSON.parse(text);
      })());
    }

    indexStats() { return JSON.parse(now(() => this.#native.indexStats())); }

    flushIndex() { return call(this.#native.flushIndex()); }

    query(query) {
      return call((async () => JSON.parse(await this.#native.query(queryJson(query))))());
    }

    explain(query) { return JSON.parse(now(() => this.#native.explain(queryJson(query)))); }

    conflicts(id) {
      return call((async () => JSON.parse(await this.#native.conflicts(id)))());
    }

    watch(query, callback) {
      if (typeof callback !== 'function') throw invalid('watch needs a callback');
      const subscription = now(() => this.#native.watch(queryJson(query), (json) => {
        try {
          callback(JSON.parse(json));
        } catch (error) {
          console.error('PluresDB: a watch callback threw', error);
        }
      }));
      return () => subscription.stop();
    }

    subscribe(listener) {
      if (typeof listener !== 'function') throw invalid('subscribe needs a listener');
      const subscription = now(() => this.#native.subscribe((json) => {
        try {
          listener(JSON.parse(json));
        } catch (error) {
          console.error('PluresDB: a subscriber threw', error);
        }
      }));
      return () => subscription.stop();
    }

    createInvite() { return call(this.#native.createInvite()); }

    /**
     * Syncs through a relay (`'ws://…'`) or peer to peer over Hyperswarm
     * with the addon's native transport: `{ hyperswarm: { bootstrap?:
     * ['host:port'], bind?: 'host:port' } }` (the public DHT when
     * `bootstrap` is absent); no npm `hyperswarm` needed.
     */
    sync(via) {
      now(() => {
        if (typeof via === 'string') {
          this.#native.syncRelay(via);
        } else if (via !== null && typeof via === 'object' && 'hyperswarm' in via) {
          this.#native.syncHyperswarm(optionsJson(via.hyperswarm ?? {}, 'hyperswarm options'));
        } else {
          throw invalid(
            "sync takes a relay URL or { hyperswarm: { bootstrap?, bind? } } with the native addon " +
            '(a JavaScript SyncTransport needs the WebAssembly build: PLURESDB_NO_ADDON=1)');
        }
      });
    }

    stopSync() { this.#native.stopSync(); }

    syncStatus() { return JSON.parse(this.#native.syncStatus()); }

    async storageStatus() {
      const path = this.#native.path;
      let usage = null;
      if (path !== null) {
        usage = 0;
        for (const suffix of ['', '-wal']) {
          try {
            usage += statSync(path + suffix).size;
          } catch {
            // no WAL file yet
          }
        }
      }
      return {
        storage: path === null ? 'memory' : 'sqlite',
        persisted: path !== null,
        persistRequested: false,
        usage,
        quota: null,
        evictionRisk: path === null ? 'high' : 'low',
        ...cacheStatus(this.#native),
      };
    }

    close() {
      this.#closed = true;
      return call(this.#native.close());
    }

    destroy() {
      this.#closed = true;
      return call(this.#native.destroy());
    }

    /** Nothing to free: the addon's memory follows the garbage collector. */
    free() {}

    [Symbol.dispose]() {
      if (!this.#closed) this.close().catch(() => {});
    }
  }
  Object.defineProperty(PluresDB, 'backend', { value: `native addon (${triple})` });
  return PluresDB;
}

/** The addon-backed class, or null with the reason it is not available. */
export function nativeClass() {
  const { addon, triple, reason } = loadAddon();
  return addon ? { PluresDB: createClass(addon, triple) } : { PluresDB: null, reason };
}
