//! PluresDB's Node-API addon: the native [`pluresdb::Database`] on SQLite,
//! for Node, Deno and Electron.
//!
//! This layer is deliberately thin and speaks JSON text: the npm package's
//! `node-addon.js` validates JavaScript values (the same `json.js` as the
//! browser build), sends records as JSON text and vectors as
//! `Float32Array`s, parses what comes back, and turns errors into the same
//! named errors as the WebAssembly build. Every call that touches storage
//! runs on the addon's tokio runtime and returns a promise, so the event
//! loop never waits for SQLite.
//!
//! Errors cross as `"<ErrorName>: <message>"`; `node-addon.js` splits them.
#![cfg(not(target_arch = "wasm32"))]

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::StreamExt;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use pluresdb::crdt::Document;
use pluresdb::error::{Error as DbError, InputError};
use pluresdb::storage::SqliteStorage;
use pluresdb::{Database, ListOptions, OpenOptions, Query, SearchQuery, SearchRequest, SyncHandle};
use pluresdb::{EmbedText, EmbeddedEntry};
use serde_json::{json, Value};

/// A PluresDB error as the JavaScript wrapper expects it.
fn js_error(error: &DbError) -> napi::Error {
    napi::Error::new(
        Status::GenericFailure,
        format!("{}: {error}", error.name().as_str()),
    )
}

fn invalid(message: impl Into<String>) -> napi::Error {
    js_error(&DbError::Input(InputError::InvalidArgument(message.into())))
}

fn document(json: String) -> Result<Document> {
    Document::from_json_text(json).map_err(|e| js_error(&e.into()))
}

/// Writes `{"id":…,"data":…}` with the document's own text (key order and
/// number spelling as stored) and `extra` fields after it.
fn write_record(out: &mut String, id: &str, document: &Document, extra: &str) {
    out.push_str("{\"id\":");
    out.push_str(&Value::from(id).to_string());
    out.push_str(",\"data\":");
    out.push_str(document.as_str());
    out.push_str(extra);
    out.push('}');
}

/// `[{"id":…,"data":…}, …]` as JSON text.
fn records_json<'a>(records: impl IntoIterator<Item = (&'a str, &'a Document)>) -> String {
    let mut out = String::from("[");
    for (n, (id, document)) in records.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_record(&mut out, id, document, "");
    }
    out.push(']');
    out
}

/// Options as `node-addon.js` passes them (JSON; functions travel apart).
fn option<'a>(options: &'a Value, key: &str) -> Option<&'a Value> {
    options.get(key).filter(|value| !value.is_null())
}

fn string_option(options: &Value, key: &str) -> Result<Option<String>> {
    match option(options, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid(format!("option `{key}` must be a string"))),
    }
}

fn positive_option(options: &Value, key: &str, what: &str) -> Result<Option<usize>> {
    match option(options, key) {
        None => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n as usize)),
            _ => Err(invalid(format!(
                "{what} `{key}` must be a positive integer"
            ))),
        },
    }
}

/// Where `PluresDB.open(name)` keeps its file: `{ path }` when given, else
/// `<data dir>/databases/<name>.db`, the data directory being
/// `$PLURESDB_DATA_DIR` or the user's (`~/.local/share/pluresdb` on Linux,
/// `~/Library/Application Support/pluresdb` on macOS, `%APPDATA%\pluresdb`
/// on Windows). Names keep letters, digits, `-`, `_` and `.`; any other
/// byte is written as `%XX`, so every name maps to one file.
/// A non-negative number option (`limit`, `ef`), truncated to an integer
/// as the WebAssembly build does.
fn count_option(options: &Value, key: &str) -> Result<Option<usize>> {
    match option(options, key) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| invalid(format!("option `{key}` must be a non-negative number"))),
    }
}

fn storage_error(message: String) -> napi::Error {
    js_error(&DbError::Storage(pluresdb::error::StorageError::Backend(
        message,
    )))
}

