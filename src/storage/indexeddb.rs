//! IndexedDB storage (wasm32): works in a Window, a dedicated Worker and a
//! ServiceWorker, through the global scope's `indexedDB`.
//!
//! Layout: one IndexedDB database `pluresdb/<name>` with object stores
//! `records` (key: record id, value: the record encoding as a `Uint8Array`)
//! and `meta` (key: string, value: `Uint8Array`). Storing encoded bytes keeps
//! structured-clone cost flat, whatever the documents hold.
//!
//! Written on `web-sys` with a few promise adapters (`indexeddb.js`) rather
//! than `rexie`/`idb`: a group commit issues thousands of `put`s and waits for
//! the transaction's `complete` event once, without a listener per request,
//! and typed errors need the exact `DOMException` names (quota, blocked
//! upgrade, lost connection), which those wrappers fold away.
//!
//! Several tabs: each instance takes an actor slot with the Web Locks API and
//! announces committed batches on a `BroadcastChannel` named like the
//! database; see [`Storage::announce`].

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::mpsc;
use js_sys::{Array, Function, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DomException, IdbDatabase, IdbObjectStore};

use super::chunk::{
    decode_chunk, encode_chunk, encode_entries, ChunkEntry, LiveEntries, LoadedChunk,
};
use super::{
    merge_meta_rows, merge_record_rows, CommitBatch, CommitReceipt, LoadedRecords, LoadedState,
    SlotLease, Storage, StoredEntry, MERGEABLE_META,
};
use crate::error::StorageError;

#[wasm_bindgen(module = "/src/storage/indexeddb.js")]
extern "C" {
    #[wasm_bindgen(js_name = hasIndexedDb)]
    fn has_indexed_db() -> bool;
    #[wasm_bindgen(js_name = openDatabase)]
    fn open_database_js(
        name: &str,
        version: u32,
        upgrade: &Function,
        blocked_timeout_ms: u32,
    ) -> js_sys::Promise;
    #[wasm_bindgen(js_name = deleteDatabase)]
    fn delete_database_js(name: &str) -> js_sys::Promise;
    #[wasm_bindgen(js_name = requestPromise)]
    fn request_promise(request: &web_sys::IdbRequest) -> js_sys::Promise;
    #[wasm_bindgen(js_name = transactionPromise)]
    fn transaction_promise(transaction: &web_sys::IdbTransaction) -> js_sys::Promise;
    #[wasm_bindgen(js_name = beginOptimisticCommit, catch)]
    fn begin_optimistic_commit(
        database: &IdbDatabase,
        names: &Array,
        relaxed: bool,
        key: &JsValue,
        chunk: &Uint8Array,
    ) -> Result<Array, JsValue>;
    #[wasm_bindgen(js_name = beginWrite, catch)]
    fn begin_write(
        database: &IdbDatabase,
        names: &Array,
        relaxed: bool,
    ) -> Result<web_sys::IdbTransaction, JsValue>;
    #[wasm_bindgen(js_name = storageHealth)]
    fn storage_health(request_persist: bool) -> js_sys::Promise;
    #[wasm_bindgen(js_name = readStores)]
    fn read_stores(database: &IdbDatabase, names: &Array, counted: &Array) -> js_sys::Promise;
    #[wasm_bindgen(js_name = readKeys)]
    fn read_keys(database: &IdbDatabase, names: &Array) -> js_sys::Promise;
    #[wasm_bindgen(js_name = createIdLists)]
    fn create_id_lists(database: &IdbDatabase, name: &str);
    #[wasm_bindgen(js_name = putIdList, catch)]
    fn put_id_list(store: &IdbObjectStore, key: &JsValue, joined: &str) -> Result<(), JsValue>;
    #[wasm_bindgen(js_name = readChunksHolding)]
    fn read_chunks_holding(
        database: &IdbDatabase,
        records: &str,
        id_lists: &str,
        joined: &str,
        only_if_listed: bool,
    ) -> js_sys::Promise;
    #[wasm_bindgen(js_name = readListedFrom)]
    fn read_listed_from(
        database: &IdbDatabase,
        records: &str,
        id_lists: &str,
        from: &str,
        after: bool,
        prefix: &str,
        count: u32,
    ) -> js_sys::Promise;
    #[wasm_bindgen(js_name = readValues)]
    fn read_values(database: &IdbDatabase, store: &str, keys: &Array) -> js_sys::Promise;
    #[wasm_bindgen(js_name = acquireSlotLock)]
    fn acquire_slot_lock(prefix: &str) -> js_sys::Promise;
    #[wasm_bindgen(js_name = joinChannel)]
    fn join_channel(name: &str) -> JsValue;
    #[wasm_bindgen(js_name = listenChannel)]
    fn listen_channel(peer: &JsValue, on_message: &Function);
    #[wasm_bindgen(js_name = announceSoon)]
    fn announce_soon(peer: &JsValue, message: &Uint8Array);
    #[wasm_bindgen(js_name = closeChannel)]
    fn close_channel(peer: &JsValue);
}

/// The IndexedDB schema version this build creates (1: records and meta;
/// 2: adds segments; 3: the generation row also carries the mergeable
/// metadata, so older builds, which expect 8 bytes there, refuse to open
/// it with `FormatTooNew` instead of reading it as corrupt; 4: chunks carry
/// the mergeable metadata and the newest chunk's key is the generation, no
/// generation row is written, and builds that would read one refuse; 5:
/// adds the id lists, which older builds would not keep up to date).
const SCHEMA_VERSION: u32 = 5;
const RECORDS: &str = "records";
const META: &str = "meta";
const SEGMENTS: &str = "segments";
/// The id lists: under each chunk's key, the ids its entries name, with a
/// multiEntry index `id` over them (see `readChunksHolding`).
const ID_LISTS: &str = "ids";
/// Chunks are split into parts of about this many bytes, so that reading
/// one record back reads one small value.
const PART_BYTES: usize = 64 * 1024;
/// A database keeps id lists (so that its documents can be left in
/// storage and read back by id) once its records store holds this many
/// bytes. Below, every document stays in memory, and commits skip the
/// lists: in an awaited put, the list's write and index entries cost about
/// a fifth of the transaction.
const LIST_IDS_FROM_BYTES: usize = 8 * 1024 * 1024;
const GENERATION_KEY: &str = "generation";
/// How long an upgrade waits for other connections to close.
const BLOCKED_TIMEOUT_MS: u32 = 3_000;

/// Turns a DOM exception (or any thrown JS value) into a [`StorageError`].
fn storage_error(context: &str, value: JsValue) -> StorageError {
    if let Some(exception) = value.dyn_ref::<DomException>() {
        let message = format!("{context}: {}", exception.message());
        return match exception.name().as_str() {
            "QuotaExceededError" => StorageError::QuotaExceeded(message),
            "UpgradeBlockedError" => StorageError::UpgradeBlocked,
            "InvalidStateError" | "TransactionInactiveError" | "UnknownError" => {
                StorageError::ConnectionLost(message)
            }
            name => StorageError::Backend(format!("{message} ({name})")),
        };
    }
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return StorageError::Backend(format!("{context}: {}", String::from(error.message())));
    }
    StorageError::Backend(format!("{context}: {value:?}"))
}

async fn await_promise(context: &str, promise: js_sys::Promise) -> Result<JsValue, StorageError> {
    JsFuture::from(promise)
        .await
        .map_err(|e| storage_error(context, e))
}

async fn request(
    context: &str,
    request: Result<web_sys::IdbRequest, JsValue>,
) -> Result<JsValue, StorageError> {
    let request = request.map_err(|e| storage_error(context, e))?;
    await_promise(context, request_promise(&request)).await
}

fn bytes_of(value: &JsValue) -> Option<Vec<u8>> {
    value.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec)
}

struct Connection {
    database: IdbDatabase,
    /// Set by the `close` / `versionchange` handlers: the next transaction
    /// reopens instead of failing.
    lost: Rc<RefCell<bool>>,
    _on_version_change: Closure<dyn FnMut()>,
    _on_close: Closure<dyn FnMut()>,
}

/// The channel shared with other instances of the database (see
/// `joinChannel` in `indexeddb.js`), joined when the storage opens, and
/// the message handler once the database listens (kept alive with it).
struct Channel {
    peer: JsValue,
    on_message: Option<Closure<dyn FnMut(Uint8Array)>>,
}

/// What the browser says of the origin's storage
/// (`navigator.storage`); `None` where the scope cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StorageHealth {
    /// The origin's storage is persistent (not evicted under storage
    /// pressure without the user's consent).
    pub persisted: Option<bool>,
    /// Persistence was asked for (at open, in a page).
    pub persist_requested: bool,
    /// Bytes the origin uses.
    pub usage: Option<f64>,
    /// Bytes the origin may use.
    pub quota: Option<f64>,
}

impl StorageHealth {
    /// Asks the browser (and, when `request_persist`, asks for persistence
    /// where the scope may).
    pub async fn query(request_persist: bool) -> Self {
        let Ok(value) = JsFuture::from(storage_health(request_persist)).await else {
            return Self::default();
        };
        let field =
            |name: &str| js_sys::Reflect::get(&value, &name.into()).unwrap_or(JsValue::NULL);
        Self {
            persisted: field("persisted").as_bool(),
            persist_requested: field("requested").as_bool().unwrap_or(false),
            usage: field("usage").as_f64(),
            quota: field("quota").as_f64(),
        }
    }

