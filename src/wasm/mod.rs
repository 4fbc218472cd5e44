//! The JavaScript API (wasm32): a thin `#[wasm_bindgen]` layer over
//! [`Database`]. Names are camelCase; records cross as plain objects (JSON
//! text on the Rust side, `JSON.parse` on the way out); every error is a JS
//! `Error` with a stable `name`.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::crdt::Document;
use crate::error::{Error, InputError};
use crate::storage::{IdbDurability, IndexedDbStorage, MemoryStorage, StorageHealth};
use crate::{Database, ListOptions, OpenOptions, Query, SearchQuery, SearchRequest};

mod storage_choice;
mod types;
mod vector;

pub use vector::hash_embed;

pub use storage_choice::BrowserStorage;

#[wasm_bindgen(module = "/src/wasm/embedders.js")]
extern "C" {
    /// Loads a built-in embedder by name: a promise of `(texts) => vectors`.
    #[wasm_bindgen(js_name = namedEmbedder, catch)]
    fn named_embedder(name: &str, options: &JsValue) -> Result<Promise, JsValue>;
}

/// The embedder an `embedder` option names: `'hash'` (`embedderDimension`,
/// default 256) or a built-in model (`'minilm'`, `'minilm-static'`), loaded on
/// first use. `None` when the option is not a string.
async fn embedder_by_name(
    options: &JsValue,
) -> Result<Option<std::sync::Arc<dyn crate::db::EmbedText>>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let Some(name) = Reflect::get(options, &"embedder".into())?.as_string() else {
        return Ok(None);
    };
    if name == "hash" {
        let dimension = number_option(options, "embedderDimension")?.map_or(256, |n| n as usize);
        if !(1..=crate::crdt::MAX_EMBEDDING_DIM).contains(&dimension) {
            return Err(invalid_input("option `embedderDimension` is out of range"));
        }
        return Ok(Some(std::sync::Arc::new(crate::index::HashEmbedder::new(
            dimension,
        ))));
    }
    let function = JsFuture::from(named_embedder(&name, options)?)
        .await?
        .dyn_into::<Function>()
        .map_err(|_| invalid_input("a built-in embedder did not load as a function"))?;
    Ok(Some(std::sync::Arc::new(vector::JsEmbedder::new(function))))
}

#[wasm_bindgen(module = "/src/wasm/json.js")]
extern "C" {
    #[wasm_bindgen(js_name = toJsonText, catch)]
    fn to_json_text(value: &JsValue) -> Result<String, JsValue>;
    #[wasm_bindgen(js_name = entriesToJsonText, catch)]
    fn entries_to_json_text(entries: &JsValue) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = makeError)]
    fn make_error(name: &str, message: &str) -> JsValue;
}

/// Set by the panic hook: after a panic the module's memory may hold broken
/// invariants, so every later call fails loudly instead of misbehaving.
static POISONED: AtomicBool = AtomicBool::new(false);

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        POISONED.store(true, Ordering::SeqCst);
        console_error_panic_hook::hook(info);
    }));
}

fn poisoned_error() -> JsValue {
    make_error(
        "PluresDBError",
        "PluresDB hit an internal error (a panic, logged to the console) and this \
         instance is unusable; reload the page or restart the worker. Your committed \
         data is safe.",
    )
}

/// Converts a PluresDB error into a JS `Error` with a stable `name`.
pub(crate) fn to_js_error(error: &Error) -> JsValue {
    make_error(error.name().as_str(), &error.to_string())
}

fn invalid_input(message: impl Into<String>) -> JsValue {
    to_js_error(&Error::Input(InputError::InvalidArgument(message.into())))
}

fn check_usable() -> Result<(), JsValue> {
    if POISONED.load(Ordering::SeqCst) {
        Err(poisoned_error())
    } else {
        Ok(())
    }
}

fn document_from_js(value: &JsValue) -> Result<Document, JsValue> {
    let text = to_json_text(value)?;
    Document::from_stringified(text).map_err(|e| to_js_error(&e.into()))
}

fn document_to_js(document: &Document) -> Result<JsValue, JsValue> {
    js_sys::JSON::parse(document.as_str())
}

/// The option `key` of `options` converted by `convert`; `None` when it is
/// absent (or null), an InvalidInputError saying `kind` when it does not
/// convert.
fn typed_option<T>(
    options: &JsValue,
    key: &str,
    kind: &str,
    convert: impl FnOnce(&JsValue) -> Option<T>,
) -> Result<Option<T>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let value = Reflect::get(options, &JsValue::from_str(key))?;
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    convert(&value)
        .map(Some)
        .ok_or_else(|| invalid_input(format!("option `{key}` must be {kind}")))
}

fn string_option(options: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    typed_option(options, key, "a string", JsValue::as_string)
}

fn bool_option(options: &JsValue, key: &str) -> Result<Option<bool>, JsValue> {
    typed_option(options, key, "a boolean", JsValue::as_bool)
}

fn number_option(options: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    typed_option(options, key, "a non-negative number", |value| {
        value.as_f64().filter(|n| n.is_finite() && *n >= 0.0)
    })
}

/// The option `key` of `options`: an array of field names (empty when
/// absent).
fn field_names(options: &JsValue, key: &str) -> Result<Vec<String>, JsValue> {
    let error = || invalid_input(format!("option `{key}` must be an array of field names"));
    let fields = Reflect::get(options, &key.into())?;
    if fields.is_undefined() || fields.is_null() {
        return Ok(Vec::new());
    }
    let fields = fields.dyn_ref::<Array>().ok_or_else(error)?;
    fields
        .iter()
        .map(|field| field.as_string().ok_or_else(error))
        .collect()
}