fn database_path(name: &str, options: &Value) -> Result<PathBuf> {
    if let Some(path) = string_option(options, "path")? {
        if path.is_empty() {
            return Err(invalid("option `path` must not be empty"));
        }
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("PLURESDB_DATA_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => pluresdb::cli::data_dir().map_err(|e| js_error(&DbError::Internal(e.to_string())))?,
    };
    let mut file = String::with_capacity(name.len() + 3);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_')
            || (byte == b'.' && !file.is_empty())
        {
            file.push(byte as char);
        } else {
            file.push_str(&format!("%{byte:02X}"));
        }
    }
    file.push_str(".db");
    let dir = base.join("databases");
    std::fs::create_dir_all(&dir)
        .map_err(|e| storage_error(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.join(file))
}

fn open_options(options: &Value, embedder: Option<Arc<dyn EmbedText>>) -> Result<OpenOptions> {
    let mut out = OpenOptions {
        embedder,
        ..OpenOptions::default()
    };
    match string_option(options, "embedder")?.as_deref() {
        None => {}
        Some("hash") => {
            let dimension = match option(options, "embedderDimension") {
                None => 256,
                Some(value) => value
                    .as_u64()
                    .filter(|n| (1..=pluresdb::crdt::MAX_EMBEDDING_DIM as u64).contains(n))
                    .ok_or_else(|| invalid("option `embedderDimension` is out of range"))?
                    as usize,
            };
            out.embedder = Some(Arc::new(pluresdb::index::HashEmbedder::new(dimension)));
        }
        Some("minilm") => {
            out.embedder = Some(Arc::new(pluresdb::index::MiniLmEmbedder::built_in()));
        }
        Some("minilm-static") => {
            out.embedder = Some(Arc::new(pluresdb::index::StaticEmbedder::built_in()));
        }
        Some(other) => {
            return Err(invalid(format!(
                "unknown embedder '{other}': the built-in ones are 'hash', 'minilm' and 'minilm-static' (or pass an async function (texts) => vectors)"
            )))
        }
    }
    out.embed_fields = field_names(options, "embedFields")?;
    out.indexes = field_names(options, "indexes")?;
    if let Some(value) = option(options, "cacheBytes") {
        out.cache_bytes = value
            .as_u64()
            .and_then(|bytes| usize::try_from(bytes).ok())
            .ok_or_else(|| {
                invalid("option `cacheBytes` must be a whole number of bytes, 0 or more")
            })?;
    }
    if let Some(index) = option(options, "index") {
        if !index.is_object() {
            return Err(invalid("option `index` must be an object"));
        }
        for name in pluresdb::index::IndexConfig::OPTION_NAMES {
            if let Some(n) = positive_option(index, name, "index option")? {
                out.index.set_option(name, n).map_err(invalid)?;
            }
        }
    }
    Ok(out)
}

/// The embedder as the addon holds it: weak (it does not keep Node's
/// event loop alive), errors returned rather than thrown.
type EmbedderFunction =
    ThreadsafeFunction<Vec<String>, Promise<Vec<Vec<f64>>>, Vec<String>, Status, false, true>;

/// A JavaScript embedder, `async (texts) => number[][]` (the wrapper turns
/// whatever the user's function returns into plain arrays).
struct JsEmbedder {
    function: EmbedderFunction,
    model: Option<String>,
}

impl EmbedText for JsEmbedder {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, std::result::Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            let promise = self
                .function
                .call_async(texts.to_vec())
                .await
                .map_err(|e| format!("the embedder failed: {}", e.reason))?;
            let vectors = promise
                .await
                .map_err(|e| format!("the embedder failed: {}", e.reason))?;
            Ok(vectors
                .into_iter()
                .map(|vector| vector.into_iter().map(|x| x as f32).collect())
                .collect())
        })
    }

    fn model(&self) -> Option<String> {
        self.model.clone()
    }
}