    /// `"low"` (persistent, room left), `"high"` (best-effort storage the
    /// browser may evict under pressure, or over 90 % of the quota used)
    /// or `"unknown"`.
    pub fn eviction_risk(&self) -> &'static str {
        let nearly_full =
            matches!((self.usage, self.quota), (Some(u), Some(q)) if q > 0.0 && u / q > 0.9);
        match self.persisted {
            _ if nearly_full => "high",
            Some(true) => "low",
            Some(false) => "high",
            None => "unknown",
        }
    }
}

/// How long a commit waits before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdbDurability {
    /// `durability: 'strict'` (default): a commit resolves once the
    /// browser flushed it to disk, so it survives the browser, the tab's
    /// process or the machine dying right after.
    #[default]
    Strict,
    /// `durability: 'relaxed'` (IndexedDB's own default in Chromium): a
    /// commit resolves once the browser has it, before the flush. If the
    /// browser process or the machine dies within a moment after, the
    /// newest acknowledged commits can be lost (each whole, never in part,
    /// and never one without those before it); closing or crashing a tab
    /// alone loses nothing.
    Relaxed,
}

/// Ids in order with their stored rows, from [`EarlyReader::read_listed`].
pub struct ListedRows {
    /// Each id with its row (`None`: removed).
    pub rows: Vec<(String, Option<Vec<u8>>)>,
    /// Storage holds further ids under the prefix.
    pub more: bool,
}

/// Reads records by id straight from IndexedDB, with nothing loaded: what
/// a database opened to load in the background answers `get` with until
/// its load completes. It holds the connection the storage opened.
pub struct EarlyReader {
    database: IdbDatabase,
}

impl EarlyReader {
    /// The stored row of `id` (its rows merged, as loading merges them),
    /// `Some(None)` when storage holds none, read in one read-only
    /// transaction; `None` when this database cannot be read by id in that
    /// transaction (not every value of the records store has its id list,
    /// or there is none): only its load tells then.
    pub async fn read_row(&self, id: &str) -> Result<Option<Option<Vec<u8>>>, StorageError> {
        let joined = id_list(std::iter::once(id));
        let found = await_promise(
            "reading a record before the load completes",
            read_chunks_holding(&self.database, RECORDS, ID_LISTS, &joined, true),
        )
        .await?;
        if found.is_null() {
            return Ok(None);
        }
        let pair: Array = found.unchecked_into();
        let ids = [id.to_owned()];
        let mut rows = live_rows_of(
            &ids,
            StoredValues::new(pair.get(0).unchecked_into(), pair.get(1).unchecked_into()),
            true,
        )?;
        Ok(Some(rows.pop().map(|(_, row)| row)))
    }

    /// The first `count` ids in order from `from` (after it when `after`)
    /// that start with `prefix`, each with its stored row (`None`: the id
    /// was removed), and whether storage holds further ids under the
    /// prefix; read in one read-only transaction. `None` when the database
    /// cannot be read by id (see [`read_row`](Self::read_row)).
    pub async fn read_listed(
        &self,
        from: &str,
        after: bool,
        prefix: &str,
        count: u32,
    ) -> Result<Option<ListedRows>, StorageError> {
        let found = await_promise(
            "listing records before the load completes",
            read_listed_from(
                &self.database,
                RECORDS,
                ID_LISTS,
                from,
                after,
                prefix,
                count,
            ),
        )
        .await?;
        if found.is_null() {
            return Ok(None);
        }
        let found: Array = found.unchecked_into();
        let ids: Vec<String> = Array::from(&found.get(0))
            .iter()
            .filter_map(|id| id.as_string())
            .collect();
        let rows = live_rows_of(
            &ids,
            StoredValues::new(found.get(1).unchecked_into(), found.get(2).unchecked_into()),
            true,
        )?;
        let mut rows: std::collections::HashMap<String, Vec<u8>> = rows.into_iter().collect();
        Ok(Some(ListedRows {
            rows: ids
                .into_iter()
                .map(|id| {
                    let row = rows.remove(&id);
                    (id, row)
                })
                .collect(),
            more: found.get(3).is_truthy(),
        }))
    }

    /// Closes the connection (the storage's too: they are one).
    pub fn close(&self) {
        self.database.close();
    }
}

/// IndexedDB storage for one named database.
pub struct IndexedDbStorage {
    name: String,
    durability: IdbDurability,
    /// Chunks (commits and compaction outputs: generations, whatever their
    /// parts) in the records store, as far as this instance knows.
    chunks: std::cell::Cell<u32>,
    /// True when records can be read back by id: at load, the database
    /// kept id lists and every value of the records store had its own.
    reads_back: std::cell::Cell<bool>,
    /// True while every value of the records store has its id list, as far
    /// as this instance knows.
    all_listed: std::cell::Cell<bool>,
    /// Whether commits and compactions write id lists: once the database
    /// holds [`LIST_IDS_FROM_BYTES`] (a smaller one keeps every document in
    /// memory, and its writes skip the cost of the lists), or once any
    /// instance wrote one. Never turned off.
    listing: std::cell::Cell<bool>,
    /// About how many bytes the records store holds (as loaded, plus what
    /// this instance appended since).
    stored_bytes: std::cell::Cell<usize>,
    /// [`LIST_IDS_FROM_BYTES`], or what a test set.
    list_from_bytes: std::cell::Cell<usize>,
    /// Chunks this instance appended since it last compacted, and the
    /// generation of the first: once there are enough, every chunk from
    /// that one on (a suffix: other tabs' chunks in between included) is
    /// folded into one.
    appended: std::cell::Cell<u32>,
    /// The record bytes of those chunks.
    appended_bytes: std::cell::Cell<usize>,
    first_appended: std::cell::Cell<Option<u64>>,
    /// The generation this instance last loaded, committed or compacted to:
    /// what its database expects the next commit to find.
    last_generation: std::cell::Cell<u64>,
    /// The generation of a head row written by schema 3 or older, as last
    /// read (0 when there is none): the stored generation is the greater
    /// of it and the newest chunk's.
    legacy_generation: std::cell::Cell<u64>,
    /// That head's mergeable metadata (and schema 2's rows of their own),
    /// as loaded: never written since, only folded in and removed by a
    /// full compaction.
    legacy_head: RefCell<Head>,
    /// The keys of the records store's values as loaded: a row's hint
    /// ([`StoredRow::hint`](crate::storage::StoredRow::hint)) is its value's
    /// index here. Kept as read; a key compaction removed since reads as
    /// nothing, which only sends that read the long way.
    loaded_keys: RefCell<Option<Array>>,
    connection: RefCell<Option<Connection>>,
    channel: RefCell<Option<Channel>>,
}

impl IndexedDbStorage {
    /// True when the global scope has `indexedDB` (browsers and workers, not
    /// plain Node).
    pub fn is_available() -> bool {
        has_indexed_db()
    }

    /// Runs the read `start` begins on the connection (`what` names it in
    /// errors); when the connection was closed under it (another tab
    /// upgrading, the browser reclaiming it), reopens and reads once more.
    async fn read_reconnecting(
        &self,
        what: &str,
        start: impl Fn(&IdbDatabase) -> js_sys::Promise,
    ) -> Result<JsValue, StorageError> {
        let read = || async {
            let database = self.database().await?;
            await_promise(what, start(&database)).await
        };
        match read().await {
            Err(StorageError::ConnectionLost(_)) => {
                self.reconnect().await?;
                read().await
            }
            other => other,
        }
    }

    /// A reader of this database's records by id that works before its
    /// load completes (see [`EarlyReader`]); `None` without a connection.
    pub fn early_reader(&self) -> Option<EarlyReader> {
        let connection = self.connection.borrow();
        let connection = connection.as_ref()?;
        Some(EarlyReader {
            database: connection.database.clone(),
        })
    }

    fn database_name(name: &str) -> String {
        format!("pluresdb/{name}")
    }

    /// Opens (creating or upgrading) the IndexedDB database for `name`.
    pub async fn open(name: &str) -> Result<Self, StorageError> {
        Self::open_with(name, IdbDurability::Strict).await
    }

    /// Opens with the given durability.
    pub async fn open_with(name: &str, durability: IdbDurability) -> Result<Self, StorageError> {
        if !has_indexed_db() {
            return Err(StorageError::Backend(
                "IndexedDB is not available in this environment; use memory storage".into(),
            ));
        }
        let storage = Self {
            name: name.to_owned(),
            durability,
            chunks: std::cell::Cell::new(0),
            reads_back: std::cell::Cell::new(false),
            all_listed: std::cell::Cell::new(true),
            listing: std::cell::Cell::new(false),
            stored_bytes: std::cell::Cell::new(0),
            list_from_bytes: std::cell::Cell::new(LIST_IDS_FROM_BYTES),
            appended: std::cell::Cell::new(0),
            appended_bytes: std::cell::Cell::new(0),
            first_appended: std::cell::Cell::new(None),
            last_generation: std::cell::Cell::new(0),
            legacy_generation: std::cell::Cell::new(0),
            legacy_head: RefCell::new(Vec::new()),
            loaded_keys: RefCell::new(None),
            connection: RefCell::new(None),
            channel: RefCell::new(None),
        };
        storage.reconnect().await?;
        // Joined before anything is loaded: what other instances post from
        // now on is heard (see `announcements`).
        let peer = join_channel(&Self::database_name(name));
        if !peer.is_null() {
            *storage.channel.borrow_mut() = Some(Channel {
                peer,
                on_message: None,
            });
        }
        Ok(storage)
    }