/// The browser's default `cacheBytes`: a tab's share of memory is smaller
/// than a process's (natively 256 MiB).
const BROWSER_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// `OpenOptions` from JS: `{ embedder?, embedFields?, indexes?, index?: { dimension?,
/// m?, efConstruction?, efSearch?, sealThreshold?, maxSegment? } }`.
fn open_options(options: &JsValue) -> Result<OpenOptions, JsValue> {
    let mut out = OpenOptions {
        cache_bytes: BROWSER_CACHE_BYTES,
        ..OpenOptions::default()
    };
    if options.is_undefined() || options.is_null() {
        return Ok(out);
    }
    match number_option(options, "cacheBytes")? {
        Some(bytes) if bytes.fract() == 0.0 => out.cache_bytes = bytes as usize,
        Some(_) => {
            return Err(invalid_input(
                "option `cacheBytes` must be a whole number of bytes, 0 or more",
            ))
        }
        None => {}
    }
    let embedder = Reflect::get(options, &"embedder".into())?;
    if !embedder.is_undefined() && !embedder.is_null() && !embedder.is_string() {
        let function = embedder.dyn_into::<Function>().map_err(|_| {
            invalid_input(
                "option `embedder` must be an async function (texts) => vectors, 'hash', 'minilm' or 'minilm-static'",
            )
        })?;
        out.embedder = Some(std::sync::Arc::new(vector::JsEmbedder::new(function)));
    }
    out.embed_fields = field_names(options, "embedFields")?;
    out.indexes = field_names(options, "indexes")?;
    let index = Reflect::get(options, &"index".into())?;
    let positive = |key: &str| -> Result<Option<usize>, JsValue> {
        match number_option(&index, key)? {
            Some(n) if n >= 1.0 && n.fract() == 0.0 => Ok(Some(n as usize)),
            Some(_) => Err(invalid_input(format!(
                "index option `{key}` must be a positive integer"
            ))),
            None => Ok(None),
        }
    };
    for name in crate::index::IndexConfig::OPTION_NAMES {
        if let Some(n) = positive(name)? {
            out.index.set_option(name, n).map_err(invalid_input)?;
        }
    }
    Ok(out)
}

/// Warns on the console, once per page and set of fields, that a query
/// with conditions scanned at least [`crate::SCAN_WARNING_READS`]
/// records because none of its fields is indexed.
fn warn_scan_once(query: &crate::query::Query, plan: &crate::QueryPlan) {
    thread_local! {
        static WARNED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let Some(fields) = crate::db::scan_warning(query, plan) else {
        return;
    };
    WARNED.with(|warned| {
        let mut warned = warned.borrow_mut();
        if warned.len() < 256 && !warned.contains(&fields) {
            web_sys::console::warn_1(
                &format!(
                    "PluresDB: a query on {fields} read all {} records under its prefix because none of these fields is indexed; open the database with `indexes: [...]` naming one of them to read only the records that can match",
                    plan.reads
                )
                .into(),
            );
            warned.push(fields);
        }
    });
}

/// The database behind a [`PluresDB`], shared by every call: the load that
/// opens it, run once (a database loading in the background is awaited by
/// each call that needs it).
type Loading = futures::future::Shared<
    futures::future::LocalBoxFuture<'static, Result<Database<BrowserStorage>, JsValue>>,
>;

fn loading_error() -> JsValue {
    make_error(
        "LoadingError",
        "the database is still loading (it was opened with `loadInBackground`): await \
         `db.loaded` before calling this",
    )
}

/// `get` before a background load completes, straight from IndexedDB:
/// `None` when storage cannot answer by id alone (no id lists, an id the
/// lists cannot hold, a row that does not decode, a failed read), and the
/// caller waits for the load.
async fn get_before_load(
    reader: &crate::storage::EarlyReader,
    id: &str,
) -> Option<Result<JsValue, JsValue>> {
    if id.is_empty() || id.chars().any(char::is_control) {
        return None;
    }
    let row = match reader.read_row(id).await {
        Ok(Some(row)) => row,
        Ok(None) | Err(_) => return None,
    };
    let Some(row) = row else {
        return Some(Ok(JsValue::UNDEFINED));
    };
    let record = crate::crdt::Record::from_stored_bytes(&row).ok()?;
    if record.id() != id {
        return None;
    }
    match record.data() {
        Some(document) if !record.is_deleted() => Some(document_to_js(document)),
        None if record.is_deleted() => Some(Ok(JsValue::UNDEFINED)),
        _ => None,
    }
}

/// The most records a `list` before the load reads by itself; a longer
/// page (or one without a limit) waits for the load.
const LIST_BEFORE_LOAD_LIMIT: usize = 1000;

fn list_options_from(options: &JsValue) -> Result<ListOptions, JsValue> {
    Ok(ListOptions {
        prefix: string_option(options, "prefix")?.unwrap_or_default(),
        limit: number_option(options, "limit")?.map(|n| n as usize),
        cursor: string_option(options, "cursor")?,
    })
}

/// After a first round of a `list` before the load that read one id more
/// than the page, each further round (past removed and deleted records)
/// reads at least this many, and at most this many rounds are made before
/// waiting for the load instead.
const LIST_BEFORE_LOAD_ROUND: usize = 64;
const LIST_BEFORE_LOAD_ROUNDS: usize = 16;

/// True when IndexedDB orders `text` among other strings as Rust does:
/// IndexedDB compares UTF-16 code units, Rust bytes (code points), and the
/// two disagree only where a character from U+E000 to U+FFFF meets one
/// above U+FFFF at the same place.
fn ordered_alike_in_indexeddb(text: &str) -> bool {
    !text.chars().any(|c| c >= '\u{E000}')
}

/// `list` before a background load completes, straight from IndexedDB:
/// the id lists' index gives the ids in order, their chunks give their
/// rows, in as many rounds as removed and deleted records make it take.
/// `None` when storage cannot answer by id (see [`get_before_load`]), the
/// page has no limit or a long one, an id or the cursor holds characters
/// IndexedDB orders differently, the rounds run out, or the load completes
/// meanwhile: the caller waits for the load.
async fn list_before_load(
    reader: &crate::storage::EarlyReader,
    options: &ListOptions,
    still_loading: impl Fn() -> bool,
) -> Option<crate::Page> {
    let limit = options
        .limit
        .filter(|limit| (1..=LIST_BEFORE_LOAD_LIMIT).contains(limit))?;
    let prefix = options.prefix.as_str();
    let (mut from, mut after) = match &options.cursor {
        Some(cursor) if cursor.as_str() >= prefix => (cursor.clone(), true),
        _ => (prefix.to_owned(), false),
    };
    if !ordered_alike_in_indexeddb(&from) {
        return None;
    }
    // One more than the page, to know whether a next page exists.
    let mut items: Vec<(String, Document)> = Vec::new();
    for round in 0..LIST_BEFORE_LOAD_ROUNDS {
        if !still_loading() {
            return None;
        }
        let short = limit + 1 - items.len();
        let wanted = if round == 0 {
            short
        } else {
            short.max(LIST_BEFORE_LOAD_ROUND)
        } as u32;
        let listed = reader
            .read_listed(&from, after, prefix, wanted)
            .await
            .ok()??;
        for (id, row) in listed.rows {
            if !ordered_alike_in_indexeddb(&id) {
                return None;
            }
            from.clone_from(&id);
            after = true;
            // Removed, or a row that does not decode (a loaded database
            // lists neither).
            let Some(record) =
                row.and_then(|row| crate::crdt::Record::from_stored_bytes(&row).ok())
            else {
                continue;
            };
            if record.id() != id || record.is_deleted() {
                continue;
            }
            items.push((id, record.data()?.clone()));
            if items.len() > limit {
                break;
            }
        }
        if items.len() > limit || !listed.more {
            let next_cursor = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|(id, _)| id.clone())
            } else {
                None
            };
            return Some(crate::Page { items, next_cursor });
        }
    }
    None
}