/// Opens (or creates) a database: `name` and the options as JSON (see
/// `node-addon.js`), with a JavaScript embedder apart when there is one.
#[napi(catch_unwind)]
pub async fn open(
    name: String,
    options_json: String,
    embedder: Option<EmbedderFunction>,
    embedder_model: Option<String>,
) -> Result<NativeDatabase> {
    if name.is_empty() {
        return Err(invalid("a database name must not be empty"));
    }
    let options: Value =
        serde_json::from_str(&options_json).map_err(|e| invalid(format!("options: {e}")))?;
    let embedder = embedder.map(|function| {
        Arc::new(JsEmbedder {
            function,
            model: embedder_model,
        }) as Arc<dyn EmbedText>
    });
    let open_options = open_options(&options, embedder)?;
    let (storage, path) = match string_option(&options, "storage")?.as_deref() {
        None | Some("sqlite") => {
            let path = database_path(&name, &options)?;
            let storage = tokio::task::spawn_blocking({
                let path = path.clone();
                move || SqliteStorage::open(&path)
            })
            .await
            .map_err(|e| js_error(&DbError::Internal(e.to_string())))?
            .map_err(|e| js_error(&e.into()))?;
            (storage, Some(path))
        }
        Some("memory") => (
            SqliteStorage::open_in_memory().map_err(|e| js_error(&e.into()))?,
            None,
        ),
        Some(other) => {
            return Err(invalid(format!(
                "unknown storage `{other}`: use 'sqlite' or 'memory'"
            )))
        }
    };
    let db = Database::open(storage, open_options)
        .await
        .map_err(|e| js_error(&e))?;
    if let Some(invite) = string_option(&options, "invite")? {
        db.join_invite(&invite).await.map_err(|e| js_error(&e))?;
    }
    let out = NativeDatabase {
        name,
        path,
        db,
        sync: Arc::new(Mutex::new(None)),
    };
    if let Some(relay) = string_option(&options, "relay")? {
        out.start_relay_sync(relay)?;
    }
    Ok(out)
}

/// One open database.
#[napi]
pub struct NativeDatabase {
    name: String,
    path: Option<PathBuf>,
    db: Database<SqliteStorage>,
    sync: Arc<Mutex<Option<SyncHandle>>>,
}

/// Stops a `watch` or `subscribe`.
#[napi]
pub struct Subscription {
    active: Arc<std::sync::atomic::AtomicBool>,
}

#[napi]
impl Subscription {
    /// Stops calling back (idempotent).
    #[napi(catch_unwind)]
    pub fn stop(&self) {
        self.active
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

type Callback = ThreadsafeFunction<String, (), String, Status, false, true>;

fn callback(function: Function<'_, String, ()>) -> Result<Callback> {
    function
        .build_threadsafe_function()
        .callee_handled::<false>()
        .weak::<true>()
        .build()
}

impl NativeDatabase {
    fn start_relay_sync(&self, url: String) -> Result<()> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(invalid("the relay URL must start with ws:// or wss://"));
        }
        let handle = napi::bindgen_prelude::within_runtime_if_available(|| {
            self.db.sync(pluresdb::transport::RelayConnector::new(url))
        })
        .map_err(|e| js_error(&e))?;
        *self.sync.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }
}

fn address_list(value: Option<&Value>, key: &str) -> Result<Vec<SocketAddrV4>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| {
                        invalid(format!("`{key}` entries must be IPv4 `host:port` strings"))
                    })
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "`{key}` must be an array of `host:port` strings"
        ))),
    }
}

#[napi]
impl NativeDatabase {
    /// The database name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// The SQLite file, or `null` in memory.
    #[napi(getter)]
    pub fn path(&self) -> Option<String> {
        self.path.as_ref().map(|p| p.display().to_string())
    }

    /// The actor id this instance writes under.
    #[napi(getter)]
    pub fn actor_id(&self) -> String {
        self.db.actor().to_string()
    }

    /// Stores a JSON document.
    #[napi(catch_unwind)]
    pub async fn put(&self, id: String, json: String) -> Result<()> {
        let document = document(json)?;
        self.db
            .put_document(&id, document, None)
            .await
            .map_err(|e| js_error(&e))
    }