    /// Deletes the IndexedDB database for `name` and everything in it.
    pub async fn destroy(name: &str) -> Result<(), StorageError> {
        await_promise(
            "deleting the database",
            delete_database_js(&Self::database_name(name)),
        )
        .await
        .map(|_| ())
    }

    /// Closes the IndexedDB connection behind this storage's back, as the
    /// browser may do: the next transaction fails, and the storage must
    /// reopen and retry. For tests.
    #[doc(hidden)]
    pub fn simulate_lost_connection(&self) {
        if let Some(connection) = self.connection.borrow().as_ref() {
            connection.database.close();
        }
    }

    /// Makes this instance keep id lists from `bytes` of records on instead
    /// of [`LIST_IDS_FROM_BYTES`] (0: always), before it loads. For tests.
    #[doc(hidden)]
    pub fn list_ids_from_bytes(&self, bytes: usize) {
        self.list_from_bytes.set(bytes);
    }

    /// Starts keeping id lists when this instance learns that the database
    /// reached the size for them, or that another instance keeps them.
    fn start_listing_if(&self, other_instance_lists: bool) {
        if !self.listing.get()
            && (other_instance_lists || self.stored_bytes.get() >= self.list_from_bytes.get())
        {
            self.listing.set(true);
        }
    }

    /// Closes the connection (later commits reopen it).
    pub fn close(&self) {
        if let Some(connection) = self.connection.borrow_mut().take() {
            connection.database.close();
        }
        if let Some(channel) = self.channel.borrow_mut().take() {
            close_channel(&channel.peer);
        }
    }

    async fn reconnect(&self) -> Result<(), StorageError> {
        let upgrade = Closure::once_into_js(
            move |database: IdbDatabase, old_version: f64, _transaction: JsValue| {
                upgrade_schema(&database, old_version as u32)
            },
        );
        let value = await_promise(
            "opening IndexedDB",
            open_database_js(
                &Self::database_name(&self.name),
                SCHEMA_VERSION,
                upgrade.unchecked_ref(),
                BLOCKED_TIMEOUT_MS,
            ),
        )
        .await
        .map_err(|error| match error {
            // (`storage_error` ends the message with the exception's name.)
            StorageError::Backend(message) if message.ends_with("(VersionError)") => {
                StorageError::FormatTooNew {
                    found: SCHEMA_VERSION + 1,
                    supported: SCHEMA_VERSION,
                }
            }
            other => other,
        })?;
        let database: IdbDatabase = value.unchecked_into();
        let names = database.object_store_names();
        if let Some(missing) = [RECORDS, META, SEGMENTS, ID_LISTS]
            .into_iter()
            .find(|name| !names.contains(name))
        {
            database.close();
            return Err(StorageError::Corrupt {
                store: missing.into(),
                key: Self::database_name(&self.name),
                reason: "the IndexedDB database lacks this object store; it was not created by \
                         PluresDB (delete it or open another name)"
                    .into(),
            });
        }
        let lost = Rc::new(RefCell::new(false));
        // Another tab wants a newer schema: close so it is not blocked; this
        // instance reopens (and then fails with a clear error) on next use.
        let on_version_change = {
            let lost = lost.clone();
            let database = database.clone();
            Closure::<dyn FnMut()>::new(move || {
                *lost.borrow_mut() = true;
                database.close();
            })
        };
        let on_close = {
            let lost = lost.clone();
            Closure::<dyn FnMut()>::new(move || *lost.borrow_mut() = true)
        };
        database.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        database.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.connection.borrow_mut() = Some(Connection {
            database,
            lost,
            _on_version_change: on_version_change,
            _on_close: on_close,
        });
        Ok(())
    }

    async fn database(&self) -> Result<IdbDatabase, StorageError> {
        let usable = self
            .connection
            .borrow()
            .as_ref()
            .map(|c| !*c.lost.borrow())
            .unwrap_or(false);
        if !usable {
            self.reconnect().await?;
        }
        self.connection
            .borrow()
            .as_ref()
            .map(|c| c.database.clone())
            .ok_or_else(|| StorageError::ConnectionLost("no IndexedDB connection".into()))
    }

    /// Starts a read-write transaction with this storage's durability
    /// (see `beginWrite`) over records and meta, and segments when
    /// `segments` (a narrower scope is a cheaper transaction).
    async fn begin_write(&self, segments: bool) -> Result<WriteTransaction, StorageError> {
        self.begin_write_with(segments, self.durability).await
    }

    async fn begin_write_with(
        &self,
        segments: bool,
        durability: IdbDurability,
    ) -> Result<WriteTransaction, StorageError> {
        let database = self.database().await?;
        let transaction = begin_write(
            &database,
            &write_scope(segments),
            durability == IdbDurability::Relaxed,
        )
        .map_err(|e| storage_error("starting a transaction", e))?;
        let done = JsFuture::from(transaction_promise(&transaction));
        Ok(WriteTransaction { transaction, done })
    }

    /// One commit. First optimistically: every write is queued before the
    /// stored generation is read back, on the assumption that no other tab
    /// committed since this one last did (one round trip fewer); when one
    /// did, that transaction is aborted (nothing of it lands) and the
    /// commit is made again the careful way, merging what the other tab
    /// wrote.
    async fn commit_once(&self, batch: &CommitBatch) -> Result<CommitReceipt, StorageError> {
        if let Some(receipt) = self.commit_optimistically(batch).await? {
            self.note_chunk_written(batch, receipt.generation);
            return Ok(receipt);
        }
        let segments = !batch.segments.is_empty() || !batch.removed_segments.is_empty();
        let transaction = self.begin_write(segments).await?;
        let result = self.write(&transaction, batch).await;
        let receipt = transaction.finish(result).await?;
        self.note_chunk_written(batch, receipt.generation);
        Ok(receipt)
    }

    /// Commits as if the stored generation were `batch.expected_generation`
    /// and checks that in the same transaction (`beginOptimisticCommit`):
    /// two requests, looking for a chunk newer than the expected generation
    /// and writing this commit's chunk. `None` when another tab committed in
    /// between: the transaction was aborted and nothing of it landed.
    async fn commit_optimistically(
        &self,
        batch: &CommitBatch,
    ) -> Result<Option<CommitReceipt>, StorageError> {
        let segments = !batch.segments.is_empty() || !batch.removed_segments.is_empty();
        let database = self.database().await?;
        let generation = batch.expected_generation + 1;
        let parts = encode_commit_parts(batch, self.listing.get());
        let started = begin_optimistic_commit(
            &database,
            &write_scope(segments),
            self.durability == IdbDurability::Relaxed,
            &chunk_key(generation, 0),
            &Uint8Array::from(parts[0].0.as_slice()),
        )
        .map_err(|e| storage_error("writing records", e))?;
        let transaction: web_sys::IdbTransaction = started.get(0).unchecked_into();
        let outcome = JsFuture::from(js_sys::Promise::from(started.get(1)));
        let queued = queue_parts(&transaction, &parts, generation, 1, self.listing.get())
            .and_then(|()| queue_side_writes(&transaction, batch));
        drop(parts);
        if let Err(error) = queued {
            let _ = transaction.abort();
            let _ = outcome.await;
            return Err(error);
        }
        let committed = outcome
            .await
            .map_err(|e| storage_error("committing the transaction", e))?;
        if committed.as_bool() != Some(true) {
            return Ok(None);
        }
        Ok(Some(CommitReceipt {
            generation,
            merged_records: Vec::new(),
            foreign_records: Vec::new(),
            foreign_meta: Vec::new(),
        }))
    }

    fn note_chunk_written(&self, batch: &CommitBatch, generation: u64) {
        self.chunks.set(self.chunks.get() + 1);
        let bytes: usize = batch
            .records
            .iter()
            .map(|(id, row)| id.len() + row.len())
            .sum();
        if !self.listing.get() {
            self.all_listed.set(false);
        }
        self.stored_bytes
            .set(self.stored_bytes.get().saturating_add(bytes));
        self.start_listing_if(false);
        if bytes >= SMALL_CHUNK_BYTES {
            // A large chunk is not worth folding: the suffix to fold starts
            // after it.
            self.appended.set(0);
            self.appended_bytes.set(0);
            self.first_appended.set(None);
            return;
        }
        self.appended.set(self.appended.get() + 1);
        self.appended_bytes.set(self.appended_bytes.get() + bytes);
        if self.first_appended.get().is_none() {
            self.first_appended.set(Some(generation));
        }
    }