fn spawn_promise<F>(future: F) -> Promise
where
    F: std::future::Future<Output = Result<JsValue, JsValue>> + 'static,
{
    promise_of(Box::pin(future))
}

/// The promise of a boxed future: one instance of `future_to_promise` for
/// every method (an instance per method added about 1.4 KB each to the
/// `.wasm`).
fn promise_of(
    future: std::pin::Pin<Box<dyn std::future::Future<Output = Result<JsValue, JsValue>>>>,
) -> Promise {
    future_to_promise(async move {
        check_usable()?;
        future.await
    })
}

/// A PluresDB database: in the browser on IndexedDB (or memory); in Node,
/// Deno and Electron the package's native addon gives the same class on
/// SQLite, falling back to this build in memory.
#[wasm_bindgen]
pub struct PluresDB {
    name: String,
    /// `'indexeddb'` or `'memory'`.
    storage_kind: &'static str,
    /// The opened database once its load completed (at once, unless opened
    /// with `loadInBackground`), or why it failed.
    db: Loading,
    /// Reads records from IndexedDB while the load runs in the background.
    early: Option<std::rc::Rc<crate::storage::EarlyReader>>,
    /// Set by `close` and `destroy`: reads no longer go to IndexedDB before
    /// the load (they wait for it, and then for the closed database).
    closing: std::rc::Rc<std::cell::Cell<bool>>,
    sync: std::rc::Rc<std::cell::RefCell<Option<crate::SyncHandle>>>,
    /// What the browser last said of the origin's storage.
    health: std::rc::Rc<std::cell::Cell<StorageHealth>>,
}