    /// Stores a JSON document with its embedding.
    #[napi(catch_unwind)]
    pub fn put_with_embedding<'env>(
        &self,
        env: &'env Env,
        id: String,
        json: String,
        vector: Float32Array,
    ) -> Result<PromiseRaw<'env, ()>> {
        let vector = vector.to_vec();
        let db = self.db.clone();
        env.spawn_future(async move {
            db.put_document(&id, document(json)?, Some(vector.into()))
                .await
                .map_err(|e| js_error(&e))
        })
    }

    /// Stores `[[id, data], ...]` (JSON text) with optional vectors, in one
    /// transaction.
    #[napi(catch_unwind)]
    pub fn put_many<'env>(
        &self,
        env: &'env Env,
        entries_json: String,
        vectors: Option<Vec<Option<Float32Array>>>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let vectors = copy_vectors(vectors);
        let db = self.db.clone();
        env.spawn_future(async move {
            let entries = parse_entries(&entries_json, vectors)?;
            db.put_many_with_embeddings(entries)
                .await
                .map_err(|e| js_error(&e))
        })
    }

    /// Starts a `putMany` sent in slices: the wrapper serialises the next
    /// slice while the runtime parses the last, and `commit` stores them
    /// all in one transaction. Dropping the batch stores nothing.
    #[napi(catch_unwind)]
    pub fn put_many_begin(&self) -> PutManyBatch {
        PutManyBatch {
            db: self.db.clone(),
            slices: Mutex::new(Vec::new()),
        }
    }

    /// The JSON text under `id`, `null` when there is none, or `false`
    /// when the answer needs storage (then call `getStored`). Synchronous:
    /// a lookup in memory costs less than a round trip through the runtime
    /// (the wrapper still returns a promise).
    #[napi(catch_unwind)]
    pub fn get(&self, id: String) -> Result<Option<Either<String, bool>>> {
        match self.db.get_in_memory(&id).map_err(|e| js_error(&e))? {
            Some(found) => Ok(found.map(|document| Either::A(document.as_str().to_owned()))),
            None => Ok(Some(Either::B(false))),
        }
    }

    /// The JSON text under `id`, or `null`, read from storage when needed.
    #[napi(catch_unwind)]
    pub async fn get_stored(&self, id: String) -> Result<Option<String>> {
        Ok(self
            .db
            .get_document(&id)
            .await
            .map_err(|e| js_error(&e))?
            .map(|document| document.as_str().to_owned()))
    }

    /// Deletes `id`; whether there was anything to delete.
    #[napi(catch_unwind)]
    pub async fn delete(&self, id: String) -> Result<bool> {
        self.db.delete(&id).await.map_err(|e| js_error(&e))
    }

    /// `{ items: [{ id, data }], nextCursor }` as JSON.
    #[napi(catch_unwind)]
    pub async fn list(&self, options_json: String) -> Result<String> {
        let options: Value = serde_json::from_str(&options_json)
            .map_err(|e| invalid(format!("list options: {e}")))?;
        let limit = count_option(&options, "limit")?;
        let list_options = ListOptions {
            prefix: string_option(&options, "prefix")?.unwrap_or_default(),
            limit,
            cursor: string_option(&options, "cursor")?,
        };
        let page = self
            .db
            .list(&list_options)
            .await
            .map_err(|e| js_error(&e))?;
        let items = records_json(page.items.iter().map(|(id, d)| (id.as_str(), d)));
        Ok(format!(
            "{{\"items\":{items},\"nextCursor\":{}}}",
            json!(page.next_cursor)
        ))
    }

    /// `[{ id, data }]` as JSON for a query given as JSON.
    #[napi(catch_unwind)]
    pub async fn query(&self, query_json: String) -> Result<String> {
        let query = parse_query(&query_json)?;
        let hits = self.db.query(&query).await.map_err(|e| js_error(&e))?;
        Ok(records_json(hits.iter().map(|(id, d)| (id.as_str(), d))))
    }

    /// `{ index, reads }` as JSON: which records the query would read.
    #[napi(catch_unwind)]
    pub fn explain(&self, query_json: String) -> Result<String> {
        let query = parse_query(&query_json)?;
        let plan = self.db.explain(&query).map_err(|e| js_error(&e))?;
        Ok(serde_json::json!({ "index": plan.index, "reads": plan.reads }).to_string())
    }

    /// `[{ id, score, data }]` as JSON: the nearest records to `vector` or
    /// to `text` (one of them), with `{ k, minScore, filter, ef }`.
    #[napi(catch_unwind)]
    pub fn search<'env>(
        &self,
        env: &'env Env,
        vector: Option<Float32Array>,
        text: Option<String>,
        options_json: String,
    ) -> Result<PromiseRaw<'env, String>> {
        let query = match (vector, text) {
            (_, Some(text)) => SearchQuery::Text(text),
            (Some(vector), None) => SearchQuery::Vector(vector.to_vec()),
            (None, None) => return Err(invalid("search needs a vector or a text")),
        };
        let db = self.db.clone();
        env.spawn_future(async move {
            let options: Value = serde_json::from_str(&options_json)
                .map_err(|e| invalid(format!("search options: {e}")))?;
            let mut request = SearchRequest {
                query,
                ..SearchRequest::vector(Vec::new())
            };
            if let Some(k) = positive_option(&options, "k", "option")? {
                request.k = k;
            }
            if let Some(min) = option(&options, "minScore") {
                let min = min
                    .as_f64()
                    .filter(|m| m.is_finite())
                    .ok_or_else(|| invalid("option `minScore` must be a finite number"))?;
                request.min_score = Some(min as f32);
            }
            if let Some(filter) = option(&options, "filter") {
                request.filter = Some(Query::from_json(filter).map_err(|e| js_error(&e.into()))?);
            }
            request.ef = count_option(&options, "ef")?;
            let hits = db.search(&request).await.map_err(|e| js_error(&e))?;
            let mut out = String::from("[");
            for (n, hit) in hits.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let score = format!(",\"score\":{}", json!(f64::from(hit.score)));
                write_record(&mut out, &hit.id, &hit.data, &score);
            }
            out.push(']');
            Ok(out)
        })
    }

    /// Vector index sizes as JSON.
    #[napi(catch_unwind)]
    pub fn index_stats(&self) -> String {
        let stats = self.db.index_stats();
        json!({
            "dimension": stats.dimension,
            "vectors": stats.vectors,
            "growing": stats.growing,
            "segments": stats.segments,
            "graphBytes": stats.graph_bytes,
            "vectorBytes": stats.vector_bytes,
        })
        .to_string()
    }

    /// Seals and merges waiting index work.
    #[napi(catch_unwind)]
    pub async fn flush_index(&self) -> Result<()> {
        self.db.flush_index().await.map_err(|e| js_error(&e))
    }

    /// The losing concurrent versions of `id` as JSON.
    #[napi(catch_unwind)]
    pub async fn conflicts(&self, id: String) -> Result<String> {
        let versions = self.db.conflicts(&id).await.map_err(|e| js_error(&e))?;
        let out: Vec<Value> = versions
            .iter()
            .map(|version| {
                let data = version.document().and_then(|d| {
                    serde_json::from_str::<Box<serde_json::value::RawValue>>(d.as_str()).ok()
                });
                let timestamp = version.hlc.wall_ms;
                json!({
                    "data": data,
                    "deleted": version.is_tombstone(),
                    "writer": version.writer().to_string(),
                    "timestamp": timestamp,
                })
            })
            .collect();
        Ok(Value::Array(out).to_string())
    }

    /// Calls `callback(json)` with the query's result now and after every
    /// committed change that changes it.
    #[napi(catch_unwind)]
    pub fn watch(
        &self,
        query_json: String,
        function: Function<'_, String, ()>,
    ) -> Result<Subscription> {
        let query = parse_query(&query_json)?;
        let callback = callback(function)?;
        let db = self.db.clone();
        let active = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_active = active.clone();
        let mut events = db.subscribe();
        napi::bindgen_prelude::spawn(async move {
            let mut last: Option<Vec<(String, Document)>> = None;
            loop {
                if !still_active.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(result) = db.query(&query).await else {
                    return;
                };
                if last.as_ref() != Some(&result) {
                    callback.call(
                        records_json(result.iter().map(|(id, d)| (id.as_str(), d))),
                        ThreadsafeFunctionCallMode::NonBlocking,
                    );
                    last = Some(result);
                }
                if !pluresdb::next_change_under(&mut events, &query.prefix).await {
                    return;
                }
            }
        });
        Ok(Subscription { active })
    }

    /// Calls `listener(json)` with `{ kind, id }` after every change.
    #[napi(catch_unwind)]
    pub fn subscribe(&self, function: Function<'_, String, ()>) -> Result<Subscription> {
        let callback = callback(function)?;
        let active = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_active = active.clone();
        let mut events = self.db.subscribe();
        napi::bindgen_prelude::spawn(async move {
            while let Some(event) = events.next().await {
                if !still_active.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let (kind, id) = event.kind_and_id();
                callback.call(
                    json!({ "kind": kind, "id": id }).to_string(),
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
            }
        });
        Ok(Subscription { active })
    }

    /// This database's invite string.
    #[napi(catch_unwind)]
    pub async fn create_invite(&self) -> Result<String> {
        self.db.create_invite().await.map_err(|e| js_error(&e))
    }

    /// Syncs through a relay (`ws://`/`wss://` URL), replacing any running
    /// sync.
    #[napi(catch_unwind)]
    pub fn sync_relay(&self, url: String) -> Result<()> {
        self.start_relay_sync(url)
    }

    /// Syncs peer to peer over Hyperswarm with the native transport:
    /// `{ bootstrap?: ['host:port'], bind?: 'host:port' }` as JSON; the
    /// public HyperDHT bootstrap nodes when `bootstrap` is absent.
    #[napi(catch_unwind)]
    pub fn sync_hyperswarm(&self, options_json: String) -> Result<()> {
        let options: Value = serde_json::from_str(&options_json)
            .map_err(|e| invalid(format!("hyperswarm options: {e}")))?;
        let mut bootstrap = address_list(option(&options, "bootstrap"), "bootstrap")?;
        if bootstrap.is_empty() {
            bootstrap = pluresdb::transport::hyperswarm::PUBLIC_BOOTSTRAP.to_vec();
        }
        let bind = match string_option(&options, "bind")? {
            None => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            Some(text) => text
                .parse()
                .map_err(|_| invalid("`bind` must be an IPv4 `host:port`"))?,
        };
        let connector = pluresdb::transport::HyperswarmConnector::new(bind, bootstrap);
        let handle = napi::bindgen_prelude::within_runtime_if_available(|| self.db.sync(connector))
            .map_err(|e| js_error(&e))?;
        *self.sync.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops syncing.
    #[napi(catch_unwind)]
    pub fn stop_sync(&self) {
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// `[cached bytes, records whose document is in the file only]`:
    /// how much document text the cache holds (`cacheBytes`).
    #[napi(catch_unwind)]
    pub fn cache_status(&self) -> napi::Result<Vec<f64>> {
        let stats = self.db.stats().map_err(|e| js_error(&e))?;
        Ok(vec![
            stats.cached_bytes as f64,
            stats.records_in_storage_only as f64,
        ])
    }

    /// The sync status as JSON (as the WebAssembly build reports it).
    #[napi(catch_unwind)]
    pub fn sync_status(&self) -> String {
        // A file on disk is not evicted; memory is gone with the process.
        let eviction_risk = if self.path.is_some() { "low" } else { "high" };
        let status = self
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|handle| handle.status());
        match status {
            None => json!({
                "state": "stopped", "peers": 0, "pending": 0, "rejected": 0,
                "lastError": null, "lastReceivedAt": null, "transport": null,
                "evictionRisk": eviction_risk,
            }),
            Some(status) => json!({
                "state": status.state.as_str(),
                "peers": status.peers,
                "pending": status.pending,
                "rejected": status.rejected,
                "lastError": status.last_error,
                "lastReceivedAt": status.last_received_ms,
                "transport": status.transport,
                "evictionRisk": eviction_risk,
            }),
        }
        .to_string()
    }

    /// Waits for pending writes and closes the database.
    #[napi(catch_unwind)]
    pub async fn close(&self) -> Result<()> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.db.close().await.map_err(|e| js_error(&e))
    }

    /// Closes the database and deletes its file (and SQLite's `-wal` and
    /// `-shm` files beside it).
    #[napi(catch_unwind)]
    pub async fn destroy(&self) -> Result<()> {
        self.close().await?;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let sibling = |suffix: &str| {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            PathBuf::from(file)
        };
        // Writer slots' lock files are numbered from 0 without gaps.
        let locks = (0u32..)
            .map(|n| sibling(&format!(".slot-{n}.lock")))
            .take_while(|lock| lock.exists());
        let files: Vec<PathBuf> = ["", "-wal", "-shm"]
            .map(sibling)
            .into_iter()
            .chain(locks)
            .collect();
        for file in files {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(storage_error(format!(
                        "cannot delete {}: {e}",
                        file.display()
                    )))
                }
            }
        }
        Ok(())
    }
}