    /// Queues the chunk (rows, removals and mergeable metadata: a commit is
    /// one chunk, in parts of about [`PART_BYTES`]), its id lists and the
    /// other writes of the batch.
    fn queue_writes(
        &self,
        transaction: &WriteTransaction,
        batch: &CommitBatch,
        generation: u64,
    ) -> Result<(), StorageError> {
        // Every commit is one appended chunk: one value however many rows,
        // and nothing another tab wrote is ever overwritten. Its key is the
        // stored generation: the newest chunk's tells the next commit
        // whether another tab committed in between.
        let listing = self.listing.get();
        queue_parts(
            &transaction.transaction,
            &encode_commit_parts(batch, listing),
            generation,
            0,
            listing,
        )?;
        queue_side_writes(&transaction.transaction, batch)
    }

    async fn write(
        &self,
        transaction: &WriteTransaction,
        batch: &CommitBatch,
    ) -> Result<CommitReceipt, StorageError> {
        let records = transaction.store(RECORDS)?;
        // Another tab committed since this one last did: its chunks (read
        // before this commit's exists, so it is not among them) give the
        // stored generation, and their rows, version vector and HLC are
        // merged, never overwritten.
        let (newest, parts, foreign_records, foreign_meta) =
            written_after(&records, batch.expected_generation).await?;
        if parts > 0 {
            // What the others wrote counts towards the size at which lists
            // start (each instance counts what it has seen; rows a
            // compaction wrote again count twice, which only starts the
            // lists sooner).
            let bytes: usize = foreign_records
                .iter()
                .map(|(id, row)| id.len() + row.len())
                .sum();
            self.stored_bytes
                .set(self.stored_bytes.get().saturating_add(bytes));
            // Another instance may have started keeping id lists (then this
            // commit keeps them too), or written parts without them (then
            // not every part is listed).
            let since: JsValue = chunks_from(batch.expected_generation + 1)?.into();
            let lists = transaction.store(ID_LISTS)?.count_with_key(&since);
            let lists = request("counting id lists", lists).await?;
            let lists = lists.as_f64().unwrap_or(0.0);
            self.start_listing_if(lists > 0.0);
            if lists < f64::from(parts) {
                self.all_listed.set(false);
            }
        }
        // (The expected generation is at least an old head row's: it was
        // loaded as the greater of that and the newest chunk's.)
        let generation = newest.max(batch.expected_generation) + 1;
        self.queue_writes(transaction, batch, generation)?;
        Ok(CommitReceipt {
            generation,
            merged_records: Vec::new(),
            foreign_records,
            foreign_meta,
        })
    }

    /// The list pass of upkeep alone (see `list_unlisted_parts`): whether
    /// it listed every part. For tests: upkeep runs it, and then a full
    /// compaction when it could not.
    #[doc(hidden)]
    pub async fn list_unlisted_parts_alone(&self) -> Result<bool, StorageError> {
        Ok(self.list_unlisted_parts().await?.is_some())
    }

    /// Writes the id list of every part of a chunk that has none (written
    /// before the database kept lists), without rewriting the parts: one
    /// strict transaction. It also appends an empty chunk, with its list:
    /// an instance that never saw a list would otherwise go on committing
    /// without them (its optimistic commits read nothing), while one that
    /// opens now relies on them; a newer chunk sends its next commit the
    /// careful way, which finds the lists. Returns the generation found
    /// and the one written, or `None` when a value cannot be listed in
    /// place (a row stored one per record by a format before chunks): a
    /// full compaction then rewrites everything (and nothing is written:
    /// every list is made before any is queued).
    async fn list_unlisted_parts(&self) -> Result<Option<(u64, u64)>, StorageError> {
        let transaction = self.begin_write_with(false, IdbDurability::Strict).await?;
        let result = async {
            let records = transaction.store(RECORDS)?;
            let id_lists = transaction.store(ID_LISTS)?;
            let keys: Array = request("listing chunks", records.get_all_keys())
                .await?
                .unchecked_into();
            let listed: Array = request("listing id lists", id_lists.get_all_keys())
                .await?
                .unchecked_into();
            let listed: std::collections::HashSet<_> =
                listed.iter().map(|key| part_of(&key)).collect();
            let mut unlisted = Vec::new();
            for key in keys.iter() {
                if !key.is_array() {
                    return Ok(None);
                }
                if !listed.contains(&part_of(&key)) {
                    unlisted.push(key);
                }
            }
            // Every list is made before any is written: a pass that stops
            // at a value only a full compaction can list writes none (it
            // committed the lists of the values before it, so the oldest
            // part had a list while a later one had none, and a reader that
            // takes the oldest part's list for every part's, the early
            // reads of a background load, missed that value's rows).
            let mut lists = Vec::with_capacity(unlisted.len());
            for key in unlisted {
                let value = request("reading a chunk", records.get(&key)).await?;
                let bytes = bytes_of(&value).unwrap_or_default();
                let size = bytes.len();
                let chunk = LoadedChunk::index(bytes).map_err(|e| corrupt_chunk(&key, e))?;
                // A value of many rows far beyond a part (schema 4 stored
                // a commit as one) would be read whole for each record read
                // back from it: a full compaction splits it instead.
                if size > 4 * PART_BYTES && chunk.named_ids().nth(1).is_some() {
                    return Ok(None);
                }
                lists.push((key, id_list(chunk.named_ids())));
            }
            for (key, list) in &lists {
                put_id_list(&id_lists, key, list)
                    .map_err(|e| storage_error("writing an id list", e))?;
            }
            let found = newest_generation(&keys);
            let empty = [(encode_chunk(&[], &[], &[]), String::new())];
            queue_parts(&transaction.transaction, &empty, found + 1, 0, true)?;
            Ok(Some((found, found + 1)))
        }
        .await;
        let listed = transaction.finish(result).await?;
        if listed.is_some() {
            // Every part is listed, as this transaction found them; and no
            // instance writes an unlisted one from now on.
            self.all_listed.set(true);
            self.reads_back.set(true);
            self.chunks.set(self.chunks.get() + 1);
        }
        Ok(listed)
    }

    /// Reads back from now on when another instance listed every part
    /// since this one loaded (or last looked), as a load would find them:
    /// each value with its own id list. Looked at twice: once this instance
    /// found every part listed, it keeps lists on its own parts, and looks
    /// again in a transaction that IndexedDB starts only after every commit
    /// of its own begun before (their parts may lack lists). No instance
    /// writes an unlisted part after that (see
    /// [`reads_records`](Storage::reads_records)).
    async fn learn_whether_every_part_is_listed(&self) -> Result<bool, StorageError> {
        if self.reads_back.get() {
            return Ok(true);
        }
        // Never reopens a connection: a database closed meanwhile stays
        // closed (an open connection would block other tabs' upgrades).
        if self.connection.borrow().is_none() {
            return Ok(false);
        }
        if !self.every_part_listed().await? {
            return Ok(false);
        }
        self.listing.set(true);
        if !self.every_part_listed().await? {
            // A commit of this instance without lists landed meanwhile: its
            // upkeep lists it.
            self.all_listed.set(false);
            return Ok(false);
        }
        self.all_listed.set(true);
        self.reads_back.set(true);
        Ok(true)
    }

    /// True when every value of the records store is a part with its own
    /// id list (read in one read-only transaction).
    async fn every_part_listed(&self) -> Result<bool, StorageError> {
        let names = Array::of2(&RECORDS.into(), &ID_LISTS.into());
        let pair: Array = self
            .read_reconnecting("checking the id lists", |database| {
                read_keys(database, &names)
            })
            .await?
            .unchecked_into();
        let keys: Array = pair.get(0).unchecked_into();
        let listed: Array = pair.get(1).unchecked_into();
        let listed: std::collections::HashSet<_> = listed.iter().map(|key| part_of(&key)).collect();
        Ok(keys.length() > 0
            && keys
                .iter()
                .all(|key| key.is_array() && listed.contains(&part_of(&key))))
    }

    /// Folds chunks together so loads stay fast and superseded rows are
    /// dropped: the chunks from the first this instance appended since it
    /// last compacted (a suffix of the store) once it appended enough, and
    /// everything (including rows from before chunks existed) once there
    /// are very many chunks. Decided without touching IndexedDB, so most
    /// commits open no second transaction; reads only that suffix, so the
    /// cost does not grow with the database.
    ///
    /// `committed` is the generation this instance's commit just wrote; when
    /// no other tab committed in between, the generation the compaction
    /// wrote is returned, to be the one the next commit expects (else that
    /// commit would find a "foreign" generation and take the slow path).
    async fn compact_if_needed(
        &self,
        committed: u64,
        after_chunks: u32,
        after_bytes: usize,
        fold_legacy_head: bool,
    ) -> Result<Option<u64>, StorageError> {
        let full = self.chunks.get() as usize >= FULL_COMPACTION_CHUNKS
            || (fold_legacy_head
                && (self.legacy_generation.get() > 0
                    || (self.listing.get() && !self.all_listed.get())));
        if !full && self.appended.get() < after_chunks && self.appended_bytes.get() < after_bytes {
            return Ok(None);
        }
        let since = self.first_appended.take();
        self.appended.set(0);
        self.appended_bytes.set(0);
        // Strict, like commits: a compaction deletes the chunks it folds,
        // so its output must be on disk before the deletion counts. With
        // relaxed durability the crash test once found every record gone
        // after a browser was closed and then killed (see ARCHITECTURE.md,
        // "IndexedDB: one chunk per commit"). Compaction mostly waits for
        // a pause in writes now, so the flush costs no awaited write.
        let transaction = self.begin_write_with(false, IdbDurability::Strict).await?;
        let result = self
            .compact(&transaction, if full { None } else { since })
            .await;
        // A small output is folded again with the next chunks (so rows of
        // one id written across many commits end up as one), until it is
        // large.
        let Some((small_output, folded_after, generation)) = transaction.finish(result).await?
        else {
            return Ok(None);
        };
        if full {
            // The old head row, if any, is folded in and gone.
            self.legacy_generation.set(0);
            self.legacy_head.borrow_mut().clear();
            // Everything was rewritten, with lists when listing: as with a
            // list pass, no instance writes an unlisted part from now on.
            if self.listing.get() {
                self.reads_back.set(true);
            }
            // And no place loaded is left.
            *self.loaded_keys.borrow_mut() = None;
        }
        if let Some(output) = small_output {
            self.first_appended.set(Some(output));
        }
        if folded_after != committed {
            return Ok(None);
        }
        self.last_generation.set(generation);
        Ok(Some(generation))
    }