#[wasm_bindgen]
impl PluresDB {
    /// Opens (or creates) the database `name` (see `OpenOptions`): on
    /// IndexedDB when the global scope has it, in memory otherwise; on the
    /// Node addon, a SQLite file (`{ path }`, or `<data dir>/databases/<name>.db`).
    #[wasm_bindgen(unchecked_return_type = "Promise<PluresDB>")]
    pub fn open(
        name: String,
        #[wasm_bindgen(unchecked_optional_param_type = "OpenOptions")] options: JsValue,
    ) -> Promise {
        spawn_promise(async move {
            if name.is_empty() {
                return Err(invalid_input("a database name must not be empty"));
            }
            let durability = match string_option(&options, "durability")?.as_deref() {
                None | Some("strict") => IdbDurability::Strict,
                Some("relaxed") => IdbDurability::Relaxed,
                Some(other) => {
                    return Err(invalid_input(format!(
                        "unknown durability `{other}`: use 'strict' or 'relaxed'"
                    )))
                }
            };
            let in_background = bool_option(&options, "loadInBackground")?.unwrap_or(false);
            // Not part of the API: the end-to-end tests hold a background
            // load back to read before it, whatever the machine's speed.
            let load_delay_ms = number_option(&options, "__loadDelayMsForTests")?;
            let request_persist = bool_option(&options, "persist")?.unwrap_or(true);
            let open_options = open_options(&options)?;
            crate::db::FieldIndexes::validate(&open_options.indexes)
                .map_err(|e| to_js_error(&e.into()))?;
            let invite = string_option(&options, "invite")?;
            let relay = string_option(&options, "relay")?;
            let storage = match string_option(&options, "storage")?.as_deref() {
                Some("memory") => BrowserStorage::Memory(MemoryStorage::volatile()),
                Some("indexeddb") => BrowserStorage::IndexedDb(
                    IndexedDbStorage::open_with(&name, durability)
                        .await
                        .map_err(|e| to_js_error(&e.into()))?,
                ),
                None if IndexedDbStorage::is_available() => BrowserStorage::IndexedDb(
                    IndexedDbStorage::open_with(&name, durability)
                        .await
                        .map_err(|e| to_js_error(&e.into()))?,
                ),
                None => BrowserStorage::Memory(MemoryStorage::volatile()),
                Some(other) => {
                    return Err(invalid_input(format!(
                        "unknown storage `{other}`: use 'indexeddb' or 'memory'"
                    )))
                }
            };
            let (storage_kind, early) = match &storage {
                BrowserStorage::IndexedDb(idb) => (
                    "indexeddb",
                    idb.early_reader()
                        .filter(|_| in_background)
                        .map(std::rc::Rc::new),
                ),
                BrowserStorage::Memory(_) => ("memory", None),
            };
            let health = std::rc::Rc::new(std::cell::Cell::new(StorageHealth {
                persisted: Some(false),
                ..StorageHealth::default()
            }));
            let sync = std::rc::Rc::new(std::cell::RefCell::new(None));
            let load = {
                let (health, sync) = (health.clone(), sync.clone());
                async move {
                    if let Some(delay) = load_delay_ms {
                        crate::platform::sleep(std::time::Duration::from_millis(delay as u64))
                            .await;
                    }
                    if let BrowserStorage::IndexedDb(_) = &storage {
                        health.set(StorageHealth::query(request_persist).await);
                    }
                    let mut open_options = open_options;
                    open_options.load_in_slices = in_background;
                    if let Some(embedder) = embedder_by_name(&options).await? {
                        open_options.embedder = Some(embedder);
                    }
                    let db = Database::open(storage, open_options)
                        .await
                        .map_err(|e| to_js_error(&e))?;
                    let joined = match invite {
                        Some(invite) => db.join_invite(&invite).await,
                        None => Ok(()),
                    };
                    let synced = joined.and_then(|()| match relay {
                        Some(relay) => db
                            .sync(crate::transport::RelayConnector::new(relay))
                            .map(Some),
                        None => Ok(None),
                    });
                    match synced {
                        Ok(handle) => {
                            *sync.borrow_mut() = handle;
                            Ok(db)
                        }
                        // Opened, but not usable as asked: closed again, so
                        // its connection and channel do not outlive it.
                        Err(error) => {
                            let _ = db.close().await;
                            if let BrowserStorage::IndexedDb(storage) = db.storage() {
                                storage.close();
                            }
                            Err(to_js_error(&error))
                        }
                    }
                }
            };
            let db: Loading = futures::FutureExt::shared(futures::FutureExt::boxed_local(load));
            if in_background {
                // Runs the load whether or not a call waits for it. A load
                // that fails leaves the connection to the early reads
                // alone: it is closed, or it would block other tabs'
                // upgrades and deleting the database.
                let load = db.clone();
                let reader = early.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    if load.await.is_err() {
                        if let Some(reader) = reader {
                            reader.close();
                        }
                    }
                });
            } else {
                db.clone().await?;
            }
            Ok(PluresDB {
                name,
                storage_kind,
                db,
                early,
                closing: std::rc::Rc::new(std::cell::Cell::new(false)),
                sync,
                health,
            }
            .into())
        })
    }

    /// Resolves once the database has loaded: at once unless it was opened
    /// with `loadInBackground`, and then rejects with what made the load
    /// fail.
    #[wasm_bindgen(getter, unchecked_return_type = "Promise<void>")]
    pub fn loaded(&self) -> Promise {
        let db = self.db.clone();
        spawn_promise(async move {
            db.await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The database and a subscription to its changes: taken at once when
    /// it is loaded (no change committed after the call is missed), else
    /// once it is; `None` when its load failed (`loaded` says why).
    fn subscription(
        &self,
    ) -> impl std::future::Future<
        Output = Option<(
            Database<BrowserStorage>,
            futures::channel::mpsc::UnboundedReceiver<crate::SyncEvent>,
        )>,
    > {
        let now = match self.db.peek() {
            Some(Ok(db)) => Some((db.clone(), db.subscribe())),
            _ => None,
        };
        let loading = self.db.clone();
        async move {
            if now.is_some() {
                return now;
            }
            let db = loading.await.ok()?;
            let events = db.subscribe();
            Some((db, events))
        }
    }

    /// The reader that answers before the load, while it is running.
    fn early_reader(&self) -> Option<std::rc::Rc<crate::storage::EarlyReader>> {
        self.early
            .clone()
            .filter(|_| self.db.peek().is_none() && !self.closing.get())
    }

    /// The database once loaded, for calls that answer at once.
    fn loaded_db(&self) -> Result<Database<BrowserStorage>, JsValue> {
        match self.db.peek() {
            Some(loaded) => loaded.clone(),
            None => Err(loading_error()),
        }
    }

    /// The database name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// The actor id this instance writes under (32 hex digits). Each open
    /// instance (tab, worker) holds its own.
    #[wasm_bindgen(getter, js_name = actorId)]
    pub fn actor_id(&self) -> Result<String, JsValue> {
        Ok(self.loaded_db()?.actor().to_string())
    }

    /// Where the data lives: `'indexeddb'` or `'memory'` (`'sqlite'` on the
    /// Node addon).
    #[wasm_bindgen(getter, js_name = storageKind)]
    pub fn storage_kind(&self) -> String {
        self.storage_kind.into()
    }

    /// Stores `data` (any JSON value) under `id`; resolves once durable.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn put(
        &self,
        id: String,
        #[wasm_bindgen(unchecked_param_type = "unknown")] data: JsValue,
    ) -> Promise {
        let db = self.db.clone();
        let document = document_from_js(&data);
        spawn_promise(async move {
            let db = db.await?;
            db.put_document(&id, document?, None)
                .await
                .map_err(|e| to_js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Stores many `[id, data, vector?]` or `{ id, data, vector? }` entries
    /// in one transaction: all or nothing.
    #[wasm_bindgen(js_name = putMany, unchecked_return_type = "Promise<void>")]
    pub fn put_many(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Array<PutEntry>")] entries: JsValue,
    ) -> Promise {
        let db = self.db.clone();
        let parsed = parse_entries(&entries);
        spawn_promise(async move {
            let db = db.await?;
            db.put_many_with_embeddings(parsed?)
                .await
                .map_err(|e| to_js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The data under `id`, or `undefined` when absent or deleted.
    #[wasm_bindgen(unchecked_return_type = "Promise<unknown>")]
    pub fn get(&self, id: String) -> Promise {
        let db = self.db.clone();
        let early = self.early_reader();
        spawn_promise(async move {
            if let Some(reader) = early {
                if db.peek().is_none() {
                    if let Some(answer) = get_before_load(&reader, &id).await {
                        return answer;
                    }
                }
            }
            let db = db.await?;
            match db.get_document(&id).await.map_err(|e| to_js_error(&e))? {
                Some(document) => document_to_js(&document),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Deletes `id`; resolves to whether there was anything to delete.
    #[wasm_bindgen(unchecked_return_type = "Promise<boolean>")]
    pub fn delete(&self, id: String) -> Promise {
        let db = self.db.clone();
        spawn_promise(async move {
            let db = db.await?;
            let deleted = db.delete(&id).await.map_err(|e| to_js_error(&e))?;
            Ok(JsValue::from_bool(deleted))
        })
    }

    /// Lists live records in id order: `{ prefix?, limit?, cursor? }` →
    /// `{ items: [{ id, data }], nextCursor }`.
    #[wasm_bindgen(unchecked_return_type = "Promise<ListPage>")]
    pub fn list(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "ListOptions")] options: JsValue,
    ) -> Promise {
        let db = self.db.clone();
        let list_options = list_options_from(&options);
        let early = self.early_reader();
        spawn_promise(async move {
            let list_options = list_options?;
            // (It looks before each round whether the load completed.)
            let mut early_page = None;
            if let Some(reader) = early {
                early_page = list_before_load(&reader, &list_options, || db.peek().is_none()).await;
            }
            let page = match early_page {
                Some(page) => page,
                None => db
                    .await?
                    .list(&list_options)
                    .await
                    .map_err(|e| to_js_error(&e))?,
            };
            let items = Array::new();
            for (id, document) in &page.items {
                items.push(&record_object(id, document)?);
            }
            let result = Object::new();
            Reflect::set(&result, &"items".into(), &items)?;
            let cursor = page
                .next_cursor
                .map(|c| JsValue::from_str(&c))
                .unwrap_or(JsValue::NULL);
            Reflect::set(&result, &"nextCursor".into(), &cursor)?;
            Ok(result.into())
        })
    }

    /// Stores `data` under `id` with `vector` (a `Float32Array` or number
    /// array of the database's dimension) as its embedding.
    #[wasm_bindgen(js_name = putWithEmbedding, unchecked_return_type = "Promise<void>")]
    pub fn put_with_embedding(
        &self,
        id: String,
        #[wasm_bindgen(unchecked_param_type = "unknown")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | number[]")] vector: JsValue,
    ) -> Promise {
        let db = self.db.clone();
        let document = document_from_js(&data);
        let vector = vector::vector_from_js(&vector, "vector");
        spawn_promise(async move {
            let db = db.await?;
            db.put_document(&id, document?, Some(vector?.into()))
                .await
                .map_err(|e| to_js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The records nearest to a vector (or to a text, with an embedder):
    /// `[{ id, score, data }]`, best first. Options: `{ k = 10, minScore,
    /// filter: Query, ef }`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Array<SearchHit>>")]
    pub fn search(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | number[] | string")] query: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "SearchOptions")] options: JsValue,
    ) -> Promise {
        let db = self.db.clone();
        let request = search_request(&query, &options);
        spawn_promise(async move {
            let db = db.await?;
            let hits = db.search(&request?).await.map_err(|e| to_js_error(&e))?;
            let out = Array::new();
            for hit in &hits {
                let item = Object::new();
                Reflect::set(&item, &"id".into(), &JsValue::from_str(&hit.id))?;
                Reflect::set(
                    &item,
                    &"score".into(),
                    &JsValue::from_f64(f64::from(hit.score)),
                )?;
                Reflect::set(&item, &"data".into(), &document_to_js(&hit.data)?)?;
                out.push(&item);
            }
            Ok(out.into())
        })
    }

    /// Vector index sizes: `{ dimension, vectors, growing, segments,
    /// graphBytes, vectorBytes }`.
    #[wasm_bindgen(js_name = indexStats, unchecked_return_type = "IndexStats")]
    pub fn index_stats(&self) -> Result<JsValue, JsValue> {
        check_usable()?;
        let stats = self.loaded_db()?.index_stats();
        let segments: Array = stats
            .segments
            .iter()
            .map(|n| JsValue::from(*n as u32))
            .collect();
        let fields: [(&str, JsValue); 6] = [
            (
                "dimension",
                stats
                    .dimension
                    .map_or(JsValue::NULL, |d| JsValue::from(d as u32)),
            ),
            ("vectors", JsValue::from(stats.vectors as u32)),
            ("growing", JsValue::from(stats.growing as u32)),
            ("segments", segments.into()),
            ("graphBytes", JsValue::from(stats.graph_bytes as f64)),
            ("vectorBytes", JsValue::from(stats.vector_bytes as f64)),
        ];
        let out = Object::new();
        for (key, value) in fields {
            Reflect::set(&out, &key.into(), &value)?;
        }
        Ok(out.into())
    }

    /// Seals what is waiting and waits until index work (sealing,
    /// merging) is done; also merges pairs of similar segments, so call it
    /// after a bulk load for faster searches.
    #[wasm_bindgen(js_name = flushIndex, unchecked_return_type = "Promise<void>")]
    pub fn flush_index(&self) -> Promise {
        let db = self.db.clone();
        spawn_promise(async move {
            let db = db.await?;
            db.flush_index().await.map_err(|e| to_js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Live records matching a query, as `[{ id, data }]`:
    /// `{ prefix?, where?: { field: value | { $eq, $ne, $gt, $gte, $lt, $lte, $in, $exists } },
    /// sort?: 'field' | '-field' | [...], limit? }`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Array<{ id: string, data: unknown }>>")]
    pub fn query(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "Query")] query: JsValue,
    ) -> Promise {
        let db = self.db.clone();
        let parsed = query_from_js(&query);
        spawn_promise(async move {
            let db = db.await?;
            let query = parsed?;
            let (hits, plan) = db
                .query_with_plan(&query)
                .await
                .map_err(|e| to_js_error(&e))?;
            warn_scan_once(&query, &plan);
            let items = Array::new();
            for (id, document) in &hits {
                items.push(&record_object(id, document)?);
            }
            Ok(items.into())
        })
    }

    /// Which records `query` would read, without running it:
    /// `{ index, reads }`, where `index` is the indexed field whose
    /// condition narrows the query (`null`: a scan of every record under
    /// the prefix) and `reads` how many records it reads.
    #[wasm_bindgen(unchecked_return_type = "QueryPlan")]
    pub fn explain(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "Query")] query: JsValue,
    ) -> Result<JsValue, JsValue> {
        check_usable()?;
        let plan = self
            .loaded_db()?
            .explain(&query_from_js(&query)?)
            .map_err(|e| to_js_error(&e))?;
        let out = Object::new();
        let index = plan.index.map_or(JsValue::NULL, |field| field.into());
        Reflect::set(&out, &"index".into(), &index)?;
        Reflect::set(&out, &"reads".into(), &(plan.reads as f64).into())?;
        Ok(out.into())
    }

    /// The concurrent versions that lost to the current value of `id`:
    /// `[{ data, deleted, writer, timestamp }]`, most recent first; empty
    /// when there is no conflict.
    #[wasm_bindgen(unchecked_return_type = "Promise<Array<ConflictVersion>>")]
    pub fn conflicts(&self, id: String) -> Promise {
        let db = self.db.clone();
        spawn_promise(async move {
            let db = db.await?;
            let versions = db.conflicts(&id).await.map_err(|e| to_js_error(&e))?;
            let out = Array::new();
            for version in &versions {
                let item = Object::new();
                let data = match version.document() {
                    Some(document) => document_to_js(document)?,
                    None => JsValue::UNDEFINED,
                };
                Reflect::set(&item, &"data".into(), &data)?;
                Reflect::set(&item, &"deleted".into(), &version.is_tombstone().into())?;
                Reflect::set(
                    &item,
                    &"writer".into(),
                    &version.writer().to_string().into(),
                )?;
                Reflect::set(
                    &item,
                    &"timestamp".into(),
                    &(version.hlc.wall_ms as f64).into(),
                )?;
                out.push(&item);
            }
            Ok(out.into())
        })
    }

    /// A live query: calls `callback(records)` with the current result of
    /// `query` (as [`query`](Self::query) returns it), and again whenever a
    /// committed change — from this tab, another tab or a peer — changes the
    /// result. Changes committed together cause one call. Returns a function
    /// that stops watching.
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn watch(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Query")] query: JsValue,
        #[wasm_bindgen(
            unchecked_param_type = "(records: Array<{ id: string, data: unknown }>) => void"
        )]
        callback: Function,
    ) -> Result<Function, JsValue> {
        check_usable()?;
        let query = query_from_js(&query)?;
        let subscription = self.subscription();
        let active = std::rc::Rc::new(std::cell::Cell::new(true));
        let still_active = active.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let Some((db, mut events)) = subscription.await else {
                return;
            };
            let mut last: Option<Vec<(String, Document)>> = None;
            loop {
                if !still_active.get() {
                    break;
                }
                let Ok(result) = db.query(&query).await else {
                    break;
                };
                if last.as_ref() != Some(&result) {
                    let items = Array::new();
                    for (id, document) in &result {
                        match record_object(id, document) {
                            Ok(item) => {
                                items.push(&item);
                            }
                            Err(_) => continue,
                        }
                    }
                    if let Err(error) = callback.call1(&JsValue::UNDEFINED, &items) {
                        web_sys::console::error_2(
                            &"PluresDB: a watch callback threw".into(),
                            &error,
                        );
                    }
                    last = Some(result);
                }
                // One commit means one call.
                if !crate::next_change_under(&mut events, &query.prefix).await {
                    return;
                }
            }
        });
        let unwatch = Closure::once_into_js(move || active.set(false));
        Ok(unwatch.unchecked_into())
    }

    /// Calls `listener({ kind, id })` after every committed change (`kind`:
    /// `'upsert'`, `'delete'`, `'peer-connected'`, `'peer-disconnected'`),
    /// whether it came from this tab, another tab or a peer. Returns a
    /// function that unsubscribes.
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: ChangeEvent) => void")] listener: Function,
    ) -> Result<Function, JsValue> {
        check_usable()?;
        let subscription = self.subscription();
        let active = std::rc::Rc::new(std::cell::Cell::new(true));
        let still_active = active.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let Some((_db, mut events)) = subscription.await else {
                return;
            };
            while let Some(event) = events.next().await {
                if !still_active.get() {
                    break;
                }
                let (kind, id) = event.kind_and_id();
                let object = Object::new();
                let _ = Reflect::set(&object, &"kind".into(), &kind.into());
                let _ = Reflect::set(&object, &"id".into(), &JsValue::from_str(id));
                if let Err(error) = listener.call1(&JsValue::UNDEFINED, &object) {
                    web_sys::console::error_2(&"PluresDB: a subscriber threw".into(), &error);
                }
            }
        });
        let unsubscribe = Closure::once_into_js(move || active.set(false));
        Ok(unsubscribe.unchecked_into())
    }

    /// This database's invite string (creating its sync identity on first
    /// use): open a database with `{ invite }` elsewhere to make it a
    /// replica. Whoever holds it can read and write: share it like a
    /// password.
    #[wasm_bindgen(js_name = createInvite, unchecked_return_type = "Promise<string>")]
    pub fn create_invite(&self) -> Promise {
        let db = self.db.clone();
        spawn_promise(async move {
            let db = db.await?;
            let invite = db.create_invite().await.map_err(|e| to_js_error(&e))?;
            Ok(JsValue::from_str(&invite))
        })
    }

    /// Starts syncing through the relay at `relayUrl` (`ws://` or `wss://`),
    /// or through a `SyncTransport` such as `hyperswarmTransport(swarm)`
    /// from `pluresdb/hyperswarm`, replacing any running sync. Writes made
    /// offline are sent when the connection comes back; it reconnects on
    /// its own. (`{ hyperswarm }` is the Node addon's built-in transport;
    /// this build refuses it with `InvalidInputError`.)
    pub fn sync(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | SyncTransport | HyperswarmSyncOptions")]
        via: JsValue,
    ) -> Result<(), JsValue> {
        check_usable()?;
        let db = self.loaded_db()?;
        let handle = if let Some(relay_url) = via.as_string() {
            if !(relay_url.starts_with("ws://") || relay_url.starts_with("wss://")) {
                return Err(invalid_input(
                    "the relay URL must start with ws:// or wss://",
                ));
            }
            db.sync(crate::transport::RelayConnector::new(relay_url))
        } else if Reflect::has(&via, &"hyperswarm".into()).unwrap_or(false) {
            return Err(invalid_input(
                "{ hyperswarm } is the Node addon's built-in transport; the WebAssembly \
                 build syncs over hyperswarmTransport(swarm) from pluresdb/hyperswarm",
            ));
        } else {
            let connector = crate::transport::JsConnector::new(via).map_err(invalid_input)?;
            db.sync(connector)
        }
        .map_err(|e| to_js_error(&e))?;
        *self.sync.borrow_mut() = Some(handle);
        Ok(())
    }

    /// Stops syncing (nothing is lost; `sync` again to resume).
    #[wasm_bindgen(js_name = stopSync)]
    pub fn stop_sync(&self) {
        self.sync.borrow_mut().take();
    }

    /// `{ state: 'offline' | 'connecting' | 'syncing' | 'synced' | 'stopped',
    /// peers, pending, rejected, lastError, lastReceivedAt, transport }`.
    #[wasm_bindgen(js_name = syncStatus, unchecked_return_type = "SyncStatus")]
    pub fn sync_status(&self) -> Result<JsValue, JsValue> {
        let out = Object::new();
        let status = self.sync.borrow().as_ref().map(|handle| handle.status());
        let set = |key: &str, value: JsValue| Reflect::set(&out, &key.into(), &value);
        set("evictionRisk", self.health.get().eviction_risk().into())?;
        match status {
            None => {
                set("state", "stopped".into())?;
                set("peers", 0.into())?;
                set("pending", 0.into())?;
                set("rejected", 0.into())?;
                set("lastError", JsValue::NULL)?;
                set("lastReceivedAt", JsValue::NULL)?;
                set("transport", JsValue::NULL)?;
            }
            Some(status) => {
                set("state", status.state.as_str().into())?;
                set("peers", status.peers.into())?;
                set("pending", (status.pending as f64).into())?;
                set("rejected", (status.rejected as f64).into())?;
                set(
                    "lastError",
                    status.last_error.map_or(JsValue::NULL, |e| e.into()),
                )?;
                set(
                    "lastReceivedAt",
                    status
                        .last_received_ms
                        .map_or(JsValue::NULL, |t| (t as f64).into()),
                )?;
                set("transport", status.transport.into())?;
            }
        }
        Ok(out.into())
    }

    /// `{ storage, persisted, persistRequested, usage, quota, evictionRisk,
    /// cachedBytes, documentsInStorage }`: what the browser says of this
    /// origin's storage now, and what the cache holds (see `StorageStatus`).
    #[wasm_bindgen(js_name = storageStatus, unchecked_return_type = "Promise<StorageStatus>")]
    pub fn storage_status(&self) -> Promise {
        let indexed = self.storage_kind == "indexeddb";
        let cached = self.health.clone();
        let db = self.db.clone();
        spawn_promise(async move {
            let stats = db.await?.stats().map_err(|e| to_js_error(&e))?;
            let mut health = cached.get();
            if indexed {
                let now = StorageHealth::query(false).await;
                health = StorageHealth {
                    persist_requested: health.persist_requested,
                    ..now
                };
                cached.set(health);
            }
            let out = Object::new();
            let set = |key: &str, value: JsValue| Reflect::set(&out, &key.into(), &value);
            let number = |n: Option<f64>| n.map_or(JsValue::NULL, JsValue::from);
            set(
                "storage",
                if indexed { "indexeddb" } else { "memory" }.into(),
            )?;
            set(
                "persisted",
                health.persisted.map_or(JsValue::NULL, JsValue::from),
            )?;
            set("persistRequested", health.persist_requested.into())?;
            set("usage", number(health.usage))?;
            set("quota", number(health.quota))?;
            set("evictionRisk", health.eviction_risk().into())?;
            set("cachedBytes", (stats.cached_bytes as f64).into())?;
            set(
                "documentsInStorage",
                (stats.records_in_storage_only as f64).into(),
            )?;
            Ok(out.into())
        })
    }

    /// Waits for pending writes, then closes the database.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn close(&self) -> Promise {
        let db = self.db.clone();
        let sync = self.sync.clone();
        self.closing.set(true);
        sync.borrow_mut().take();
        spawn_promise(async move {
            // A load that failed left nothing open (its connection is
            // closed).
            let Ok(db) = db.await else {
                return Ok(JsValue::UNDEFINED);
            };
            // A relay named at open starts syncing once loaded.
            sync.borrow_mut().take();
            db.close().await.map_err(|e| to_js_error(&e))?;
            if let BrowserStorage::IndexedDb(storage) = db.storage() {
                storage.close();
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Panics inside the module on purpose: the end-to-end tests use it to
    /// check that a panic is logged and makes every later call fail with
    /// `PluresDBError` instead of running on broken state. Not part of the
    /// API (absent from the TypeScript definitions).
    #[doc(hidden)]
    #[wasm_bindgen(js_name = __panicForTests, skip_typescript)]
    pub fn panic_for_tests() {
        panic!("PluresDB.__panicForTests was called");
    }

    /// Closes the database and deletes all of its data.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn destroy(&self) -> Promise {
        let db = self.db.clone();
        let name = self.name.clone();
        let sync = self.sync.clone();
        let indexed = self.storage_kind == "indexeddb";
        let early = self.early.clone();
        self.closing.set(true);
        sync.borrow_mut().take();
        spawn_promise(async move {
            match db.await {
                Ok(db) => {
                    sync.borrow_mut().take();
                    db.close().await.map_err(|e| to_js_error(&e))?;
                    if let BrowserStorage::IndexedDb(storage) = db.storage() {
                        storage.close();
                    }
                }
                // A database whose background load failed (a corrupt one)
                // can still be deleted once its connection is closed.
                Err(_) if indexed => {
                    if let Some(reader) = early {
                        reader.close();
                    }
                }
                Err(error) => return Err(error),
            }
            if indexed {
                IndexedDbStorage::destroy(&name)
                    .await
                    .map_err(|e| to_js_error(&e.into()))?;
            }
            Ok(JsValue::UNDEFINED)
        })
    }
}

fn search_request(query: &JsValue, options: &JsValue) -> Result<SearchRequest, JsValue> {
    let query = match query.as_string() {
        Some(text) => SearchQuery::Text(text),
        None => SearchQuery::Vector(vector::vector_from_js(query, "the search vector")?),
    };
    let mut request = SearchRequest {
        query,
        ..SearchRequest::vector(Vec::new())
    };
    if let Some(k) = number_option(options, "k")? {
        if k < 1.0 || k.fract() != 0.0 {
            return Err(invalid_input("option `k` must be a positive integer"));
        }
        request.k = k as usize;
    }
    if !options.is_undefined() && !options.is_null() {
        let min = Reflect::get(options, &"minScore".into())?;
        if !min.is_undefined() && !min.is_null() {
            let min = min
                .as_f64()
                .filter(|m| m.is_finite())
                .ok_or_else(|| invalid_input("option `minScore` must be a finite number"))?;
            request.min_score = Some(min as f32);
        }
        let filter = Reflect::get(options, &"filter".into())?;
        if !filter.is_undefined() && !filter.is_null() {
            request.filter = Some(query_from_js(&filter)?);
        }
    }
    if let Some(ef) = number_option(options, "ef")? {
        request.ef = Some(ef as usize);
    }
    Ok(request)
}

fn record_object(id: &str, document: &Document) -> Result<JsValue, JsValue> {
    let item = Object::new();
    Reflect::set(&item, &"id".into(), &JsValue::from_str(id))?;
    Reflect::set(&item, &"data".into(), &document_to_js(document)?)?;
    Ok(item.into())
}

fn query_from_js(query: &JsValue) -> Result<Query, JsValue> {
    let value = if query.is_undefined() || query.is_null() {
        serde_json::Value::Null
    } else {
        let text = to_json_text(query)?;
        serde_json::from_str(&text).map_err(|e| invalid_input(format!("invalid query: {e}")))?
    };
    Query::from_json(&value).map_err(|e| to_js_error(&e.into()))
}

fn parse_entries(entries: &JsValue) -> Result<Vec<crate::db::EmbeddedEntry>, JsValue> {
    let parts = entries_to_json_text(entries)?;
    let text = Reflect::get(&parts, &"text".into())?
        .as_string()
        .ok_or_else(|| invalid_input("putMany entries could not be serialised"))?;
    let vectors = Reflect::get(&parts, &"vectors".into())?;
    let vectors = vectors.dyn_ref::<Array>();
    let pairs: Vec<(String, &serde_json::value::RawValue)> =
        serde_json::from_str(&text).map_err(|e| invalid_input(format!("putMany entries: {e}")))?;
    pairs
        .into_iter()
        .enumerate()
        .map(|(index, (id, data))| {
            let document = Document::from_stringified(data.get().to_owned())
                .map_err(|e| to_js_error(&e.into()))?;
            let vector = match vectors.map(|v| v.get(index as u32)) {
                Some(value) if !value.is_undefined() && !value.is_null() => Some(
                    vector::vector_from_js(&value, &format!("entries[{index}].vector"))?.into(),
                ),
                _ => None,
            };
            Ok((id, document, vector))
        })
        .collect()
}