type ParsedSlice = futures::channel::oneshot::Receiver<Result<Vec<EmbeddedEntry>>>;

/// A `putMany` arriving in slices (see [`NativeDatabase::put_many_begin`]).
#[napi]
pub struct PutManyBatch {
    db: Database<SqliteStorage>,
    slices: Mutex<Vec<ParsedSlice>>,
}

#[napi]
impl PutManyBatch {
    /// Adds the next slice (JSON text and vectors, as `putMany` takes
    /// them); it is parsed in the background.
    #[napi(catch_unwind)]
    pub fn add(&self, entries_json: String, vectors: Option<Vec<Option<Float32Array>>>) {
        let vectors = copy_vectors(vectors);
        let (parsed, parsing) = futures::channel::oneshot::channel();
        napi::bindgen_prelude::spawn(async move {
            // The receiver is gone only when the batch was dropped.
            let _ = parsed.send(parse_entries(&entries_json, vectors));
        });
        self.slices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(parsing);
    }

    /// Stores every slice added, in one transaction (all or nothing).
    #[napi(catch_unwind)]
    pub fn commit<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let slices = std::mem::take(&mut *self.slices.lock().unwrap_or_else(|e| e.into_inner()));
        let db = self.db.clone();
        env.spawn_future(async move {
            let mut entries = Vec::new();
            for slice in slices {
                let parsed = slice
                    .await
                    .map_err(|_| js_error(&DbError::Internal("a slice was not parsed".into())))??;
                entries.extend(parsed);
            }
            db.put_many_with_embeddings(entries)
                .await
                .map_err(|e| js_error(&e))
        })
    }
}