    /// Folds the chunks from generation `since` on, or everything: `None`
    /// when there was nothing to fold, else the generation of the output
    /// when it is one small chunk, the generation found, and the one
    /// written.
    async fn compact(
        &self,
        transaction: &WriteTransaction,
        since: Option<u64>,
    ) -> Result<Option<(Option<u64>, u64, u64)>, StorageError> {
        let records = transaction.store(RECORDS)?;
        let meta = transaction.store(META)?;
        let (keys, values) = read_chunks(&records, since).await?;
        // What was read reaches the newest chunk (a suffix, or everything),
        // so the output goes above all of it (and above an old head row).
        let stored = newest_generation(&keys).max(self.legacy_generation.get());
        let generation = stored + 1;
        let full = since.is_none();
        let legacy = full && self.legacy_generation.get() > 0;
        // A full compaction that is to list everything rewrites even a
        // single value (it may be one large value without a list).
        let relist = full && self.listing.get() && !self.all_listed.get();
        if keys.length() == 0 || (keys.length() < 2 && !legacy && !relist) {
            if full && keys.length() == 0 {
                self.all_listed.set(true);
            }
            return Ok(None);
        }
        let mut entries = Vec::new();
        if full {
            // A head row of schema 3 or older is folded in and removed
            // (the output's generation is above its).
            entries.extend(
                self.legacy_head
                    .borrow()
                    .clone()
                    .into_iter()
                    .map(|(key, value)| ChunkEntry::Meta(key, value)),
            );
            // (A delete throws only in an inactive transaction, where the
            // writes below fail too.)
            for key in [GENERATION_KEY].into_iter().chain(MERGEABLE_META) {
                let _ = meta.delete(&JsValue::from_str(key));
            }
        }
        for index in 0..keys.length() {
            decode_entry(&keys.get(index), &values.get(index), &mut entries)?;
        }
        let merged = merge_entries(entries, full);
        let id_lists = transaction.store(ID_LISTS)?;
        if !self.listing.get() {
            // What is folded may hold another instance's lists.
            let lists = match since {
                Some(since) => id_lists.count_with_key(&chunks_from(since)?.into()),
                None => id_lists.count(),
            };
            let lists = request("counting id lists", lists).await?;
            self.start_listing_if(lists.as_f64().unwrap_or(0.0) > 0.0);
        }
        let listing = self.listing.get();
        // One request per store removes what was read: everything from
        // `since` on (nothing can have been added since, within this
        // transaction), or everything. A request per chunk cost about as
        // much as a commit.
        match since {
            Some(since) => {
                let range: JsValue = chunks_from(since)?.into();
                records.delete(&range).and_then(|_| id_lists.delete(&range))
            }
            None => records.clear().and_then(|_| id_lists.clear()),
        }
        .map_err(|e| storage_error("removing compacted chunks", e))?;
        queue_parts(&transaction.transaction, &merged, generation, 0, listing)?;
        let folded = generations_among(&keys);
        self.chunks
            .set(self.chunks.get().saturating_sub(folded) + 1);
        let bytes: usize = merged.iter().map(|(chunk, _)| chunk.len()).sum();
        let small = bytes < SMALL_CHUNK_BYTES;
        if full {
            // Every value now has its id list, or none has.
            self.all_listed.set(listing);
        }
        Ok(Some((small.then_some(generation), stored, generation)))
    }
}

/// The keys and values of every chunk from generation `from` on, or of
/// everything in the store (rows of older formats included) for `None`.
async fn read_chunks(
    records: &IdbObjectStore,
    from: Option<u64>,
) -> Result<(Array, Array), StorageError> {
    let (keys, values) = match from {
        None => (records.get_all_keys(), records.get_all()),
        Some(from) => {
            let range = chunks_from(from)?;
            (
                records.get_all_keys_with_key(&range),
                records.get_all_with_key(&range),
            )
        }
    };
    Ok((
        request("listing chunks", keys).await?.unchecked_into(),
        request("reading chunks", values).await?.unchecked_into(),
    ))
}

/// The newest generation among chunks written after generation `since`
/// (0 when there are none), how many parts they have, their record rows, and their mergeable
/// metadata merged (a chunk's key starts with the generation that wrote
/// it; compaction writes its output under a newer generation, so this may
/// return older rows too, never fewer).
async fn written_after(
    records: &IdbObjectStore,
    since: u64,
) -> Result<(u64, u32, Vec<(String, Vec<u8>)>, Head), StorageError> {
    let (keys, values) = read_chunks(records, Some(since + 1)).await?;
    let newest = newest_generation(&keys);
    let parts = keys.length();
    let mut rows = Vec::new();
    let mut meta = Vec::new();
    for entry in LiveEntries::new(StoredValues::new(keys, values)) {
        match entry? {
            StoredEntry::Row(row) => rows.push(row.into_parts()),
            StoredEntry::Meta(key, value) => merge_into(&mut meta, &key, &value),
        }
    }
    Ok((newest, parts, rows, meta))
}

/// Every chunk key of generation `generation` or later.
fn chunks_from(generation: u64) -> Result<web_sys::IdbKeyRange, StorageError> {
    web_sys::IdbKeyRange::lower_bound(&chunk_key(generation, 0))
        .map_err(|e| storage_error("selecting chunks", e))
}

/// A part's key `[generation, part]` as numbers to compare (by bits), to
/// match parts with their id lists.
fn part_of(key: &JsValue) -> (Option<u64>, Option<u64>) {
    let key = Array::from(key);
    let number = |at| key.get(at).as_f64().map(f64::to_bits);
    (number(0), number(1))
}

/// The generation of the newest chunk among `keys` (as IndexedDB lists
/// them, in key order: chunk keys, arrays, sort last), 0 without chunks.
fn newest_generation(keys: &Array) -> u64 {
    let last = keys.get(keys.length().saturating_sub(1));
    if !Array::is_array(&last) {
        return 0;
    }
    Array::from(&last).get(0).as_f64().unwrap_or(0.0) as u64
}

/// How many entries the records store's values hold, as their headers
/// count them (a chunk's count follows its version byte; a row of an older
/// format is one), each count capped by what its value's length can hold
/// (a corrupt header cannot make the load reserve more than the rows could
/// take): at most the rows a load hands over. Reads five bytes a value.
fn entries_counted(keys: &Array, values: &Array) -> usize {
    keys.iter()
        .zip(values.iter())
        .map(|(key, value)| {
            if key.is_string() {
                return 1;
            }
            match value.dyn_ref::<Uint8Array>() {
                Some(bytes) if bytes.length() >= 5 => {
                    let mut header = [0u8; 4];
                    bytes.subarray(1, 5).copy_to(&mut header);
                    let room = bytes.length() as usize / super::chunk::MIN_ROW_ENTRY_BYTES;
                    (u32::from_le_bytes(header) as usize).min(room)
                }
                _ => 0,
            }
        })
        .fold(0usize, usize::saturating_add)
}

/// The records store's values decoded one at a time, newest first (for
/// [`LiveEntries`]): each is copied into WebAssembly memory and decoded
/// only when the one before has been consumed, so opening a database never
/// holds its stored bytes and its decoded records at once.
struct StoredValues {
    keys: Array,
    values: Array,
    /// Values not read yet: those below this index.
    unread: u32,
    /// Whether chunks are handed over with their index as their hint.
    hinted: bool,
}

impl StoredValues {
    /// Every value of `keys`/`values` (as `getAllKeys`/`getAll` list them).
    fn new(keys: Array, values: Array) -> Self {
        Self {
            unread: keys.length(),
            keys,
            values,
            hinted: false,
        }
    }

    /// The same values, each chunk's rows hinted with its index (the
    /// values a load hands over, whose keys the storage keeps).
    fn hinted(self) -> Self {
        Self {
            hinted: true,
            ..self
        }
    }
}

