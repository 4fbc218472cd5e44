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
use web_sys::{DomException, IdbDatabase, IdbObjectStore, IdbTransactionMode};

use super::{
    merge_meta_rows, merge_record_rows, CommitBatch, CommitReceipt, LoadedState, SlotLease, Storage,
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
    #[wasm_bindgen(js_name = readStores)]
    fn read_stores(database: &IdbDatabase, names: &Array) -> js_sys::Promise;
    #[wasm_bindgen(js_name = acquireSlotLock)]
    fn acquire_slot_lock(prefix: &str) -> js_sys::Promise;
    #[wasm_bindgen(js_name = openChannel)]
    fn open_channel(name: &str, on_message: &Function) -> JsValue;
}

/// The IndexedDB schema version this build creates (1: records and meta;
/// 2: adds segments).
const SCHEMA_VERSION: u32 = 2;
const RECORDS: &str = "records";
const META: &str = "meta";
const SEGMENTS: &str = "segments";
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

/// The other-tab channel and its message handler (kept alive with it).
struct Channel {
    channel: web_sys::BroadcastChannel,
    _on_message: Closure<dyn FnMut(Uint8Array)>,
}

/// IndexedDB storage for one named database.
pub struct IndexedDbStorage {
    name: String,
    connection: RefCell<Option<Connection>>,
    channel: RefCell<Option<Channel>>,
}

impl IndexedDbStorage {
    /// True when the global scope has `indexedDB` (browsers and workers, not
    /// plain Node).
    pub fn is_available() -> bool {
        has_indexed_db()
    }

    fn database_name(name: &str) -> String {
        format!("pluresdb/{name}")
    }