fn copy_vectors(vectors: Option<Vec<Option<Float32Array>>>) -> Vec<Option<Vec<f32>>> {
    vectors
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.map(|v| v.to_vec()))
        .collect()
}

/// `[[id, data], ...]` with the vectors beside it, as database entries.
fn parse_entries(entries_json: &str, vectors: Vec<Option<Vec<f32>>>) -> Result<Vec<EmbeddedEntry>> {
    let pairs: Vec<(String, &serde_json::value::RawValue)> =
        serde_json::from_str(entries_json).map_err(|e| invalid(format!("putMany entries: {e}")))?;
    let mut vectors = vectors.into_iter();
    pairs
        .into_iter()
        .map(|(id, data)| {
            let vector = vectors.next().flatten();
            let document = Document::from_raw_json(data).map_err(|e| js_error(&e.into()))?;
            Ok((id, document, vector.map(Into::into)))
        })
        .collect()
}

/// The option `key`: an array of field names (empty when absent).
fn field_names(options: &Value, key: &str) -> Result<Vec<String>> {
    let error = || invalid(format!("option `{key}` must be an array of field names"));
    match option(options, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(fields)) => fields
            .iter()
            .map(|field| field.as_str().map(str::to_owned).ok_or_else(error))
            .collect(),
        Some(_) => Err(error()),
    }
}

fn parse_query(query_json: &str) -> Result<Query> {
    let value: Value =
        serde_json::from_str(query_json).map_err(|e| invalid(format!("invalid query: {e}")))?;
    Query::from_json(&value).map_err(|e| js_error(&e.into()))
}