/// The rows of `ids` among `values` (one per id found, in the order of
/// `ids`, each once), each id's live rows merged newest first as loading
/// merges them. A row that does not decode leaves the newer one as it is
/// (reading it back then reports the corruption), unless `strict`: then
/// it is an error, as the load would make it one for that id.
fn live_rows_of(
    ids: &[String],
    values: StoredValues,
    strict: bool,
) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
    let mut rows: std::collections::HashMap<&str, Option<Vec<u8>>> =
        ids.iter().map(|id| (id.as_str(), None)).collect();
    for entry in LiveEntries::new(values) {
        let StoredEntry::Row(row) = entry? else {
            continue;
        };
        let Some(slot) = rows.get_mut(row.id()) else {
            continue;
        };
        *slot = Some(match slot.take() {
            None => row.bytes().to_vec(),
            Some(newer) => match merge_record_rows(row.id(), row.bytes(), &newer) {
                Ok(merged) => merged,
                Err(error) if strict => return Err(error),
                Err(_) => newer,
            },
        });
    }
    Ok(ids
        .iter()
        .filter_map(|id| Some((id.clone(), rows.get_mut(id.as_str())?.take()?)))
        .collect())
}

impl Iterator for StoredValues {
    type Item = Result<LoadedChunk, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.unread == 0 {
            return None;
        }
        self.unread -= 1;
        let index = self.unread;
        let key = self.keys.get(index);
        let bytes = bytes_of(&self.values.get(index)).unwrap_or_default();
        // Release the JavaScript copy too.
        self.values.set(index, JsValue::UNDEFINED);
        let read = match key.as_string() {
            Some(id) => Ok(LoadedChunk::single_row(id, bytes)),
            None => LoadedChunk::index(bytes)
                .map(|chunk| if self.hinted { chunk.at(index) } else { chunk })
                .map_err(|e| corrupt_chunk(&key, e)),
        };
        if read.is_err() {
            // Nothing after an unreadable value is read.
            self.unread = 0;
        }
        Some(read)
    }
}

/// Appends what one value of the records store holds: a row stored one per
/// record by older formats (a string key), or every entry of a chunk.
fn decode_entry(
    key: &JsValue,
    value: &JsValue,
    entries: &mut Vec<ChunkEntry>,
) -> Result<(), StorageError> {
    let bytes = bytes_of(value).unwrap_or_default();
    match key.as_string() {
        Some(id) => entries.push(ChunkEntry::Row(id, bytes)),
        None => decode_chunk(bytes, entries).map_err(|e| corrupt_chunk(key, e))?,
    }
    Ok(())
}

/// The error for a chunk under `key` that does not decode.
fn corrupt_chunk(key: &JsValue, error: crate::error::DecodeError) -> StorageError {
    StorageError::Corrupt {
        store: RECORDS.into(),
        key: format!("chunk {key:?}"),
        reason: error.to_string(),
    }
}

/// Fold what this instance appended once it appended this many chunks.
const COMPACT_AFTER_CHUNKS: u32 = 32;
/// Chunks appended after which a commit compacts at once instead of
/// waiting for writes to pause (a long run of awaited single writes).
/// Folding every 384 instead (a fold of 384 small chunks costs about
/// 26 ms against 15 ms for 128) measured no faster over runs of 800
/// awaited puts, within the noise of the machine.
const COMPACT_AT_ONCE_AFTER_CHUNKS: u32 = 128;
/// Or once they hold this many bytes of records, so what a compaction
/// reads into memory at once stays bounded whatever the size of the
/// writes (upkeep after a pause folds at most 32 chunks of under 1 MiB).
const COMPACT_AT_ONCE_AFTER_BYTES: usize = 8 * 1024 * 1024;
/// Chunks of at least this many bytes are never folded by a partial
/// compaction.
const SMALL_CHUNK_BYTES: usize = 1024 * 1024;
/// Fold everything once this many chunks exist.
const FULL_COMPACTION_CHUNKS: usize = 256;
/// Merges entries (in commit order) into the parts of one compacted chunk,
/// each with its id list (see [`queue_parts`]): one row per id (rows of
/// one id merged as CRDT records), removals applied. A partial compaction
/// keeps its removals (they still apply to older chunks); a full one needs
/// none.
fn merge_entries(entries: Vec<ChunkEntry>, full: bool) -> Vec<(Vec<u8>, String)> {
    let mut order: Vec<String> = Vec::new();
    let mut rows: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
    let mut removed: Vec<String> = Vec::new();
    let mut meta: Head = Vec::new();
    for entry in entries {
        match entry {
            ChunkEntry::Meta(key, value) => merge_into(&mut meta, &key, &value),
            ChunkEntry::Removed(id) => {
                rows.remove(&id);
                if !full && !removed.contains(&id) {
                    removed.push(id);
                }
            }
            ChunkEntry::Row(id, bytes) => {
                let slot = rows.entry(id.clone()).or_insert_with(|| {
                    order.push(id.clone());
                    Vec::new()
                });
                match slot.last_mut() {
                    // Rows that fail to decode are kept as they are, never lost.
                    Some(previous) => match merge_record_rows(&id, previous, &bytes) {
                        Ok(merged) => *previous = merged,
                        Err(_) => slot.push(bytes),
                    },
                    None => slot.push(bytes),
                }
            }
        }
    }
    let mut parts = Vec::new();
    let part = |entries: &[ChunkEntry]| {
        let ids = entries.iter().filter_map(|entry| match entry {
            ChunkEntry::Row(id, _) | ChunkEntry::Removed(id) => Some(id.as_str()),
            ChunkEntry::Meta(..) => None,
        });
        (encode_entries(entries), id_list(ids))
    };
    let mut current: Vec<ChunkEntry> = meta
        .into_iter()
        .map(|(key, value)| ChunkEntry::Meta(key, value))
        .chain(removed.into_iter().map(ChunkEntry::Removed))
        .collect();
    let mut size = 0;
    for id in order {
        for bytes in rows.remove(&id).unwrap_or_default() {
            size += id.len() + bytes.len() + 9;
            current.push(ChunkEntry::Row(id.clone(), bytes));
            if size >= PART_BYTES {
                parts.push(part(&current));
                current.clear();
                size = 0;
            }
        }
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(part(&current));
    }
    parts
}

/// A read-write transaction and the promise of its completion.
struct WriteTransaction {
    transaction: web_sys::IdbTransaction,
    done: JsFuture,
}

impl WriteTransaction {
    fn store(&self, name: &str) -> Result<IdbObjectStore, StorageError> {
        self.transaction
            .object_store(name)
            .map_err(|e| storage_error("opening an object store", e))
    }

    /// Waits for the commit when `result` is Ok; aborts otherwise.
    async fn finish<T>(self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        match result {
            Ok(value) => {
                self.done
                    .await
                    .map_err(|e| storage_error("committing the transaction", e))?;
                Ok(value)
            }
            Err(error) => {
                let _ = self.transaction.abort();
                let _ = self.done.await;
                Err(error)
            }
        }
    }
}

/// About how many bytes `batch` writes.
fn batch_bytes(batch: &CommitBatch) -> usize {
    let rows: usize = batch
        .records
        .iter()
        .map(|(id, row)| id.len() + row.len())
        .sum();
    let meta: usize = batch
        .meta
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    let segments: usize = batch
        .segments
        .iter()
        .map(|(id, bytes)| id.len() + bytes.len())
        .sum();
    rows + meta + segments
}

/// The stores a commit writes: records and meta, and segments when
/// `segments` (a narrower scope is a cheaper transaction). Records first
/// (`beginOptimisticCommit` relies on it).
fn write_scope(segments: bool) -> Array {
    if segments {
        Array::of4(
            &RECORDS.into(),
            &META.into(),
            &ID_LISTS.into(),
            &SEGMENTS.into(),
        )
    } else {
        Array::of3(&RECORDS.into(), &META.into(), &ID_LISTS.into())
    }
}

/// The chunk a commit appends, in parts of about [`PART_BYTES`] (at least
/// one), each with its id list (see [`queue_parts`]): its rows, then its
/// removals and mergeable metadata in the last part (as one chunk would
/// hold them).
fn encode_commit_parts(batch: &CommitBatch, listing: bool) -> Vec<(Vec<u8>, String)> {
    let chunk_meta: Vec<_> = batch
        .meta
        .iter()
        .filter(|(key, _)| MERGEABLE_META.contains(&key.as_str()))
        .cloned()
        .collect();
    let ids = |rows: &[(String, Vec<u8>)], removed: &[String]| {
        if !listing {
            return String::new();
        }
        id_list(
            rows.iter()
                .map(|(id, _)| id)
                .chain(removed)
                .map(String::as_str),
        )
    };
    let mut parts = Vec::new();
    let mut rows = batch.records.as_slice();
    loop {
        let mut size = 0;
        let mut end = 0;
        while end < rows.len() && size < PART_BYTES {
            size += rows[end].0.len() + rows[end].1.len() + 9;
            end += 1;
        }
        if end == rows.len() {
            parts.push((
                encode_chunk(rows, &batch.removed_records, &chunk_meta),
                ids(rows, &batch.removed_records),
            ));
            return parts;
        }
        parts.push((encode_chunk(&rows[..end], &[], &[]), ids(&rows[..end], &[])));
        rows = &rows[end..];
    }
}