    /// Opens (creating or upgrading) the IndexedDB database for `name`.
    pub async fn open(name: &str) -> Result<Self, StorageError> {
        if !has_indexed_db() {
            return Err(StorageError::Backend(
                "IndexedDB is not available in this environment; use memory storage".into(),
            ));
        }
        let storage = Self {
            name: name.to_owned(),
            connection: RefCell::new(None),
            channel: RefCell::new(None),
        };
        storage.reconnect().await?;
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

    /// Closes the connection (later commits reopen it).
    pub fn close(&self) {
        if let Some(connection) = self.connection.borrow_mut().take() {
            connection.database.close();
        }
        if let Some(channel) = self.channel.borrow_mut().take() {
            channel.channel.close();
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
            StorageError::Backend(message) if message.contains("VersionError") => {
                StorageError::FormatTooNew {
                    found: SCHEMA_VERSION + 1,
                    supported: SCHEMA_VERSION,
                }
            }
            other => other,
        })?;
        let database: IdbDatabase = value.unchecked_into();
        let names = database.object_store_names();
        if let Some(missing) = [RECORDS, META, SEGMENTS]
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

    async fn commit_once(&self, batch: &CommitBatch) -> Result<CommitReceipt, StorageError> {
        let database = self.database().await?;
        let names = Array::of3(&RECORDS.into(), &META.into(), &SEGMENTS.into());
        let transaction = database
            .transaction_with_str_sequence_and_mode(&names, IdbTransactionMode::Readwrite)
            .map_err(|e| storage_error("starting a transaction", e))?;
        let done = JsFuture::from(transaction_promise(&transaction));
        let result = self.write(&transaction, batch).await;
        match result {
            Ok(receipt) => {
                done.await
                    .map_err(|e| storage_error("committing the transaction", e))?;
                Ok(receipt)
            }
            Err(error) => {
                let _ = transaction.abort();
                let _ = done.await;
                Err(error)
            }
        }
    }

    async fn write(
        &self,
        transaction: &web_sys::IdbTransaction,
        batch: &CommitBatch,
    ) -> Result<CommitReceipt, StorageError> {
        let store = |name: &str| -> Result<IdbObjectStore, StorageError> {
            transaction
                .object_store(name)
                .map_err(|e| storage_error("opening an object store", e))
        };
        let records = store(RECORDS)?;
        let meta = store(META)?;
        let segments = store(SEGMENTS)?;
        let stored_generation = request(
            "reading the generation",
            meta.get(&JsValue::from_str(GENERATION_KEY)),
        )
        .await?;
        let stored_generation = decode_generation(&stored_generation)?;
        let stale = stored_generation != batch.expected_generation;

        let mut merged_records = Vec::new();
        let mut stored_rows = Vec::new();
        if stale {
            // Another tab committed since this one last did: merge with what
            // it wrote instead of overwriting it.
            let gets: Vec<_> = batch
                .records
                .iter()
                .map(|(id, _)| request("reading a row", records.get(&JsValue::from_str(id))))
                .collect();
            stored_rows = futures::future::try_join_all(gets).await?;
        }
        for (index, (id, bytes)) in batch.records.iter().enumerate() {
            let row = match stored_rows.get(index).and_then(bytes_of) {
                Some(stored) => {
                    let merged = merge_record_rows(id, &stored, bytes)?;
                    if &merged != bytes {
                        merged_records.push((id.clone(), merged.clone()));
                    }
                    merged
                }
                None => bytes.clone(),
            };
            records
                .put_with_key(&Uint8Array::from(row.as_slice()), &JsValue::from_str(id))
                .map_err(|e| storage_error("writing a record", e))?;
        }
        for id in &batch.removed_records {
            records
                .delete(&JsValue::from_str(id))
                .map_err(|e| storage_error("removing a record", e))?;
        }
        for (key, value) in &batch.meta {
            let value = if stale {
                let stored = request("reading metadata", meta.get(&JsValue::from_str(key))).await?;
                match bytes_of(&stored) {
                    Some(stored) => merge_meta_rows(key, &stored, value),
                    None => value.clone(),
                }
            } else {
                value.clone()
            };
            meta.put_with_key(&Uint8Array::from(value.as_slice()), &JsValue::from_str(key))
                .map_err(|e| storage_error("writing metadata", e))?;
        }
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
        let generation = stored_generation + 1;
        meta.put_with_key(
            &Uint8Array::from(generation.to_le_bytes().as_slice()),
            &JsValue::from_str(GENERATION_KEY),
        )
        .map_err(|e| storage_error("writing the generation", e))?;
        Ok(CommitReceipt {
            generation,
            merged_records,
        })
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
}

fn decode_generation(value: &JsValue) -> Result<u64, StorageError> {
    if value.is_undefined() || value.is_null() {
        return Ok(0);
    }
    let bytes = bytes_of(value).unwrap_or_default();
    let array: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StorageError::Corrupt {
            store: META.into(),
            key: GENERATION_KEY.into(),
            reason: "expected 8 bytes".into(),
        })?;
    Ok(u64::from_le_bytes(array))
}

struct LockRelease(Function);

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
        let slot = pair.get(0).as_f64().unwrap_or(0.0) as u32;
        let release: Function = pair.get(1).unchecked_into();
        Ok(SlotLease::new(slot, Box::new(LockRelease(release))))
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        let database = self.database().await?;
        let names = Array::of3(&RECORDS.into(), &META.into(), &SEGMENTS.into());
        let stores: Array = await_promise("loading the database", read_stores(&database, &names))
            .await?
            .unchecked_into();
        let mut state = LoadedState::default();
        let pairs = |index: u32| -> (Array, Array) {
            let pair: Array = stores.get(index).unchecked_into();
            (pair.get(0).unchecked_into(), pair.get(1).unchecked_into())
        };
        let (keys, values) = pairs(0);
        state.records.reserve(keys.length() as usize);
        for (key, value) in keys.iter().zip(values.iter()) {
            let id = key.as_string().unwrap_or_default();
            state
                .records
                .push((id, bytes_of(&value).unwrap_or_default()));
        }
        let (keys, values) = pairs(1);
        for (key, value) in keys.iter().zip(values.iter()) {
            let key = key.as_string().unwrap_or_default();
            if key == GENERATION_KEY {
                state.generation = decode_generation(&value)?;
            } else {
                state.meta.insert(key, bytes_of(&value).unwrap_or_default());
            }
        }
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
        match self.commit_once(&batch).await {
            // The connection was closed under us (another tab upgrading, the
            // browser reclaiming it): reopen and retry once.
            Err(StorageError::ConnectionLost(reason)) => {
                tracing::warn!(%reason, "IndexedDB connection lost; reopening and retrying");
                self.reconnect().await?;
                self.commit_once(&batch).await
            }
            other => other,
        }
    }

    fn announce(&self, operations: &[crate::crdt::CrdtOperation]) {
        if let Some(channel) = self.channel.borrow().as_ref() {
            let bytes = crate::crdt::encode_operations(operations);
            let _ = channel
                .channel
                .post_message(&Uint8Array::from(bytes.as_slice()));
        }
    }

    fn announcements(&self) -> Option<mpsc::UnboundedReceiver<Vec<u8>>> {
        let (sender, receiver) = mpsc::unbounded();
        let on_message = Closure::<dyn FnMut(Uint8Array)>::new(move |bytes: Uint8Array| {
            let _ = sender.unbounded_send(bytes.to_vec());
        });
        let channel = open_channel(
            &format!("pluresdb/{}", self.name),
            on_message.as_ref().unchecked_ref(),
        );
        if channel.is_null() {
            return None;
        }
        *self.channel.borrow_mut() = Some(Channel {
            channel: channel.unchecked_into(),
            _on_message: on_message,
        });
        Some(receiver)
    }
}