/// `ids` as the JavaScript side takes them: each followed by a newline
/// (ids hold no control characters).
fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut joined = String::new();
    for id in ids {
        joined.push_str(id);
        joined.push('\n');
    }
    joined
}

/// Queues the parts of the chunk of `generation` from part `first` on,
/// each under `[generation, part]` in the records store, and when
/// `listing`, with its id list (the ids its entries name, each followed by
/// a newline) under the same key in the id lists.
fn queue_parts(
    transaction: &web_sys::IdbTransaction,
    parts: &[(Vec<u8>, String)],
    generation: u64,
    first: usize,
    listing: bool,
) -> Result<(), StorageError> {
    let store = |name: &str| {
        transaction
            .object_store(name)
            .map_err(|e| storage_error("opening an object store", e))
    };
    let records = store(RECORDS)?;
    let id_lists = store(ID_LISTS)?;
    for (part, (chunk, ids)) in parts.iter().enumerate() {
        let key = chunk_key(generation, part as u32);
        if part >= first {
            records
                .put_with_key(&Uint8Array::from(chunk.as_slice()), &key)
                .map_err(|e| storage_error("writing records", e))?;
        }
        if listing {
            put_id_list(&id_lists, &key, ids)
                .map_err(|e| storage_error("writing an id list", e))?;
        }
    }
    Ok(())
}

/// How many generations the chunk keys among `keys` name (a chunk may be
/// stored in several parts).
fn generations_among(keys: &Array) -> u32 {
    let mut count = 0;
    let mut last = None;
    for key in keys.iter().filter(|key| key.is_array()) {
        let generation = Array::from(&key).get(0).as_f64();
        if generation != last {
            count += 1;
            last = generation;
        }
    }
    count
}

/// Queues a commit's writes besides its chunk: metadata that is not
/// mergeable, and index segments.
fn queue_side_writes(
    transaction: &web_sys::IdbTransaction,
    batch: &CommitBatch,
) -> Result<(), StorageError> {
    let store = |name: &str| {
        transaction
            .object_store(name)
            .map_err(|e| storage_error("opening an object store", e))
    };
    let mut side_meta = batch
        .meta
        .iter()
        .filter(|(key, _)| !MERGEABLE_META.contains(&key.as_str()))
        .peekable();
    if side_meta.peek().is_some() {
        let meta = store(META)?;
        for (key, value) in side_meta {
            meta.put_with_key(&Uint8Array::from(value.as_slice()), &JsValue::from_str(key))
                .map_err(|e| storage_error("writing metadata", e))?;
        }
    }
    if !batch.segments.is_empty() || !batch.removed_segments.is_empty() {
        let segments = store(SEGMENTS)?;
        for (id, bytes) in &batch.segments {
            segments
                .put_with_key(&Uint8Array::from(bytes.as_slice()), &JsValue::from_str(id))
                .map_err(|e| storage_error("writing an index segment", e))?;
        }
        for id in &batch.removed_segments {
            segments
                .delete(&JsValue::from_str(id))
                .map_err(|e| storage_error("removing an index segment", e))?;
        }
    }
    Ok(())
}

/// Chunk keys are `[generation, part]`: arrays sort after the string keys of
/// rows stored one per record (before chunks existed), and by commit order
/// among themselves.
fn chunk_key(generation: u64, part: u32) -> JsValue {
    Array::of2(&(generation as f64).into(), &f64::from(part).into()).into()
}

/// Merges `value` into the entry of `key` (or adds it).
fn merge_into(rows: &mut Vec<(String, Vec<u8>)>, key: &str, value: &[u8]) {
    match rows.iter_mut().find(|(k, _)| k == key) {
        Some((_, existing)) => *existing = merge_meta_rows(key, existing, value),
        None => rows.push((key.to_owned(), value.to_vec())),
    }
}

fn upgrade_schema(database: &IdbDatabase, old_version: u32) {
    // Each version adds its stores, guarded by `old_version`; creating a
    // store that exists would throw.
    if old_version < 1 {
        for name in [RECORDS, META] {
            let _ = database.create_object_store(name);
        }
    }
    if old_version < 2 {
        let _ = database.create_object_store(SEGMENTS);
    }
    if old_version < 5 {
        create_id_lists(database, ID_LISTS);
    }
    // 3 changed the generation row's value only (see `decode_head`); 4
    // stopped writing it: chunks carry the metadata, and the newest
    // chunk's key is the generation (a head row left by 3 is read until a
    // full compaction folds it in).
}

/// The mergeable metadata a head row carries.
type Head = Vec<(String, Vec<u8>)>;

/// The head row of schema 3 and older (`meta/generation`, no longer
/// written): the generation (u64 LE), then the mergeable metadata of the
/// last commit (version vector, HLC) as `u16 key length, key, u32 value
/// length, value`. Rows of 8 bytes (schema 2) carry the generation alone.
/// The generation and mergeable metadata of a head row (`undefined`: a new
/// database, generation 0).
fn decode_head(value: &JsValue) -> Result<(u64, Head), StorageError> {
    if value.is_undefined() || value.is_null() {
        return Ok((0, Vec::new()));
    }
    let bytes = bytes_of(value).unwrap_or_default();
    let read = || -> Result<(u64, Head), crate::error::DecodeError> {
        let mut reader = crate::codec::Reader::new(&bytes);
        let generation = reader.u64()?;
        let mut mergeable = Vec::new();
        while reader.remaining() > 0 {
            let key_length = usize::from(reader.u16()?);
            let key = std::str::from_utf8(reader.take(key_length)?)
                .map_err(|e| crate::error::DecodeError::Invalid(e.to_string()))?;
            let value = reader.blob()?;
            mergeable.push((key.to_owned(), value.to_vec()));
        }
        Ok((generation, mergeable))
    };
    read().map_err(|e| StorageError::Corrupt {
        store: META.into(),
        key: GENERATION_KEY.into(),
        reason: format!("a truncated or malformed head row: {e}"),
    })
}

struct LockRelease(Function);

/// A storage dropped without [`close`](IndexedDbStorage::close) (a database
/// whose open failed, one dropped unclosed) closes its connection: an open
/// one whose `versionchange` handler went with it would block other tabs'
/// upgrades and deleting the database until garbage collection.
impl Drop for IndexedDbStorage {
    fn drop(&mut self) {
        self.close();
    }
}

impl Drop for LockRelease {
    fn drop(&mut self) {
        let _ = self.0.call0(&JsValue::UNDEFINED);
    }
}

impl Storage for IndexedDbStorage {
    fn describe(&self) -> String {
        format!("indexeddb:{}", self.name)
    }

    async fn acquire_slot(&self) -> Result<SlotLease, StorageError> {
        let prefix = format!("pluresdb/{}/slot/", self.name);
        let pair: Array = await_promise("taking an actor slot", acquire_slot_lock(&prefix))
            .await?
            .unchecked_into();
        let Some(slot) = pair.get(0).as_f64().filter(|slot| *slot >= 0.0) else {
            // No Web Locks (a page outside a secure context): no tab can
            // hold a slot, so each writes under a fresh actor.
            return Ok(SlotLease::unshared());
        };
        let release: Function = pair.get(1).unchecked_into();
        Ok(SlotLease::new(slot as u32, Box::new(LockRelease(release))))
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        let names = Array::of3(&RECORDS.into(), &META.into(), &SEGMENTS.into());
        let counted = Array::of1(&ID_LISTS.into());
        let stores: Array = self
            .read_reconnecting("loading the database", |database| {
                read_stores(database, &names, &counted)
            })
            .await?
            .unchecked_into();
        let mut state = LoadedState::default();
        let pairs = |index: u32| -> (Array, Array) {
            let pair: Array = stores.get(index).unchecked_into();
            (pair.get(0).unchecked_into(), pair.get(1).unchecked_into())
        };
        let (keys, values) = pairs(0);
        let newest_chunk = newest_generation(&keys);
        self.chunks.set(generations_among(&keys));
        // Records can be read back by id when the database keeps id lists
        // and every value has its own: none is a row of a format before
        // chunks, and there are as many id lists as chunk parts (read in
        // the same transaction).
        let parts = keys.iter().filter(|key| key.is_array()).count();
        let id_lists = stores.get(3).as_f64().unwrap_or(-1.0);
        let stored_bytes: usize = values
            .iter()
            .map(|value| {
                value
                    .dyn_ref::<Uint8Array>()
                    .map_or(0, |bytes| bytes.length() as usize)
            })
            .sum();
        self.stored_bytes.set(stored_bytes);
        self.all_listed
            .set(parts as u32 == keys.length() && id_lists == parts as f64);
        self.start_listing_if(id_lists > 0.0);
        self.reads_back
            .set(self.listing.get() && self.all_listed.get());
        // The database's mergeable metadata is every chunk's merged (with a
        // head row's of schema 3 and older, below): the chunks' entries
        // complete it as the database reads them.
        // Hints name places among these keys; only a database that reads
        // back at once can leave documents in storage as it opens.
        if self.reads_back.get() {
            *self.loaded_keys.borrow_mut() = Some(keys.clone());
        }
        let rows_at_most = entries_counted(&keys, &values);
        state.records =
            LoadedRecords::streamed(LiveEntries::new(StoredValues::new(keys, values).hinted()))
                .with_rows_at_most(rows_at_most);
        let mut legacy_generation = 0;
        let mut legacy_head = Vec::new();
        let (keys, values) = pairs(1);
        for (key, value) in keys.iter().zip(values.iter()) {
            let key = key.as_string().unwrap_or_default();
            if key == GENERATION_KEY {
                let (generation, mergeable) = decode_head(&value)?;
                legacy_generation = generation;
                legacy_head = mergeable;
            } else {
                state.meta.insert(key, bytes_of(&value).unwrap_or_default());
            }
        }
        // Schema 2 kept the mergeable rows on their own; they are merged
        // with the head's (merging is monotone, so either may be newer).
        for key in MERGEABLE_META {
            if let Some(legacy) = state.meta.remove(key) {
                merge_into(&mut legacy_head, key, &legacy);
            }
        }
        for (key, value) in &legacy_head {
            state.meta.insert(key.clone(), value.clone());
        }
        *self.legacy_head.borrow_mut() = legacy_head;
        self.legacy_generation.set(legacy_generation);
        state.generation = newest_chunk.max(legacy_generation);
        self.last_generation.set(state.generation);
        let (keys, values) = pairs(2);
        for (key, value) in keys.iter().zip(values.iter()) {
            let id = key.as_string().unwrap_or_default();
            state
                .segments
                .push((id, bytes_of(&value).unwrap_or_default()));
        }
        Ok(state)
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitReceipt, StorageError> {
        let receipt = match self.commit_once(&batch).await {
            // The connection was closed under us (another tab upgrading, the
            // browser reclaiming it): reopen and retry once.
            Err(StorageError::ConnectionLost(reason)) => {
                tracing::warn!(%reason, "IndexedDB connection lost; reopening and retrying");
                self.reconnect().await?;
                self.commit_once(&batch).await
            }
            other => other,
        }
        .map_err(|error| (error, batch_bytes(&batch)));
        let receipt = match receipt {
            Ok(receipt) => receipt,
            Err((StorageError::QuotaExceeded(message), needed)) => {
                // Tell the app how much was needed and how much there is.
                let health = StorageHealth::query(false).await;
                let mib = |bytes: f64| format!("{:.1} MiB", bytes / (1024.0 * 1024.0));
                let room = match (health.usage, health.quota) {
                    (Some(usage), Some(quota)) => format!(
                        "; the origin uses {} of its {} quota",
                        mib(usage),
                        mib(quota)
                    ),
                    _ => String::new(),
                };
                return Err(StorageError::QuotaExceeded(format!(
                    "{message} (this write needed about {}{room}; nothing of it was stored)",
                    mib(needed as f64)
                )));
            }
            Err((error, _)) => return Err(error),
        };
        // Compaction is upkeep: the commit is durable either way. It waits
        // for writes to pause (`housekeeping`) unless chunks pile up.
        let mut receipt = receipt;
        self.last_generation.set(receipt.generation);
        match self
            .compact_if_needed(
                receipt.generation,
                COMPACT_AT_ONCE_AFTER_CHUNKS,
                COMPACT_AT_ONCE_AFTER_BYTES,
                false,
            )
            .await
        {
            Ok(Some(generation)) => receipt.generation = generation,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "IndexedDB compaction failed; it is retried after a later commit");
            }
        }
        Ok(receipt)
    }

    /// A closing database leaves its chunks folded: upkeep that waited for
    /// a pause runs now.
    async fn close(&self) -> Result<(), StorageError> {
        if self.housekeeping_due() {
            if let Err(error) = self.housekeeping().await {
                tracing::warn!(%error, "IndexedDB compaction at close failed; it is retried later");
            }
        }
        Ok(())
    }

    /// Due when enough chunks were appended, or when a head row of schema 3
    /// or older is left to fold in, or values without id lists (a full
    /// compaction, once).
    fn housekeeping_due(&self) -> bool {
        self.appended.get() >= COMPACT_AFTER_CHUNKS
            || self.chunks.get() as usize >= FULL_COMPACTION_CHUNKS
            || self.legacy_generation.get() > 0
            || (self.listing.get() && !self.all_listed.get())
    }

    /// True when the database keeps id lists and every value of the records
    /// store has its own: as loaded, or once this instance's list pass or
    /// full compaction found (in its transaction) or made every part
    /// listed. A database below [`LIST_IDS_FROM_BYTES`] keeps none (every
    /// document stays in memory); one that reached it, or was written by
    /// an older schema, is rewritten with them by its next upkeep and reads
    /// back from then on. (No instance writes an unlisted part after that:
    /// the pass wrote a new generation, so another's next commit reads what
    /// came since, and meets a list, first.)
    fn reads_records(&self) -> bool {
        self.reads_back.get()
    }

    /// A list pass is due: this instance keeps lists now, and some part
    /// may lack one.
    fn reads_records_after_housekeeping(&self) -> bool {
        !self.reads_back.get()
            && self.listing.get()
            && !self.all_listed.get()
            && self.legacy_generation.get() == 0
    }

    async fn learn_whether_records_read_back(&self) -> Result<bool, StorageError> {
        self.learn_whether_every_part_is_listed().await
    }

    /// Reads every chunk holding a row or removal of one of `ids` (the id
    /// lists' index finds them) in one read-only transaction, and merges
    /// each id's live rows as loading does.
    async fn read_records(&self, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let joined = id_list(ids.iter().map(String::as_str));
        let pair: Array = self
            .read_reconnecting("reading records back", |database| {
                read_chunks_holding(database, RECORDS, ID_LISTS, &joined, false)
            })
            .await?
            .unchecked_into();
        drop(joined);
        live_rows_of(
            &ids,
            StoredValues::new(pair.get(0).unchecked_into(), pair.get(1).unchecked_into()),
            false,
        )
    }

    /// Reads the values the hints name (indexes into the keys loaded) in
    /// one read-only transaction, and merges the rows of the wanted ids
    /// found in them (an id's row in a value read for another id is a row
    /// of it as well).
    async fn read_rows_at(
        &self,
        wanted: Vec<(String, u32)>,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let Some(loaded) = self.loaded_keys.borrow().clone() else {
            return Ok(Vec::new());
        };
        let mut places: Vec<u32> = wanted
            .iter()
            .map(|(_, hint)| *hint)
            .filter(|hint| *hint < loaded.length())
            .collect();
        places.sort_unstable();
        places.dedup();
        if places.is_empty() {
            return Ok(Vec::new());
        }
        // In key order, as loading lists them (walked newest first).
        let keys: Array = places.iter().map(|place| loaded.get(*place)).collect();
        let values: Array = self
            .read_reconnecting("reading records back", |database| {
                read_values(database, RECORDS, &keys)
            })
            .await?
            .unchecked_into();
        // A value compacted away since is not there: its ids are read the
        // long way. When none is left, the load's places are taken to be
        // gone (a full compaction rewrote everything): hints are not
        // tried again.
        let (found_keys, found_values) = (Array::new(), Array::new());
        for (key, value) in keys.iter().zip(values.iter()) {
            if !value.is_undefined() {
                found_keys.push(&key);
                found_values.push(&value);
            }
        }
        if found_keys.length() == 0 {
            *self.loaded_keys.borrow_mut() = None;
        }
        let mut ids: Vec<String> = wanted.into_iter().map(|(id, _)| id).collect();
        ids.dedup();
        live_rows_of(&ids, StoredValues::new(found_keys, found_values), false)
    }

    /// Lists the parts written before the database kept id lists (a full
    /// compaction when that cannot be done in place), then folds chunks.
    async fn housekeeping(&self) -> Result<Option<u64>, StorageError> {
        let mut expected = None;
        if self.listing.get() && !self.all_listed.get() && self.legacy_generation.get() == 0 {
            match self.list_unlisted_parts().await {
                // No other instance committed in between: the next commit
                // expects the generation written.
                Ok(Some((found, written))) if found == self.last_generation.get() => {
                    self.last_generation.set(written);
                    expected = Some(written);
                }
                Ok(_) => {}
                // Folding still runs (a full compaction, when due, lists
                // everything it rewrites).
                Err(error) => {
                    tracing::warn!(%error, "listing IndexedDB parts failed; it is retried later")
                }
            }
        }
        let compacted = self
            .compact_if_needed(
                self.last_generation.get(),
                COMPACT_AFTER_CHUNKS,
                usize::MAX,
                true,
            )
            .await?;
        Ok(compacted.or(expected))
    }

    fn announce(&self, message: &[u8]) {
        if let Some(channel) = self.channel.borrow().as_ref() {
            announce_soon(&channel.peer, &Uint8Array::from(message));
        }
    }

    fn announcements(&self) -> Option<mpsc::UnboundedReceiver<Vec<u8>>> {
        let mut channel = self.channel.borrow_mut();
        let channel = channel.as_mut()?;
        let (sender, receiver) = mpsc::unbounded();
        let on_message = Closure::<dyn FnMut(Uint8Array)>::new(move |bytes: Uint8Array| {
            let _ = sender.unbounded_send(bytes.to_vec());
        });
        listen_channel(&channel.peer, on_message.as_ref().unchecked_ref());
        channel.on_message = Some(on_message);
        Some(receiver)
    }
}
