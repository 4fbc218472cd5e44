//! [`Database`]: the CRDT store, a storage backend and the change feed wired
//! together.
//!
//! Reads are served from memory. Writes are stamped at once (so their order
//! is the call order), queued, and made durable by a single committer task
//! that drains the queue into one storage transaction at a time: writes
//! issued together are group-committed, and a write's future resolves only
//! after its transaction committed. Nothing becomes visible to readers,
//! subscribers or peers before it is durable; a failed commit (quota, I/O)
//! changes nothing.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;

use crate::crdt::{
    decode_operations, validate_id, ActorId, Change, ChangeKind, CrdtOperation, CrdtStore,
    Document, Dot, Record, RestoredRecords, Version, VersionVector,
};
use crate::error::{Error, InputError, Result, StorageError};
use crate::index::{IndexConfig, VectorIndex};
use crate::platform::{self, SystemClock, WallClock};
use crate::query::Query;

mod field_index;
mod sync;
mod vector;

use field_index::FieldIndexBuilder;
pub(crate) use field_index::FieldIndexes;
pub use field_index::QueryPlan;
pub use sync::{SyncHandle, SyncState, SyncStatus};

use crate::storage::{
    decode_format, decode_hlc, encode_format, encode_hlc, merge_meta_into, meta_keys, CommitBatch,
    SlotLease, Storage, StoredEntry, FORMAT_VERSION,
};
pub use vector::{text_of, EmbedText, SearchHit, SearchQuery, SearchRequest};

/// An in-process event about the database, delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// A record was created or updated (locally, by another tab or a peer).
    Upsert {
        /// The record id.
        id: String,
    },
    /// A record was deleted.
    Delete {
        /// The record id.
        id: String,
    },
    /// A sync peer connected.
    PeerConnected {
        /// The peer's id.
        peer: String,
    },
    /// A sync peer disconnected.
    PeerDisconnected {
        /// The peer's id.
        peer: String,
    },
}

impl SyncEvent {
    /// The JavaScript API's `{ kind, id }`: `upsert`, `delete`,
    /// `peer-connected` or `peer-disconnected`, and the record or peer id.
    pub fn kind_and_id(&self) -> (&'static str, &str) {
        match self {
            SyncEvent::Upsert { id } => ("upsert", id),
            SyncEvent::Delete { id } => ("delete", id),
            SyncEvent::PeerConnected { peer } => ("peer-connected", peer),
            SyncEvent::PeerDisconnected { peer } => ("peer-disconnected", peer),
        }
    }

    /// Whether a live query over ids starting with `prefix` must look again.
    pub fn changes_prefix(&self, prefix: &str) -> bool {
        match self {
            SyncEvent::Upsert { id } | SyncEvent::Delete { id } => id.starts_with(prefix),
            _ => false,
        }
    }
}

/// For live queries: waits until `events` brings a change to an id under
/// `prefix`, then takes every event already queued (changes committed
/// together cause one new result). `false` once the database is gone.
pub async fn next_change_under(
    events: &mut mpsc::UnboundedReceiver<SyncEvent>,
    prefix: &str,
) -> bool {
    use futures::StreamExt;
    loop {
        match events.next().await {
            None => return false,
            Some(event) if event.changes_prefix(prefix) => break,
            Some(_) => continue,
        }
    }
    while let Ok(_queued) = events.try_recv() {}
    true
}

/// Where a committed batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Written through this instance's API.
    Local,
    /// Received from a sync peer (its id), as a live change or a delta.
    Peer(String),
    /// Committed by another open instance of the same storage (another tab)
    /// and announced to this one.
    OtherInstance,
}

/// A batch of operations that became durable, in commit order: the feed the
/// sync layer forwards to peers.
#[derive(Debug, Clone)]
pub struct CommittedBatch {
    /// Where the operations came from.
    pub origin: Origin,
    /// The operations, as they were merged.
    pub ops: Vec<CrdtOperation>,
    /// The version vector right after the batch was installed: it covers
    /// these operations and everything committed before them, and nothing
    /// committed after (what the sync engine may claim as published once
    /// the batch is stored).
    pub vector: Arc<VersionVector>,
}

/// Options for [`Database::open`].
#[derive(Clone)]
pub struct OpenOptions {
    /// The wall clock used to stamp writes (the system clock by default).
    pub clock: Arc<dyn WallClock>,
    /// Vector index settings (dimension, HNSW parameters).
    pub index: IndexConfig,
    /// Embeds text: when set, `put` embeds each record's text fields and
    /// `search` accepts text.
    pub embedder: Option<Arc<dyn EmbedText>>,
    /// The top-level string fields an embedder sees (all when empty).
    pub embed_fields: Vec<String>,
    /// Top-level fields to keep secondary indexes on, so queries with
    /// conditions on them (`=`, `$in`, ranges) read only the records that
    /// can match instead of scanning (see [`Database::explain`]).
    pub indexes: Vec<String>,
    /// About how many bytes the documents in memory may take: their text
    /// and [`DOCUMENT_OVERHEAD_BYTES`](crate::crdt::DOCUMENT_OVERHEAD_BYTES)
    /// each ([`DEFAULT_CACHE_BYTES`] by default). A database opens with its
    /// documents in storage; they come into memory as they are written or
    /// read (a record read by itself; what a list, query or search reads
    /// while the cache has room), and past the cache those that came in
    /// first are left in storage and read back (a batch per transaction)
    /// when a read needs them. Everything else about a record stays in
    /// memory. Only storage that reads rows back by id
    /// ([`Storage::reads_records`]: SQLite and durable memory storage)
    /// leaves documents there; elsewhere every document stays in memory.
    /// `usize::MAX` keeps every document in memory.
    pub cache_bytes: usize,
    /// Let other work run every [`LOAD_SLICE_MS`] while decoding stored
    /// rows at open (a page keeps answering while a database opened with
    /// `loadInBackground` loads). Default false.
    pub load_in_slices: bool,
}

/// With [`OpenOptions::load_in_slices`], how long opening decodes rows
/// before letting other work run.
pub const LOAD_SLICE_MS: u64 = 50;

/// The default of [`OpenOptions::cache_bytes`]: 256 MiB of document text.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// How [`Database::visit_passing_through`] ended.
enum Passed {
    /// Every record was visited, or `visit` stopped it (`done`).
    Visited { done: bool },
    /// A row read back no longer holds a version its record left there.
    Superseded,
}

/// Records whose documents are read back from storage in one transaction.
const BODY_READ_BATCH: usize = 512;

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            index: IndexConfig::default(),
            embedder: None,
            embed_fields: Vec::new(),
            indexes: Vec::new(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            load_in_slices: false,
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions").finish_non_exhaustive()
    }
}

/// Record counts, from [`Database::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatabaseStats {
    /// Records with live data.
    pub live: usize,
    /// Deleted records (tombstones kept for sync).
    pub tombstones: usize,
    /// Records holding concurrent versions.
    pub conflicted: usize,
    /// Bytes the documents held in memory take, as the cache counts them
    /// (see [`OpenOptions::cache_bytes`]).
    pub cached_bytes: usize,
    /// Records with a document left in storage.
    pub records_in_storage_only: usize,
}

/// A record to write with an optional embedding: `(id, document, vector)`.
pub type EmbeddedEntry = (String, Document, Option<Arc<[f32]>>);

/// One page of [`Database::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// `(id, document)` in id order.
    pub items: Vec<(String, Document)>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Arguments of [`Database::list`].
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only ids starting with this prefix.
    pub prefix: String,
    /// At most this many items (all when `None`).
    pub limit: Option<usize>,
    /// Start after this id (the previous page's `next_cursor`).
    pub cursor: Option<String>,
}

struct CommitJob {
    ops: Vec<CrdtOperation>,
    origin: Origin,
    /// Set when `ops` are a complete delta from a peer holding this vector.
    peer_vector: Option<VersionVector>,
    /// Metadata rows written in the same transaction (sync cursors).
    meta: Vec<(String, Vec<u8>)>,
    reply: oneshot::Sender<Result<()>>,
}

enum Job {
    Commit(CommitJob),
    /// Seal (when enough vectors wait) and merge index segments.
    Maintain,
    /// Seal every waiting vector and merge; reply when done.
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

struct State {
    store: CrdtStore,
    index: VectorIndex,
    /// The declared secondary indexes on fields.
    fields: FieldIndexes,
    /// The database's sync identity, once it has one.
    identity: Option<crate::sync::SyncIdentity>,
    /// Stored `sync/...` metadata (cursors, what was published).
    sync_meta: std::collections::BTreeMap<String, Vec<u8>>,
    generation: u64,
    /// Rows that failed to decode on open: id -> reason.
    corrupt: HashMap<String, String>,
    listeners: Vec<Listener>,
    commit_listeners: Vec<mpsc::UnboundedSender<Arc<CommittedBatch>>>,
    closed: bool,
}

/// A subscriber of [`SyncEvent`]s: unbounded ([`Database::subscribe`]) or
/// with a bounded queue ([`Database::subscribe_bounded`]), which is dropped
/// once full instead of growing.
enum Listener {
    Unbounded(mpsc::UnboundedSender<SyncEvent>),
    Bounded(mpsc::Sender<SyncEvent>),
}

impl Listener {
    /// Queues `event`; false when the subscriber is gone or (bounded) too
    /// far behind, and should be dropped.
    fn send(&mut self, event: SyncEvent) -> bool {
        match self {
            Listener::Unbounded(sender) => sender.unbounded_send(event).is_ok(),
            Listener::Bounded(sender) => sender.try_send(event).is_ok(),
        }
    }
}

struct Shared<S> {
    storage: S,
    /// Whether other open instances hear about commits (see `announce`).
    announces: bool,
    state: Mutex<State>,
    clock: Arc<dyn WallClock>,
    embedder: Option<Arc<dyn EmbedText>>,
    embed_fields: Vec<String>,
    slot: Mutex<Option<SlotLease>>,
    /// [`OpenOptions::cache_bytes`].
    cache_bytes: usize,
}

impl<S> Shared<S> {
    fn state(&self) -> MutexGuard<'_, State> {
        // State is only mutated by short, non-panicking critical sections; a
        // poisoned lock means a panic elsewhere, and the data is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A PluresDB database on storage `S`. Cheap to clone; clones share state.
pub struct Database<S: Storage> {
    shared: Arc<Shared<S>>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl<S: Storage> Clone for Database<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: Storage> std::fmt::Debug for Database<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("storage", &self.shared.storage.describe())
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Database<S> {
    /// Opens the database kept in `storage`: takes an actor slot, loads every
    /// record into memory, and starts the committer.
    ///
    /// Natively this must run inside a tokio runtime.
    pub async fn open(storage: S, options: OpenOptions) -> Result<Self> {
        FieldIndexes::validate(&options.indexes)?;
        let lease = storage.acquire_slot().await?;
        let mut loaded = storage.load().await?;

        let format = loaded
            .meta
            .get(meta_keys::FORMAT)
            .map(|bytes| decode_format(bytes))
            .transpose()?;
        if let Some(found) = format {
            if found > FORMAT_VERSION {
                return Err(StorageError::FormatTooNew {
                    found,
                    supported: FORMAT_VERSION,
                }
                .into());
            }
        }

        let slot_key = meta_keys::slot(lease.slot());
        let corrupt_meta = |key: &str, reason: String| StorageError::Corrupt {
            store: "meta".into(),
            key: key.to_owned(),
            reason,
        };
        // Without an exclusive slot, a fresh actor: reusing a stored one
        // could issue the same dots as another open instance.
        let stored_actor = match loaded.meta.get(&slot_key).filter(|_| lease.is_exclusive()) {
            Some(bytes) => {
                Some(ActorId::from_bytes(bytes.as_slice().try_into().map_err(
                    |_| corrupt_meta(&slot_key, "not a 16-byte actor id".into()),
                )?))
            }
            None => None,
        };
        let actor = stored_actor.unwrap_or_else(ActorId::random);

        // Records are decoded as the backend hands its rows over (a row's
        // bytes are freed once it and the rest of its stored value are
        // decoded): a database is never in memory twice, as stored rows and
        // as records, while it opens.
        //
        // With a cache on storage that reads rows back (one row per id),
        // each record's fields are indexed as it arrives and its documents
        // are left in storage right away: the peak while opening is what
        // stays resident per record, not the whole database. The cache
        // starts empty and fills with what is read (filling it at open, in
        // id order, kept 61 MiB of documents of a million notes that a tab
        // may never read).
        let bounded_open = storage.reads_records() && options.cache_bytes != usize::MAX;
        let rows_at_most = loaded.records.rows_at_most();
        let mut opening_fields = bounded_open.then(|| {
            let mut fields = FieldIndexBuilder::new(&options.indexes);
            fields.reserve(rows_at_most);
            fields
        });
        let mut records = RestoredRecords::with_capacity(rows_at_most);
        let mut corrupt = HashMap::new();
        let mut slice_started = crate::platform::now_ms();
        for (at, entry) in std::mem::take(&mut loaded.records).enumerate() {
            if options.load_in_slices
                && at % 1024 == 0
                && crate::platform::now_ms().saturating_sub(slice_started) >= LOAD_SLICE_MS
            {
                crate::platform::yield_to_tasks().await;
                slice_started = crate::platform::now_ms();
            }
            match entry? {
                StoredEntry::Row(row) => match Record::from_stored_bytes(row.bytes()) {
                    Ok(mut record) if record.id().as_bytes() == row.id_bytes() => {
                        if let Some(fields) = &mut opening_fields {
                            fields.add(&record);
                            record.leave_bodies_in_storage_at(row.hint());
                        }
                        records.push(record)
                    }
                    Ok(record) => {
                        corrupt.insert(
                            row.id().to_owned(),
                            format!("row holds record `{}` under another key", record.id()),
                        );
                    }
                    Err(e) => {
                        corrupt.insert(row.id().to_owned(), e.to_string());
                    }
                },
                StoredEntry::Meta(key, value) => merge_meta_into(&mut loaded.meta, key, &value),
            }
        }
        if !corrupt.is_empty() {
            tracing::warn!(
                rows = corrupt.len(),
                "database has corrupt rows; they are reported on access and kept untouched"
            );
        }
        let version_vector = match loaded.meta.get(meta_keys::VERSION_VECTOR) {
            Some(bytes) => VersionVector::from_bytes(bytes)
                .map_err(|e| corrupt_meta(meta_keys::VERSION_VECTOR, e.to_string()))?,
            None => VersionVector::new(),
        };
        let last_hlc = match loaded.meta.get(meta_keys::HLC) {
            Some(bytes) => {
                decode_hlc(bytes).map_err(|e| corrupt_meta(meta_keys::HLC, e.to_string()))?
            }
            None => Default::default(),
        };
        let mut repeated = Vec::new();
        let mut store = CrdtStore::restore_noting_repeats(
            actor,
            records,
            version_vector,
            last_hlc,
            options.clock.now_ms(),
            &mut repeated,
        );
        // A record loaded from several rows is read back from all of them:
        // its versions were merged (one dot claimed twice settled) while
        // their documents were in storage, so no single row is known to
        // hold what the merge kept.
        for id in &repeated {
            store.forget_storage_hints(id);
        }
        let identity = match loaded.meta.get(meta_keys::SYNC_IDENTITY) {
            Some(bytes) => Some(
                crate::sync::SyncIdentity::from_bytes(bytes)
                    .map_err(|e| corrupt_meta(meta_keys::SYNC_IDENTITY, e.to_string()))?,
            ),
            None => None,
        };
        let sync_meta = loaded
            .meta
            .iter()
            .filter(|(key, _)| key.starts_with(meta_keys::SYNC_PREFIX))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let (index, dropped_segments) =
            vector::build_index(options.index.clone(), loaded.segments, &store);
        let fields = match opening_fields {
            Some(fields) => {
                let mut fields = fields.finish();
                reindex_repeated_rows(&storage, &store, &mut fields, repeated).await?;
                fields
            }
            None => FieldIndexes::build(&options.indexes, &store),
        };
        if bounded_open {
            store.keep_bodies_within(options.cache_bytes);
        }

        // A new database records its format; a new slot records its actor id
        // before the actor writes anything.
        let mut meta = Vec::new();
        if let Some(found) = format.filter(|found| *found < FORMAT_VERSION) {
            migrate(found);
        }
        if format != Some(FORMAT_VERSION) {
            meta.push((meta_keys::FORMAT.to_owned(), encode_format(FORMAT_VERSION)));
        }
        if stored_actor.is_none() && lease.is_exclusive() {
            meta.push((slot_key, actor.as_bytes().to_vec()));
        }
        // One model per database: vectors of two models are not comparable
        // (even at one dimension), so a database remembers the named model
        // that filled it and refuses another.
        if let Some(model) = options.embedder.as_ref().and_then(|e| e.model()) {
            match loaded.meta.get(meta_keys::EMBEDDER) {
                Some(stored) if stored.as_slice() != model.as_bytes() => {
                    return Err(Error::Input(InputError::InvalidArgument(format!(
                        "this database's vectors were made by the embedder `{}`; opening it with `{model}` would mix vectors that cannot be compared. Open it with the same embedder, or copy the records into a new database",
                        String::from_utf8_lossy(stored)
                    ))));
                }
                None if index.is_empty() => {
                    meta.push((meta_keys::EMBEDDER.to_owned(), model.into_bytes()))
                }
                _ => {}
            }
        }
        let mut generation = loaded.generation;
        if !meta.is_empty() || !dropped_segments.is_empty() {
            let receipt = storage
                .commit(CommitBatch {
                    expected_generation: generation,
                    meta,
                    removed_segments: dropped_segments,
                    ..Default::default()
                })
                .await?;
            generation = receipt.generation;
        }

        let announcements = storage.announcements();
        let shared = Arc::new(Shared {
            announces: announcements.is_some(),
            storage,
            state: Mutex::new(State {
                store,
                index,
                fields,
                identity,
                sync_meta,
                generation,
                corrupt,
                listeners: Vec::new(),
                commit_listeners: Vec::new(),
                closed: false,
            }),
            clock: options.clock,
            embedder: options.embedder,
            embed_fields: options.embed_fields,
            slot: Mutex::new(Some(lease)),
            cache_bytes: options.cache_bytes,
        });
        if let Some(announcements) = announcements {
            platform::spawn(run_announcement_listener(
                Arc::downgrade(&shared),
                announcements,
            ));
        }
        let (jobs, receiver) = mpsc::unbounded();
        platform::spawn(run_committer(shared.clone(), receiver));
        // A database reopened with many unsealed vectors seals them now.
        let _ = jobs.unbounded_send(Job::Maintain);
        Ok(Self { shared, jobs })
    }

    fn now(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    fn readable(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.shared.state();
        if state.closed {
            return Err(StorageError::Closed.into());
        }
        Ok(state)
    }

    /// The storage backend.
    pub fn storage(&self) -> &S {
        &self.shared.storage
    }

    /// The actor this instance writes as.
    pub fn actor(&self) -> ActorId {
        self.shared.state().store.actor()
    }

    /// The store-wide version vector.
    pub fn version_vector(&self) -> VersionVector {
        self.shared.state().store.version_vector().clone()
    }

    /// The version vector, or an error once closed.
    pub(crate) fn version_vector_checked(&self) -> Result<VersionVector> {
        Ok(self.readable()?.store.version_vector().clone())
    }

    /// Writes `value` under `id`. Resolves once the write is durable. With
    /// an embedder attached, the record's text fields are embedded first.
    pub async fn put(&self, id: &str, value: serde_json::Value) -> Result<()> {
        let document = Document::from_value(&value)?;
        self.put_document(id, document, None).await
    }

    /// Writes a document with `embedding`, or, when `None` and an embedder
    /// is attached, with the embedding of its text fields.
    pub async fn put_document(
        &self,
        id: &str,
        document: Document,
        embedding: Option<Arc<[f32]>>,
    ) -> Result<()> {
        validate_id(id)?;
        let embedding = match embedding {
            Some(embedding) => Some(embedding),
            None => self.auto_embedding(&document).await?,
        };
        let receiver = {
            let mut state = self.readable()?;
            if let Some(vector) = &embedding {
                state.index.check(vector)?;
            }
            let now = self.now();
            let op = state.store.prepare_put(id, document, embedding, now);
            self.enqueue(vec![op], Origin::Local, None)?
        };
        await_reply(receiver).await
    }

    /// Writes many records in one transaction: all become durable together
    /// or none does. With an embedder, one call embeds the whole batch.
    pub async fn put_many(
        &self,
        entries: impl IntoIterator<Item = (String, Document)>,
    ) -> Result<()> {
        self.put_many_with_embeddings(entries.into_iter().map(|(id, d)| (id, d, None)))
            .await
    }

    /// [`put_many`](Self::put_many) with an optional embedding per record;
    /// records without one are embedded by the embedder, if any.
    pub async fn put_many_with_embeddings(
        &self,
        entries: impl IntoIterator<Item = EmbeddedEntry>,
    ) -> Result<()> {
        let entries: Vec<EmbeddedEntry> = entries.into_iter().collect();
        for (id, _, _) in &entries {
            validate_id(id)?;
        }
        // Without an embedder there is nothing to fill in (and no copies of
        // a large batch to make).
        let entries: Vec<EmbeddedEntry> = if self.shared.embedder.is_some() {
            let missing: Vec<(String, Document)> = entries
                .iter()
                .filter(|(_, _, embedding)| embedding.is_none())
                .map(|(id, document, _)| (id.clone(), document.clone()))
                .collect();
            let mut automatic = self.auto_embeddings(&missing).await?.into_iter();
            entries
                .into_iter()
                .map(|(id, document, embedding)| {
                    let embedding = embedding.or_else(|| automatic.next().flatten());
                    (id, document, embedding)
                })
                .collect()
        } else {
            entries
        };
        let receiver = {
            let mut state = self.readable()?;
            for vector in entries.iter().filter_map(|(_, _, e)| e.as_ref()) {
                state.index.check(vector)?;
            }
            let now = self.now();
            state.store.reserve_local_writes(entries.len());
            let ops = entries
                .into_iter()
                .map(|(id, document, embedding)| {
                    state.store.prepare_put(&id, document, embedding, now)
                })
                .collect();
            self.enqueue(ops, Origin::Local, None)?
        };
        await_reply(receiver).await
    }

    /// Deletes `id`. Resolves to whether there was anything to delete, once
    /// the delete is durable.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let receiver = {
            let mut state = self.readable()?;
            let now = self.now();
            match state.store.prepare_delete(id, now) {
                Some(op) => self.enqueue(vec![op], Origin::Local, None)?,
                None => return Ok(false),
            }
        };
        await_reply(receiver).await.map(|()| true)
    }

    /// Merges operations received from a peer. `peer_vector` is given when
    /// they are a complete delta computed against this replica's vector.
    pub async fn apply_remote(
        &self,
        ops: Vec<CrdtOperation>,
        origin: Origin,
        peer_vector: Option<VersionVector>,
    ) -> Result<()> {
        self.apply_remote_with_meta(ops, origin, peer_vector, Vec::new())
            .await
    }

    /// [`apply_remote`](Self::apply_remote), also writing metadata rows
    /// (a sync cursor) in the same transaction.
    pub(crate) async fn apply_remote_with_meta(
        &self,
        ops: Vec<CrdtOperation>,
        origin: Origin,
        peer_vector: Option<VersionVector>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let receiver = {
            let _state = self.readable()?;
            self.enqueue_with_meta(ops, origin, peer_vector, meta)?
        };
        await_reply(receiver).await
    }

    /// Writes metadata rows durably (through the committer, so they are
    /// ordered with writes).
    pub(crate) async fn write_meta(&self, meta: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.apply_remote_with_meta(Vec::new(), Origin::Local, None, meta)
            .await
    }

    fn enqueue(
        &self,
        ops: Vec<CrdtOperation>,
        origin: Origin,
        peer_vector: Option<VersionVector>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        self.enqueue_with_meta(ops, origin, peer_vector, Vec::new())
    }

    fn enqueue_with_meta(
        &self,
        ops: Vec<CrdtOperation>,
        origin: Origin,
        peer_vector: Option<VersionVector>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, receiver) = oneshot::channel();
        self.jobs
            .unbounded_send(Job::Commit(CommitJob {
                ops,
                origin,
                peer_vector,
                meta,
                reply,
            }))
            .map_err(|_| Error::Storage(StorageError::Closed))?;
        Ok(receiver)
    }

    fn check_corrupt(state: &State, id: &str) -> Result<()> {
        match state.corrupt.get(id) {
            Some(reason) => Err(StorageError::Corrupt {
                store: "records".into(),
                key: id.to_owned(),
                reason: reason.clone(),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The live document under `id` (`None` when absent or deleted).
    pub async fn get_document(&self, id: &str) -> Result<Option<Document>> {
        if let Some(found) = self.get_in_memory(id)? {
            return Ok(found);
        }
        Ok(self
            .record(id)
            .await?
            .and_then(|record| record.data().cloned()))
    }

    /// [`get_document`](Self::get_document) when memory alone answers it,
    /// without waiting: `None` when the document was left in storage (see
    /// [`OpenOptions::cache_bytes`]).
    pub fn get_in_memory(&self, id: &str) -> Result<Option<Option<Document>>> {
        let mut state = self.readable()?;
        Self::check_corrupt(&state, id)?;
        let found = match state.store.record(id) {
            None => Some(None),
            Some(record) if record.is_deleted() => Some(None),
            Some(record) => record.data().map(|document| Some(document.clone())),
        };
        if matches!(found, Some(Some(_))) {
            state.store.note_read(id);
        }
        Ok(found)
    }

    /// The live value under `id` as JSON.
    pub async fn get(&self, id: &str) -> Result<Option<serde_json::Value>> {
        Ok(self.get_document(id).await?.map(|d| d.to_value()))
    }

    /// The full record under `id`, tombstones and conflicts included, every
    /// document in memory (read back from storage when it was left there).
    pub async fn record(&self, id: &str) -> Result<Option<Record>> {
        let shared_id = {
            let mut state = self.readable()?;
            Self::check_corrupt(&state, id)?;
            match state.store.record(id) {
                None => return Ok(None),
                Some(record) if record.is_resident() => {
                    let record = record.clone();
                    state.store.note_read(id);
                    return Ok(Some(record));
                }
                Some(record) => record.shared_id().clone(),
            }
        };
        let mut result = None;
        self.visit_with_bodies(&[shared_id], |record| {
            result = Some(record.clone());
            true
        })
        .await?;
        Ok(result)
    }

    /// The concurrent versions that lost to the current value of `id`, by
    /// descending precedence. Empty when there is no conflict.
    pub async fn conflicts(&self, id: &str) -> Result<Vec<Version>> {
        Ok(self
            .record(id)
            .await?
            .map(|record| record.conflicts().to_vec())
            .unwrap_or_default())
    }

    /// Calls `visit` with the record of each of `ids` that still exists, in
    /// order, every document in memory: documents left in storage are read
    /// back, a transaction for each batch of records. Stops when `visit`
    /// returns false. Records may change between batches (a batch is read
    /// under one lock, not the whole list).
    ///
    /// What one record's read brings back stays in the cache (a `get` of a
    /// document read again soon). What a read of several brings back (a
    /// list, a query, a search) is visited from copies, which stay in the
    /// cache only while it has room, so a scan does not push out the
    /// documents in use.
    async fn visit_with_bodies(
        &self,
        ids: &[Arc<str>],
        mut visit: impl FnMut(&Record) -> bool,
    ) -> Result<()> {
        for batch in ids.chunks(BODY_READ_BATCH) {
            if batch.len() > 1 {
                match self.visit_passing_through(batch, &mut visit).await? {
                    Passed::Visited { done: true } => break,
                    Passed::Visited { done: false } => continue,
                    // Another writer superseded a record of the batch, or a
                    // commit changed one meanwhile: read it the caching way,
                    // which merges the newer row.
                    Passed::Superseded => {}
                }
            }
            let mut attempts = 0;
            let mut state = loop {
                let needed: Vec<Arc<str>> = {
                    let state = self.readable()?;
                    let needed: Vec<Arc<str>> = batch
                        .iter()
                        .filter(|id| state.store.record(id).is_some_and(|r| !r.is_resident()))
                        .cloned()
                        .collect();
                    if needed.is_empty() {
                        break state;
                    }
                    needed
                };
                // Another reader may leave a document of this batch in storage
                // again before the lock is taken back (natively, on another
                // thread): read it again, a few times at most.
                attempts += 1;
                if attempts > 3 {
                    return Err(body_missing(&needed[0]).into());
                }
                fill_bodies(&self.shared, &needed).await?;
            };
            let mut done = false;
            for id in batch {
                if let Some(record) = state.store.record(id) {
                    if !visit(record) {
                        done = true;
                        break;
                    }
                }
            }
            // What this batch brought in may push older documents out.
            state.store.make_room(0);
            if done {
                break;
            }
        }
        Ok(())
    }

    /// [`visit_with_bodies`](Self::visit_with_bodies) of one batch without
    /// pushing anything out of the cache: the rows of the records whose
    /// documents are in storage are read, each such record is visited as a
    /// copy filled from its row, and the copies then take their records'
    /// place while the cache has room.
    /// Visits nothing and answers `Superseded` when a row no longer holds a
    /// version the record left there.
    async fn visit_passing_through(
        &self,
        batch: &[Arc<str>],
        visit: &mut impl FnMut(&Record) -> bool,
    ) -> Result<Passed> {
        let needed: Vec<String> = {
            let state = self.readable()?;
            batch
                .iter()
                .filter(|id| state.store.record(id).is_some_and(|r| !r.is_resident()))
                .map(|id| id.to_string())
                .collect()
        };
        let stored = if needed.is_empty() {
            HashMap::new()
        } else {
            read_stored_bodies(&self.shared, needed).await?
        };
        let mut state = self.readable()?;
        let mut copies = Vec::new();
        for id in batch {
            let Some(record) = state.store.record(id) else {
                continue;
            };
            if record.is_resident() {
                continue;
            }
            let mut copy = record.clone();
            match stored.get(&**id) {
                Some(row) if copy.fill_bodies(row) => copies.push(copy),
                _ => return Ok(Passed::Superseded),
            }
        }
        let mut done = false;
        let mut unvisited = copies.iter().peekable();
        for id in batch {
            let record = match unvisited.peek() {
                Some(copy) if copy.shared_id() == id => unvisited.next(),
                _ => state.store.record(id),
            };
            if record.is_some_and(|record| !visit(record)) {
                done = true;
                break;
            }
        }
        // What was read fills the cache while it has room, under the same
        // lock (the records are as the copies were made from them).
        for copy in copies {
            state.store.admit_if_room(copy);
        }
        Ok(Passed::Visited { done })
    }

    /// Live records in id order, filtered by prefix, paged by cursor.
    pub async fn list(&self, options: &ListOptions) -> Result<Page> {
        let start = match &options.cursor {
            Some(cursor) if cursor.as_str() >= options.prefix.as_str() => {
                Bound::Excluded(cursor.as_str())
            }
            _ => Bound::Included(options.prefix.as_str()),
        };
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut next_cursor = None;
        let prefix = options.prefix.as_str();
        {
            let ids: Option<Vec<Arc<str>>> = {
                let state = self.readable()?;
                state.store.has_stored_bodies().then(|| {
                    live_from(&state.store, start, prefix)
                        .take(limit.saturating_add(1))
                        .map(|record| record.shared_id().clone())
                        .collect()
                })
            };
            if let Some(ids) = ids {
                return self.list_read_back(ids, limit).await;
            }
        }
        let state = self.readable()?;
        for record in live_from(&state.store, start, prefix) {
            if items.len() == limit {
                next_cursor = items.last().map(|(id, _): &(String, Document)| id.clone());
                break;
            }
            let Some(data) = record.data() else { continue };
            items.push((record.id().to_owned(), data.clone()));
        }
        Ok(Page { items, next_cursor })
    }

    /// [`list`](Self::list) of these ids (one more than `limit` when there
    /// is a next page), reading documents back from storage.
    async fn list_read_back(&self, ids: Vec<Arc<str>>, limit: usize) -> Result<Page> {
        let mut items = Vec::new();
        let mut next_cursor = None;
        let page = &ids[..ids.len().min(limit)];
        self.visit_with_bodies(page, |record| {
            if let Some(data) = record.data() {
                items.push((record.id().to_owned(), data.clone()));
            }
            true
        })
        .await?;
        if ids.len() > limit {
            next_cursor = page.last().map(|id| id.to_string());
        }
        Ok(Page { items, next_cursor })
    }

    /// Live records matching `query` (filters on top-level fields, sort,
    /// limit), as `(id, document)`. A condition on an indexed field
    /// ([`OpenOptions::indexes`]) narrows the records read; without one, a
    /// query with conditions scans every record under its prefix (and logs
    /// a warning once per set of fields, natively).
    pub async fn query(&self, query: &Query) -> Result<Vec<(String, Document)>> {
        let (results, plan) = self.query_with_plan(query).await?;
        #[cfg(not(target_arch = "wasm32"))]
        warn_scan_once(query, &plan);
        #[cfg(target_arch = "wasm32")]
        let _ = plan;
        Ok(results)
    }

    /// [`Database::query`], and which records it read.
    pub async fn query_with_plan(
        &self,
        query: &Query,
    ) -> Result<(Vec<(String, Document)>, QueryPlan)> {
        {
            let stored = {
                let state = self.readable()?;
                state
                    .store
                    .has_stored_bodies()
                    .then(|| match state.fields.plan(query) {
                        Some((field, ids)) => {
                            let plan = QueryPlan {
                                index: Some(field),
                                reads: ids.len(),
                            };
                            let ids: Vec<Arc<str>> = ids
                                .iter()
                                .filter_map(|id| state.store.record(id))
                                .map(|record| record.shared_id().clone())
                                .collect();
                            (ids, plan)
                        }
                        None => {
                            let mut reads = 0;
                            let ids: Vec<Arc<str>> = under_prefix(&state.store, &query.prefix)
                                .inspect(|_| reads += 1)
                                .filter(|record| !record.is_deleted())
                                .map(|record| record.shared_id().clone())
                                .collect();
                            (ids, QueryPlan { index: None, reads })
                        }
                    })
            };
            if let Some((ids, plan)) = stored {
                return self.query_read_back(query, ids, plan).await;
            }
        }
        let state = self.readable()?;
        if let Some((field, ids)) = state.fields.plan(query) {
            let plan = QueryPlan {
                index: Some(field),
                reads: ids.len(),
            };
            let mut live = ids.iter().filter_map(|id| {
                let record = state.store.record(id)?;
                record.data().map(|data| (record.id(), data))
            });
            return Ok((query.run_records(&mut live, false), plan));
        }
        let mut reads = 0;
        let mut live = under_prefix(&state.store, &query.prefix)
            .inspect(|_| reads += 1)
            .filter_map(|record| record.data().map(|data| (record.id(), data)));
        let results = query.run_records(&mut live, true);
        Ok((results, QueryPlan { index: None, reads }))
    }

    /// [`query_with_plan`](Self::query_with_plan) over the records `plan`
    /// picked, reading documents back from storage batch by batch: only the
    /// matches are kept until the query sorts and limits them.
    async fn query_read_back(
        &self,
        query: &Query,
        ids: Vec<Arc<str>>,
        plan: QueryPlan,
    ) -> Result<(Vec<(String, Document)>, QueryPlan)> {
        let in_id_order = plan.index.is_none();
        let stop_at = (in_id_order && query.sort.is_empty())
            .then_some(query.limit)
            .flatten();
        let mut matches: Vec<(String, Document)> = Vec::new();
        self.visit_with_bodies(&ids, |record| {
            if let Some(data) = record.data() {
                if query.matches_document(data) {
                    matches.push((record.id().to_owned(), data.clone()));
                }
            }
            stop_at.is_none_or(|limit| matches.len() < limit)
        })
        .await?;
        let mut live = matches.iter().map(|(id, data)| (id.as_str(), data));
        Ok((query.run_records(&mut live, in_id_order), plan))
    }

    /// Which records `query` would read: through which index, and how many
    /// (without running it).
    pub fn explain(&self, query: &Query) -> Result<QueryPlan> {
        let state = self.readable()?;
        if let Some((field, ids)) = state.fields.plan(query) {
            return Ok(QueryPlan {
                index: Some(field),
                reads: ids.len(),
            });
        }
        let reads = under_prefix(&state.store, &query.prefix).count();
        Ok(QueryPlan { index: None, reads })
    }

    /// Counts of live records, tombstones and records with conflicts.
    pub fn stats(&self) -> Result<DatabaseStats> {
        let state = self.readable()?;
        let mut stats = DatabaseStats::default();
        for record in state.store.records() {
            if record.is_deleted() {
                stats.tombstones += 1;
            } else {
                stats.live += 1;
            }
            if !record.conflicts().is_empty() {
                stats.conflicted += 1;
            }
            stats.cached_bytes += record.resident_bytes();
        }
        stats.records_in_storage_only = state.store.body_usage().1;
        Ok(stats)
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.shared
            .state()
            .store
            .records()
            .filter(|r| !r.is_deleted())
            .count()
    }

    /// True when there is no live record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Exactly the operations a replica with version vector `seen` lacks.
    pub async fn changes_since(&self, seen: &VersionVector) -> Result<Vec<CrdtOperation>> {
        Ok(self.changes_and_vector(seen).await?.0)
    }

    /// [`changes_since`](Self::changes_since) and the version vector, read
    /// together: the vector covers exactly what the changes bring on top of
    /// `seen`, with no commit in between. Documents left in storage are read
    /// back for the changes without entering the cache (a peer catching up
    /// does not push out what this replica reads). A version another writer
    /// of the same storage superseded meanwhile is sent as the versions that
    /// superseded it, which cover it.
    pub async fn changes_and_vector(
        &self,
        seen: &VersionVector,
    ) -> Result<(Vec<CrdtOperation>, VersionVector)> {
        let (mut ops, vector, has_stored_bodies) = {
            let state = self.readable()?;
            (
                state.store.changes_since(seen),
                state.store.version_vector().clone(),
                state.store.has_stored_bodies(),
            )
        };
        if has_stored_bodies {
            self.read_back_delta_documents(&mut ops, seen).await?;
        }
        Ok((ops, vector))
    }

    /// The next window of the changes a replica whose vector is `seen`
    /// lacks: those after the dot `after`, in dot order, about `max_bytes`
    /// of them ([`CrdtStore::changes_after`]), their documents read back
    /// from storage without entering the cache; with the dot to read on
    /// from, or `None` once this was the last window.
    pub(crate) async fn changes_window(
        &self,
        seen: &VersionVector,
        after: Option<Dot>,
        max_bytes: usize,
    ) -> Result<(Vec<CrdtOperation>, Option<Dot>)> {
        let ((mut ops, all), has_stored_bodies) = {
            let state = self.readable()?;
            (
                state.store.changes_after(seen, after, max_bytes),
                state.store.has_stored_bodies(),
            )
        };
        let last = ops.last().map(|op| op.version.dot());
        if has_stored_bodies {
            self.read_back_delta_documents(&mut ops, seen).await?;
            // What another writer of this storage superseded a version with
            // stays only up to the window's last dot: the published vector
            // a window brings must not run past what was read (beyond it,
            // that writer's commit is published as its own).
            ops.retain(|op| last.is_some_and(|last| op.version.dot() <= last));
            sort_and_dedup_by_dot(&mut ops);
        }
        Ok((ops, if all { None } else { last }))
    }

    /// Plans the changes a replica whose vector is `seen` lacks, to be read
    /// and sent chunk by chunk ([`CrdtStore::plan_changes`]), with the
    /// version vector they bring, read together: chunks of about
    /// `chunk_bytes`, without the versions up to the dot `after` names for
    /// that vector. The plan holds each version's id and dot, not the
    /// version: a database far larger than memory answers a peer that has
    /// nothing within its cache and 24 bytes a version (32 natively);
    /// [`next_planned_chunks`](Self::next_planned_chunks) reads the chunks.
    pub(crate) fn plan_changes(
        &self,
        seen: &VersionVector,
        after: impl FnOnce(&VersionVector) -> Option<Dot>,
        chunk_bytes: usize,
    ) -> Result<PlannedChanges> {
        let state = self.readable()?;
        let vector = state.store.version_vector().clone();
        let after = after(&vector);
        let plan = state.store.plan_changes(seen, after, chunk_bytes);
        Ok(PlannedChanges {
            seen: seen.clone(),
            vector,
            plan,
            next: 0,
            chunk_bytes,
            superseded: Vec::new(),
        })
    }

    /// The next chunks of `plan`, about `batch_bytes` of them (at least
    /// one), each with its index, as the database stands now, their
    /// documents read back from storage in batches without entering the
    /// cache.
    ///
    /// A planned chunk holds its planned versions still current, in dot
    /// order. A planned version superseded since (in memory, or in storage
    /// by another writer) is replaced by the current versions of its record
    /// (which cover it: the plan's vector claims it), each in the first
    /// chunk from this one on whose last dot is not below its own, or in
    /// an extra last chunk. So no chunk holds a dot beyond its planned last
    /// one, and a receiver that committed chunks `0..=k` holds, for every
    /// planned version up to their largest dot, that version or what
    /// covers it: what its resume hint lets the sender leave out. The
    /// last chunk is not given when it would exceed
    /// [`MAX_SUPERSEDING_BYTES`] (writes outran the delta: the receiver
    /// never completes it, and its next hello, resumed after the planned
    /// chunks, brings what superseded them). Empty once every chunk was
    /// given.
    pub(crate) async fn next_planned_chunks(
        &self,
        plan: &mut PlannedChanges,
        batch_bytes: usize,
    ) -> Result<Vec<(usize, Vec<CrdtOperation>)>> {
        let planned = plan.plan.chunk_count();
        let start = plan.next;
        if start > planned {
            return Ok(Vec::new());
        }
        if start == planned {
            plan.next += 1;
            plan.superseded.sort_unstable();
            plan.superseded.dedup();
            let (mut ops, has_stored_bodies) = {
                let state = self.readable()?;
                (
                    state.store.current_changes_of(&plan.superseded, &plan.seen),
                    state.store.has_stored_bodies(),
                )
            };
            plan.superseded.clear();
            let bytes: usize = ops
                .iter()
                .map(|op| CrdtOperation::encoded_len_of(&op.id, &op.version))
                .sum();
            if bytes > MAX_SUPERSEDING_BYTES && ops.len() > 1 {
                tracing::warn!(
                    bytes,
                    "sync: writes superseded too much of a delta while it was sent; the peer asks again"
                );
                return Ok(Vec::new());
            }
            if has_stored_bodies {
                self.read_back_delta_documents(&mut ops, &plan.seen).await?;
            }
            sort_and_dedup_by_dot(&mut ops);
            return Ok(vec![(planned, ops)]);
        }
        let count = (batch_bytes / plan.chunk_bytes.max(1))
            .max(1)
            .min(planned - start);
        let (mut chunks, has_stored_bodies) = {
            let state = self.readable()?;
            let mut chunks = Vec::with_capacity(count);
            for index in start..start + count {
                let (mut ops, superseded) = state.store.planned_chunk(&plan.plan, index);
                plan.superseded.extend(superseded);
                plan.place_superseding(&state.store, index, &mut ops);
                chunks.push((index, ops));
            }
            (chunks, state.store.has_stored_bodies())
        };
        plan.next += count;
        for (index, ops) in &mut chunks {
            if has_stored_bodies {
                // A version another writer of this storage superseded comes
                // back as what superseded it: beyond this chunk's last dot,
                // its record waits for a later chunk.
                self.read_back_delta_documents(ops, &plan.seen).await?;
                let last = plan.plan.last_dot(*index);
                let superseded = &mut plan.superseded;
                ops.retain(|op| {
                    let inside = op.version.dot() <= last;
                    if !inside {
                        superseded.push(op.id.clone());
                    }
                    inside
                });
            }
            sort_and_dedup_by_dot(ops);
        }
        Ok(chunks)
    }

    /// Fills the documents of `ops` (a delta for a replica whose vector is
    /// `seen`) that were left in storage, reading them in batches without
    /// putting them in the cache. A version another writer superseded
    /// meanwhile is replaced by the versions that superseded it.
    async fn read_back_delta_documents(
        &self,
        ops: &mut Vec<CrdtOperation>,
        seen: &VersionVector,
    ) -> Result<()> {
        let stored_at: Vec<usize> = (0..ops.len())
            .filter(|&at| {
                ops[at]
                    .version
                    .data
                    .as_ref()
                    .is_some_and(|b| b.document().is_none())
            })
            .collect();
        let mut superseded = Vec::new();
        let mut replacements = Vec::new();
        for batch in stored_at.chunks(BODY_READ_BATCH) {
            let mut ids: Vec<String> = batch.iter().map(|&at| ops[at].id.to_string()).collect();
            ids.dedup();
            let stored = read_stored_records(&self.shared, ids).await?;
            for &at in batch {
                let op = &mut ops[at];
                let Some(record) = stored.get(&*op.id) else {
                    return Err(body_missing(&op.id).into());
                };
                let dot = op.version.dot();
                match record.versions().iter().find(|v| v.dot() == dot) {
                    Some(version) if version.document().is_some() => {
                        op.version.data = version.data.clone();
                    }
                    _ => {
                        let mut covering = record
                            .versions()
                            .iter()
                            .filter(|v| v.clock().covers(&dot))
                            .peekable();
                        if covering.peek().is_none() {
                            return Err(body_missing(&op.id).into());
                        }
                        replacements.extend(covering.filter(|v| !seen.covers(&v.dot())).map(
                            |version| CrdtOperation {
                                id: record.shared_id().clone(),
                                version: version.clone(),
                            },
                        ));
                        superseded.push(at);
                    }
                }
            }
        }
        if !superseded.is_empty() {
            let mut at = 0;
            ops.retain(|_| {
                at += 1;
                superseded.binary_search(&(at - 1)).is_err()
            });
            ops.extend(replacements);
            // In id order as `changes_since` gives them, each version once.
            ops.sort_unstable_by(|a, b| (&a.id, a.version.dot()).cmp(&(&b.id, b.version.dot())));
            ops.dedup_by(|a, b| a.id == b.id && a.version.dot() == b.version.dot());
        }
        Ok(())
    }

    /// A stream of events (upserts, deletes, peer changes). Dropping the
    /// receiver unsubscribes.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<SyncEvent> {
        let (sender, receiver) = mpsc::unbounded();
        self.shared
            .state()
            .listeners
            .push(Listener::Unbounded(sender));
        receiver
    }

    /// Like [`subscribe`](Self::subscribe), but at most about `capacity`
    /// events wait in the queue: a subscriber that falls further behind is
    /// unsubscribed (its stream ends after the events already queued), so a
    /// slow reader never grows memory nor blocks writers.
    pub fn subscribe_bounded(&self, capacity: usize) -> mpsc::Receiver<SyncEvent> {
        let (sender, receiver) = mpsc::channel(capacity);
        self.shared
            .state()
            .listeners
            .push(Listener::Bounded(sender));
        receiver
    }

    /// A stream of committed batches, for sync transports: those written by
    /// this instance or another instance of the same storage, never what
    /// came from peers (they have it). A feed of those held every document
    /// a large delta brought until the session got to skip them: a fresh
    /// peer taking in a million notes kept them all in memory, whatever its
    /// cache.
    pub fn subscribe_commits(&self) -> mpsc::UnboundedReceiver<Arc<CommittedBatch>> {
        let (sender, receiver) = mpsc::unbounded();
        self.shared.state().commit_listeners.push(sender);
        receiver
    }

    /// Delivers an event that did not come from a commit (peer changes).
    pub fn emit(&self, event: SyncEvent) {
        let mut state = self.shared.state();
        state
            .listeners
            .retain_mut(|listener| listener.send(event.clone()));
    }

    /// Waits for queued writes to finish, then closes: later calls fail
    /// with [`StorageError::Closed`] and the actor slot is released.
    pub async fn close(&self) -> Result<()> {
        let (reply, receiver) = oneshot::channel();
        if self.jobs.unbounded_send(Job::Close(reply)).is_ok() {
            let _ = receiver.await;
        }
        let already_closed = {
            let mut state = self.shared.state();
            let already_closed = state.closed;
            state.closed = true;
            state.listeners.clear();
            state.commit_listeners.clear();
            already_closed
        };
        if !already_closed {
            self.shared.storage.close().await?;
        }
        self.shared
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(())
    }

    /// True once [`close`](Self::close) has run.
    pub fn is_closed(&self) -> bool {
        self.shared.state().closed
    }
}

/// Brings a database written by an older format up to [`FORMAT_VERSION`].
/// Runs before the open commit, which records the new format version.
fn migrate(from: u32) {
    // 1 -> 2 added persisted index segments. Nothing stored changes: with no
    // segments stored, the index is built from the records' embeddings on
    // open. Later steps that rewrite data go here, one per version.
    tracing::info!(from, to = FORMAT_VERSION, "migrating the database format");
}

async fn await_reply(receiver: oneshot::Receiver<Result<()>>) -> Result<()> {
    receiver
        .await
        .map_err(|_| Error::Storage(StorageError::Closed))?
}

/// What another open instance (tab) is told about a commit: a flag byte (0:
/// written through that instance, 1: received from a sync peer) and the
/// operations in the batch encoding. The flag keeps tabs from re-publishing
/// what peers sent, which would echo between devices.
fn encode_announcement<'a>(
    from_peer: bool,
    count: usize,
    ops: impl IntoIterator<Item = &'a CrdtOperation>,
) -> Vec<u8> {
    let mut writer = crate::codec::Writer::new();
    writer.u8(u8::from(from_peer));
    crate::crdt::write_operations(&mut writer, count, ops);
    writer.finish()
}

fn decode_announcement(bytes: &[u8]) -> std::result::Result<(Origin, Vec<CrdtOperation>), String> {
    let (flag, rest) = bytes
        .split_first()
        .ok_or_else(|| "an empty announcement".to_owned())?;
    let origin = match flag {
        0 => Origin::OtherInstance,
        1 => Origin::Peer("another instance".to_owned()),
        other => return Err(format!("unknown announcement origin {other}")),
    };
    let ops = decode_operations(rest).map_err(|e| e.to_string())?;
    Ok((origin, ops))
}

/// Applies batches that other instances of the same storage committed (and
/// announced) to this instance's memory. They are already durable.
///
/// An instance that only merges what others announce runs no storage
/// upkeep, so it would never learn that storage came to read records back
/// (another instance listed every part): every quarter of its cache (at
/// most [`LOOK_AGAIN_AFTER_BYTES`]) merged, it asks storage, and bounds its
/// documents once storage does.
async fn run_announcement_listener<S: Storage>(
    shared: std::sync::Weak<Shared<S>>,
    mut announcements: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut merged_since_look = 0usize;
    while let Some(bytes) = announcements.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (origin, ops) = match decode_announcement(&bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(%error, "ignoring an undecodable announcement");
                continue;
            }
        };
        let now = shared.clock.now_ms();
        {
            let mut state = shared.state();
            if state.closed {
                return;
            }
            // Merging in memory needs no document left in storage: nothing
            // is written, and the other instance stored the merged row.
            let preview = state.store.preview(&ops);
            let changes = state.store.install(preview, &ops, None, now);
            index_changes(&mut state, &changes, vector::carries_vectors(&ops));
            state.store.make_room(0);
            let job = CommittedBatch {
                origin,
                ops,
                vector: Arc::new(state.store.version_vector().clone()),
            };
            notify(&mut state, &changes, std::slice::from_ref(&job));
        }
        if shared.cache_bytes == usize::MAX || shared.storage.reads_records() {
            continue;
        }
        merged_since_look = merged_since_look.saturating_add(bytes.len());
        if merged_since_look < (shared.cache_bytes / 4).min(LOOK_AGAIN_AFTER_BYTES) {
            continue;
        }
        merged_since_look = 0;
        match shared.storage.learn_whether_records_read_back().await {
            Ok(true) => bound_documents_once_storage_reads_back(&shared),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not ask storage whether it reads back"),
        }
    }
}

/// The most bytes of announcements an instance whose documents are not yet
/// bounded merges before it asks storage again whether it reads records
/// back.
const LOOK_AGAIN_AFTER_BYTES: usize = 1024 * 1024;

async fn run_committer<S: Storage>(shared: Arc<Shared<S>>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut next_job = None;
    loop {
        let job = match next_job.take() {
            Some(job) => job,
            None => match jobs.next().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut batch = Vec::new();
        let mut close = None;
        let mut flushes = Vec::new();
        match job {
            Job::Commit(job) => batch.push(job),
            Job::Maintain => {}
            Job::Flush(reply) => flushes.push(reply),
            Job::Close(reply) => close = Some(reply),
        }
        // Group commit: everything already queued goes into this transaction.
        while close.is_none() {
            match jobs.try_recv() {
                Ok(Job::Commit(job)) => batch.push(job),
                Ok(Job::Maintain) => {}
                Ok(Job::Flush(reply)) => flushes.push(reply),
                Ok(Job::Close(reply)) => close = Some(reply),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_jobs(&shared, batch).await;
            // Writers before sealing: when the callers just answered send
            // more (a bulk load), commit that first, while the growing
            // segment may still grow (`VectorIndex::seal_can_wait`).
            if flushes.is_empty() && close.is_none() && shared.state().index.seal_can_wait() {
                crate::platform::yield_to_callers().await;
                if let Ok(job) = jobs.try_recv() {
                    next_job = Some(job);
                    continue;
                }
            }
        }
        // Index upkeep after the writers got their answers.
        vector::maintain(&shared, !flushes.is_empty()).await;
        for reply in flushes {
            let _ = reply.send(());
        }
        if let Some(reply) = close {
            let _ = reply.send(());
            return;
        }
        // (A full compaction within a commit may have let storage read
        // records back.)
        bound_documents_once_storage_reads_back(&shared);
        // Storage upkeep waits until writes pause: the callers whose
        // promises just resolved have had their turn and queued nothing.
        // So an awaited write does not wait for it, and a run of awaited
        // writes puts it off (the backend then does it at once, rarely).
        // Except the upkeep that lets storage read records back, while
        // documents are unbounded without it: a peer's whole database
        // coming in never pauses, and every document would stay in memory.
        let bounds_documents = shared.cache_bytes != usize::MAX
            && !shared.storage.reads_records()
            && shared.storage.reads_records_after_housekeeping();
        if bounds_documents || shared.storage.housekeeping_due() {
            if !bounds_documents {
                // A write queued meanwhile is taken at once, not after the
                // yield.
                let mut paused = Box::pin(platform::yield_to_callers());
                let next = futures::future::poll_fn(|cx| match jobs.poll_next_unpin(cx) {
                    std::task::Poll::Ready(job) => std::task::Poll::Ready(Some(job)),
                    std::task::Poll::Pending => {
                        std::future::Future::poll(paused.as_mut(), cx).map(|()| None)
                    }
                })
                .await;
                match next {
                    Some(Some(job)) => {
                        next_job = Some(job);
                        continue;
                    }
                    Some(None) => return,
                    None => {}
                }
            }
            match shared.storage.housekeeping().await {
                Ok(Some(generation)) => shared.state().generation = generation,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "storage upkeep failed; it is retried later"),
            }
            bound_documents_once_storage_reads_back(&shared);
        }
    }
}

/// Keeps documents within the cache from now on when storage came to read
/// records back after the database opened (IndexedDB, once a database that
/// was small when opened grew large and its upkeep listed every part).
/// Every record in memory is committed, so its row is in storage.
fn bound_documents_once_storage_reads_back<S: Storage>(shared: &Shared<S>) {
    if shared.cache_bytes == usize::MAX || !shared.storage.reads_records() {
        return;
    }
    let mut state = shared.state();
    if !state.store.keeps_bodies_within_a_budget() {
        state.store.keep_bodies_within(shared.cache_bytes);
    }
}

/// Sorts operations by dot and drops repeats of one version (a record's
/// current versions may be added to a chunk that holds one of them).
fn sort_and_dedup_by_dot(ops: &mut Vec<CrdtOperation>) {
    ops.sort_unstable_by(|a, b| (a.version.dot(), &a.id).cmp(&(b.version.dot(), &b.id)));
    ops.dedup_by(|a, b| a.version.dot() == b.version.dot() && a.id == b.id);
}

/// Changes planned for a replica, read chunk by chunk
/// ([`Database::plan_changes`]).
#[derive(Debug)]
pub(crate) struct PlannedChanges {
    /// The replica's vector.
    seen: VersionVector,
    /// This database's vector when the plan was made: what the changes
    /// bring the replica to.
    pub vector: VersionVector,
    plan: crate::crdt::ChangePlan,
    /// The first chunk not given yet.
    next: usize,
    chunk_bytes: usize,
    /// Records whose planned versions were superseded by the time their
    /// chunk was read, and whose current versions lie beyond the chunks
    /// read so far.
    superseded: Vec<Arc<str>>,
}

/// The most bytes the last chunk of a planned delta (the versions that
/// superseded planned ones while it was sent, beyond the planned chunks)
/// may take, unless it holds one version.
pub(crate) const MAX_SUPERSEDING_BYTES: usize = 2 * 1024 * 1024;

impl PlannedChanges {
    /// How many chunks: the planned ones and the last one, of what
    /// superseded planned versions meanwhile (empty as a rule).
    pub fn chunk_count(&self) -> usize {
        self.plan.chunk_count() + 1
    }

    /// Adds to `ops` (chunk `index`) the current versions of the records
    /// whose planned versions were superseded, with dots up to the chunk's
    /// last; the records with later ones wait for a later chunk.
    fn place_superseding(&mut self, store: &CrdtStore, index: usize, ops: &mut Vec<CrdtOperation>) {
        if self.superseded.is_empty() {
            return;
        }
        self.superseded.sort_unstable();
        self.superseded.dedup();
        let last = self.plan.last_dot(index);
        let mut later = Vec::new();
        for op in store.current_changes_of(&self.superseded, &self.seen) {
            if op.version.dot() <= last {
                ops.push(op);
            } else {
                later.push(op.id);
            }
        }
        later.dedup();
        self.superseded = later;
    }
}

/// Records encoded per chunk of a streamed commit.
#[cfg(not(target_arch = "wasm32"))]
const ENCODE_CHUNK: usize = 2048;

/// Commits a large batch while encoding it: the first chunk of rows starts
/// the storage transaction, the rest follow in chunks while storage writes,
/// and once everything is encoded the part of installing the batch that needs
/// no lock (`Preview::stage`) runs while the transaction is still going.
#[cfg(not(target_arch = "wasm32"))]
async fn commit_streamed<S: Storage>(
    shared: &Shared<S>,
    batch: CommitBatch,
    records: crate::crdt::Preview,
    encode: impl Fn(&[Record]) -> Vec<(String, Vec<u8>)>,
) -> (
    Result<Option<crate::storage::CommitReceipt>, StorageError>,
    crate::crdt::Preview,
) {
    use crate::storage::StreamedRows;

    let batch = CommitBatch {
        records: encode(&records.records()[..ENCODE_CHUNK]),
        ..batch
    };
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    let encode_rest = async move {
        let mut records = records;
        for chunk in records.records()[ENCODE_CHUNK..].chunks(ENCODE_CHUNK) {
            if sender
                .unbounded_send(StreamedRows::More(encode(chunk)))
                .is_err()
            {
                // Storage gave up (its error is the commit's result).
                return records;
            }
        }
        let _ = sender.unbounded_send(StreamedRows::Complete);
        records.stage();
        records
    };
    // Storage's future is polled first, so it starts before encoding.
    let (result, records) =
        futures::join!(shared.storage.commit_streamed(batch, receiver), encode_rest);
    (result.map(Some), records)
}

async fn commit_jobs<S: Storage>(shared: &Shared<S>, jobs: Vec<CommitJob>) {
    let mut ops: Vec<CrdtOperation> = Vec::new();
    let mut spans = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut peer_vector: Option<VersionVector> = None;
    let mut extra_meta: Vec<(String, Vec<u8>)> = Vec::new();
    for job in jobs {
        extra_meta.extend(job.meta);
        if let Some(vector) = &job.peer_vector {
            peer_vector
                .get_or_insert_with(VersionVector::new)
                .merge(vector);
        }
        let start = ops.len();
        ops.extend(job.ops);
        spans.push((job.origin, start..ops.len()));
        replies.push(job.reply);
    }

    // Records whose documents were left in storage are filled before a
    // peer's versions are merged into them: the merged record is written
    // whole. (This replica's own writes supersede what they merge into.)
    let (records, batch) = {
        let mut state = {
            let mut attempts = 0;
            loop {
                let needed = {
                    let state = shared.state();
                    let needed = state.store.bodies_needed_by(&ops);
                    if needed.is_empty() {
                        break state;
                    }
                    needed
                };
                // Another reader may push a document out again before the
                // lock is taken back: read it again, a few times at most.
                attempts += 1;
                let filled = if attempts > 3 {
                    Err(body_missing(&needed[0]).into())
                } else {
                    fill_bodies(shared, &needed).await
                };
                if let Err(error) = filled {
                    tracing::warn!(%error, "a document left in storage could not be read back; the batch was not written");
                    shared.state().store.abandon(&ops);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                    return;
                }
            }
        };
        let records = state.store.preview(&ops);
        state.store.make_room(0);
        let mut vector_after = state.store.version_vector().clone();
        for op in &ops {
            let dot = op.version.dot();
            if dot.actor == state.store.actor() {
                vector_after.raise(dot.actor, dot.seq);
            } else {
                vector_after.advance(&dot);
            }
        }
        if let Some(peer) = &peer_vector {
            vector_after.merge(peer);
        }
        let mut meta = Vec::with_capacity(2);
        if &vector_after != state.store.version_vector() {
            meta.push((
                meta_keys::VERSION_VECTOR.to_owned(),
                vector_after.to_bytes(),
            ));
        }
        meta.push((
            meta_keys::HLC.to_owned(),
            encode_hlc(state.store.last_hlc()),
        ));
        meta.extend(extra_meta.iter().cloned());
        let batch = CommitBatch {
            expected_generation: state.generation,
            meta,
            ..Default::default()
        };
        (records, batch)
    };
    if let Some(record) = records
        .records()
        .iter()
        .find(|record| !record.is_resident())
    {
        // Never expected (the documents were filled above): refuse to write
        // a record without its documents rather than lose them.
        let error = Error::Storage(body_missing(record.id()));
        tracing::error!(%error, "a record to commit lacks a document; the batch was not written");
        shared.state().store.abandon(&ops);
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    // Encode outside the lock: readers are not held up by a large batch.
    let encode = |chunk: &[Record]| -> Vec<(String, Vec<u8>)> {
        chunk
            .iter()
            .map(|record| (record.id().to_owned(), record.to_bytes()))
            .collect()
    };
    #[cfg_attr(target_arch = "wasm32", allow(unused_labels))]
    let (result, records) = 'commit: {
        // Natively, where SQLite writes on a thread of its own, a large batch
        // is encoded while it is written. In the browser everything runs on
        // one thread, so that would only add code to the download.
        #[cfg(not(target_arch = "wasm32"))]
        if records.records().len() > ENCODE_CHUNK {
            break 'commit commit_streamed(shared, batch, records, encode).await;
        }
        let batch = CommitBatch {
            records: encode(records.records()),
            ..batch
        };
        if batch.records.is_empty() && peer_vector.is_none() && extra_meta.is_empty() {
            // Nothing new (duplicates or superseded versions): no transaction.
            (Ok(None), records)
        } else {
            (shared.storage.commit(batch).await.map(Some), records)
        }
    };

    match result {
        Ok(receipt) => {
            let mut records = records;
            let mut generation = None;
            let mut merged_from_storage = false;
            let mut foreign = Foreign::default();
            if let Some(receipt) = receipt {
                generation = Some(receipt.generation);
                merged_from_storage = !receipt.merged_records.is_empty();
                for (id, bytes) in receipt.merged_records {
                    match Record::from_bytes(&bytes) {
                        Ok(merged) => records.replace(merged),
                        Err(e) => tracing::warn!(%id, error = %e, "merged row failed to decode"),
                    }
                }
                foreign = Foreign::decode(receipt.foreign_records, receipt.foreign_meta);
            }
            let now = shared.clock.now_ms();
            let mut state = shared.state();
            if let Some(generation) = generation {
                state.generation = generation;
            }
            for (key, value) in extra_meta {
                state.sync_meta.insert(key, value);
            }
            let mut changes = state
                .store
                .install(records, &ops, peer_vector.as_ref(), now);
            let foreign_ops = foreign.merge_into(&mut state.store, &mut changes, now);
            index_changes(
                &mut state,
                &changes,
                merged_from_storage || !foreign_ops.is_empty() || vector::carries_vectors(&ops),
            );
            // Only once the indexes read the new documents.
            state.store.make_room(0);
            if !state.corrupt.is_empty() {
                for change in &changes {
                    state.corrupt.remove(&*change.id);
                }
            }
            // The commit feed copies operations only when someone listens.
            let batches: Vec<CommittedBatch> = if state.commit_listeners.is_empty() {
                Vec::new()
            } else {
                let vector = Arc::new(state.store.version_vector().clone());
                // What other writers stored comes first: it committed first.
                (!foreign_ops.is_empty())
                    .then(|| CommittedBatch {
                        origin: Origin::OtherInstance,
                        ops: foreign_ops,
                        vector: vector.clone(),
                    })
                    .into_iter()
                    .chain(
                        spans
                            .iter()
                            // The feed carries nothing from peers: no copy.
                            .filter(|(origin, _)| !matches!(origin, Origin::Peer(_)))
                            .map(|(origin, range)| CommittedBatch {
                                origin: origin.clone(),
                                ops: ops[range.clone()].to_vec(),
                                vector: vector.clone(),
                            }),
                    )
                    .collect()
            };
            notify(&mut state, &changes, &batches);
            drop(state);
            // Other tabs learn of this commit; they publish what was written
            // locally, never what came from peers (the peers have it).
            if shared.announces {
                for from_peer in [false, true] {
                    let spans_of = || {
                        spans.iter().filter(move |(origin, _)| {
                            matches!(origin, Origin::Peer(_)) == from_peer
                        })
                    };
                    let count: usize = spans_of().map(|(_, range)| range.len()).sum();
                    if count > 0 {
                        let announced = spans_of().flat_map(|(_, range)| &ops[range.clone()]);
                        shared
                            .storage
                            .announce(&encode_announcement(from_peer, count, announced));
                    }
                }
            }
            for reply in replies {
                let _ = reply.send(Ok(()));
            }
        }
        Err(error) => {
            tracing::warn!(%error, "commit failed; the batch was not written");
            shared.state().store.abandon(&ops);
            let error = Error::Storage(error);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Indexes again the records that an append-only backend (IndexedDB) handed
/// over in several rows while opening: each row was indexed as it came, so
/// the index holds whichever came last, not the merged record's winner.
/// A winner whose document was left in storage meanwhile is read back (a
/// batch per transaction); such ids are the records written again since
/// storage last folded its rows, usually few.
async fn reindex_repeated_rows<S: Storage>(
    storage: &S,
    store: &CrdtStore,
    fields: &mut FieldIndexes,
    repeated: Vec<Arc<str>>,
) -> Result<()> {
    if fields.is_empty() {
        return Ok(());
    }
    let mut unread = Vec::new();
    for id in repeated {
        match store.record(&id) {
            Some(record) if !record.is_deleted() && record.data().is_none() => unread.push(id),
            record => fields.index_as(&id, record),
        }
    }
    for batch in unread.chunks(BODY_READ_BATCH) {
        let rows = storage
            .read_records(batch.iter().map(|id| id.to_string()).collect())
            .await?;
        for (id, row) in rows {
            let Some((id, record)) = store.record(&id).map(|r| (r.shared_id(), r)) else {
                continue;
            };
            let Ok(stored) = Record::from_bytes(&row) else {
                continue;
            };
            let mut copy = record.clone();
            // A row another writer superseded since the load leaves the
            // entry as it is; reading the record merges the newer row and
            // indexes it then.
            if copy.fill_bodies(&stored) {
                fields.index_as(id, Some(&copy));
            }
        }
    }
    Ok(())
}

/// The error of a read that needs a document storage no longer holds.
fn body_missing(id: &str) -> StorageError {
    StorageError::Corrupt {
        store: "records".into(),
        key: id.to_owned(),
        reason: "the stored row no longer holds a document this replica left in storage".into(),
    }
}

/// Stored rows of `ids` holding every document their records left in
/// storage, decoded. Each is looked for first where its bodies' hints point
/// (the row a record was loaded from, which then holds them: one read of a
/// known place, in one transaction for all); the rest are read whole with
/// [`read_stored_records`]. A row from a hint may be older than the id's
/// merged row: a write another instance stored but never announced is then
/// not seen, just as it is not for a record whose documents are in memory.
async fn read_stored_bodies<S: Storage>(
    shared: &Shared<S>,
    ids: Vec<String>,
) -> Result<HashMap<String, Record>> {
    let wanted: Vec<(String, u32)> = {
        let state = shared.state();
        ids.iter()
            .flat_map(|id| {
                let hints = state.store.record(id).map(Record::storage_hints);
                hints
                    .unwrap_or_default()
                    .into_iter()
                    .map(|hint| (id.clone(), hint))
            })
            .collect()
    };
    let mut found = HashMap::new();
    if !wanted.is_empty() {
        // A row that does not decode is read again whole, which reports it.
        let rows = shared.storage.read_rows_at(wanted).await?;
        let state = shared.state();
        for (id, bytes) in rows {
            let Ok(stored) = Record::from_stored_bytes(&bytes) else {
                continue;
            };
            if stored.id() == id
                && state
                    .store
                    .record(&id)
                    .is_some_and(|current| current.bodies_found_in(&stored))
            {
                found.insert(id, stored);
            }
        }
    }
    let rest: Vec<String> = ids
        .into_iter()
        .filter(|id| !found.contains_key(id))
        .collect();
    if !rest.is_empty() {
        found.extend(read_stored_records(shared, rest).await?);
    }
    Ok(found)
}

/// The stored records of `ids` (those that exist), decoded.
async fn read_stored_records<S: Storage>(
    shared: &Shared<S>,
    ids: Vec<String>,
) -> Result<HashMap<String, Record>> {
    let rows = shared.storage.read_records(ids).await?;
    let mut records = HashMap::with_capacity(rows.len());
    for (id, bytes) in rows {
        match Record::from_stored_bytes(&bytes) {
            Ok(record) if record.id() == id => {
                records.insert(id, record);
            }
            Ok(record) => {
                let reason = format!("row holds record `{}` under another key", record.id());
                return Err(StorageError::Corrupt {
                    store: "records".into(),
                    key: id,
                    reason,
                }
                .into());
            }
            Err(error) => {
                return Err(StorageError::Corrupt {
                    store: "records".into(),
                    key: id,
                    reason: error.to_string(),
                }
                .into())
            }
        }
    }
    Ok(records)
}

/// Reads the rows of `ids` back from storage and fills the documents their
/// records left there (they stay until a later `make_room`). A row showing
/// that another writer of the same storage superseded a version this
/// replica holds is merged as a stale commit merges what other writers
/// stored.
async fn fill_bodies<S: Storage>(shared: &Shared<S>, ids: &[Arc<str>]) -> Result<()> {
    let stored = read_stored_bodies(shared, ids.iter().map(|id| id.to_string()).collect()).await?;
    let now = shared.clock.now_ms();
    let mut state = shared.state();
    if state.closed {
        return Err(StorageError::Closed.into());
    }
    let mut behind = Vec::new();
    for record in stored.into_values() {
        if !state.store.fill_bodies(&record) {
            behind.push(record);
        }
    }
    if !behind.is_empty() {
        let mut changes = Vec::new();
        let foreign = Foreign {
            records: behind,
            ..Foreign::default()
        };
        let ops = foreign.merge_into(&mut state.store, &mut changes, now);
        index_changes(&mut state, &changes, true);
        let batch = CommittedBatch {
            origin: Origin::OtherInstance,
            ops,
            vector: Arc::new(state.store.version_vector().clone()),
        };
        notify(&mut state, &changes, std::slice::from_ref(&batch));
    }
    Ok(())
}

/// What a stale commit read back from other writers of the same storage
/// (`CommitReceipt::foreign_records` and `foreign_meta`), decoded.
#[derive(Default)]
struct Foreign {
    records: Vec<Record>,
    vector: Option<VersionVector>,
    hlc: Option<crate::crdt::Hlc>,
}

impl Foreign {
    fn decode(rows: Vec<(String, Vec<u8>)>, meta: Vec<(String, Vec<u8>)>) -> Self {
        let mut foreign = Foreign::default();
        for (id, bytes) in rows {
            match Record::from_stored_bytes(&bytes) {
                Ok(record) if record.id() == id => foreign.records.push(record),
                Ok(_) => tracing::warn!(%id, "another writer's row holds another record"),
                Err(error) => tracing::warn!(%id, %error, "another writer's row failed to decode"),
            }
        }
        for (key, bytes) in meta {
            match key.as_str() {
                meta_keys::VERSION_VECTOR => {
                    foreign.vector = VersionVector::from_bytes(&bytes).ok()
                }
                meta_keys::HLC => foreign.hlc = decode_hlc(&bytes).ok(),
                _ => {}
            }
        }
        foreign
    }

    /// Merges everything into `store`, adding the changes; returns the
    /// versions that were new here, for the commit feed.
    fn merge_into(
        self,
        store: &mut CrdtStore,
        changes: &mut Vec<Change>,
        now_ms: u64,
    ) -> Vec<CrdtOperation> {
        let mut ops = Vec::new();
        if self.records.is_empty() && self.vector.is_none() && self.hlc.is_none() {
            // Not a stale commit: the common case costs nothing.
            return ops;
        }
        let mut already: Vec<Arc<str>> = changes.iter().map(|change| change.id.clone()).collect();
        already.sort_unstable();
        for record in self.records {
            let versions: Vec<CrdtOperation> = record
                .versions()
                .iter()
                .map(|version| CrdtOperation {
                    id: record.shared_id().clone(),
                    version: version.clone(),
                })
                .collect();
            if let Some(change) = store.merge_stored(record, now_ms) {
                if already.binary_search(&change.id).is_err() {
                    changes.push(change);
                }
                ops.extend(versions);
            }
        }
        // Only after every row is merged: the vector claims them.
        if let Some(vector) = &self.vector {
            store.merge_stored_vector(vector);
        }
        if let Some(hlc) = self.hlc {
            store.observe_hlc(hlc, now_ms);
        }
        ops
    }
}

/// The live records from `start` on whose ids start with `prefix`.
fn live_from<'a>(
    store: &'a CrdtStore,
    start: Bound<&'a str>,
    prefix: &'a str,
) -> impl Iterator<Item = &'a Record> {
    store
        .records_in((start, Bound::Unbounded))
        .take_while(move |record| record.id().starts_with(prefix))
        .filter(|record| !record.is_deleted())
}

/// Every record (tombstones included) whose id starts with `prefix`.
fn under_prefix<'a>(store: &'a CrdtStore, prefix: &'a str) -> impl Iterator<Item = &'a Record> {
    store
        .records_in((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |record| record.id().starts_with(prefix))
}

/// A query with conditions that scans at least this many records is worth
/// a warning (once per set of fields): an index would read fewer.
pub const SCAN_WARNING_READS: usize = 1000;

/// The fields of a query worth a scan warning (`"category, score"`), or
/// `None` when it used an index, has no conditions or read few records.
pub(crate) fn scan_warning(query: &Query, plan: &QueryPlan) -> Option<String> {
    if plan.index.is_some() || query.filters.is_empty() || plan.reads < SCAN_WARNING_READS {
        return None;
    }
    let mut fields: Vec<&str> = Vec::new();
    for filter in &query.filters {
        if !fields.contains(&filter.field.as_str()) {
            fields.push(&filter.field);
        }
    }
    Some(fields.join(", "))
}

/// Logs, once per process and set of fields, that a query scanned.
#[cfg(not(target_arch = "wasm32"))]
fn warn_scan_once(query: &Query, plan: &QueryPlan) {
    static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Some(fields) = scan_warning(query, plan) else {
        return;
    };
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.len() < 256 && !warned.contains(&fields) {
        tracing::warn!(
            %fields,
            reads = plan.reads,
            "a query read every record under its prefix because none of these fields is indexed; declare one in `indexes` to read only the records that can match"
        );
        warned.push(fields);
    }
}

/// Brings the vector index and the field indexes up to date with changes.
fn index_changes(state: &mut State, changes: &[Change], may_carry_vectors: bool) {
    vector::sync_index(state, changes, may_carry_vectors);
    let State { fields, store, .. } = state;
    fields.apply(changes, store);
}

fn notify(state: &mut State, changes: &[Change], batches: &[CommittedBatch]) {
    if !changes.is_empty() && !state.listeners.is_empty() {
        let events: Vec<SyncEvent> = changes
            .iter()
            .map(|change| match change.kind {
                ChangeKind::Upsert => SyncEvent::Upsert {
                    id: change.id.to_string(),
                },
                ChangeKind::Delete => SyncEvent::Delete {
                    id: change.id.to_string(),
                },
            })
            .collect();
        state
            .listeners
            .retain_mut(|listener| events.iter().all(|event| listener.send(event.clone())));
    }
    if state.commit_listeners.is_empty() {
        return;
    }
    for batch in batches {
        if batch.ops.is_empty() || matches!(batch.origin, Origin::Peer(_)) {
            continue;
        }
        let batch = Arc::new(batch.clone());
        state
            .commit_listeners
            .retain(|listener| listener.unbounded_send(batch.clone()).is_ok());
    }
}

#[cfg(test)]
mod announcement_tests {
    use super::*;

    #[test]
    fn announcements_keep_their_origin_and_operations() {
        let mut store = CrdtStore::new(ActorId::from_bytes([7; 16]));
        let ops: Vec<CrdtOperation> = (0..3)
            .map(|n| {
                let data = Document::from_value(&serde_json::json!({ "n": n })).unwrap();
                store.put(&format!("k{n}"), data, 1_700_000_000_000 + n)
            })
            .collect();
        for (from_peer, origin) in [
            (false, Origin::OtherInstance),
            (true, Origin::Peer("another instance".to_owned())),
        ] {
            // Gathered from two slices, as a commit of several jobs is.
            let message = encode_announcement(from_peer, 3, ops[..1].iter().chain(&ops[1..]));
            assert_eq!(decode_announcement(&message), Ok((origin, ops.clone())));
        }
        assert!(decode_announcement(&[]).is_err());
        assert!(decode_announcement(&[9, 1, 0, 0, 0, 0]).is_err());
        assert!(decode_announcement(&[0, 1, 5, 0, 0, 0]).is_err());
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod planned_changes_tests {
    use super::*;
    use crate::storage::SqliteStorage;
    use serde_json::json;

    /// A delta read chunk by chunk from a database whose documents are
    /// mostly in storage: every planned chunk once, in order, each in dot
    /// order within its span; the versions that superseded planned ones
    /// while it was read travel in the last chunk, so a replica that takes
    /// it all and adopts its vector holds everything the vector claims.
    #[tokio::test]
    async fn a_delta_read_chunk_by_chunk_carries_what_superseded_planned_versions() {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            cache_bytes: 16 * 1024,
            ..OpenOptions::default()
        };
        let storage = SqliteStorage::open(dir.path().join("a.db")).unwrap();
        let db = Database::open(storage, options).await.unwrap();
        let pad = "x".repeat(200);
        let entries = (0..2_000).map(|i| {
            let document = Document::from_value(&json!({ "i": i, "pad": pad })).unwrap();
            (format!("k{i:04}"), document)
        });
        db.put_many(entries).await.unwrap();
        let seen = VersionVector::new();
        let mut plan = db.plan_changes(&seen, |_| None, 16 * 1024).unwrap();
        let vector = plan.vector.clone();
        let count = plan.chunk_count();
        assert!(count > 10, "{count} chunks");
        let mut chunks = db.next_planned_chunks(&mut plan, 32 * 1024).await.unwrap();
        assert_eq!(chunks.len(), 2);
        // Writes supersede planned versions: one already read (sent as it
        // was), two of chunks not read yet.
        db.put("k0000", json!({ "again": 0 })).await.unwrap();
        db.put("k1999", json!({ "again": 1999 })).await.unwrap();
        db.delete("k1500").await.unwrap();
        // And a peer's write after a gap in its sequence (the vector does
        // not move), by a writer whose dots come before every planned one:
        // it goes in the chunk that planned what it supersedes.
        let low = ActorId::from_bytes([0; 16]);
        let planned_k1800 = db
            .shared
            .state()
            .store
            .record("k1800")
            .unwrap()
            .winner()
            .clone();
        let superseding = CrdtOperation {
            id: "k1800".into(),
            version: Version::new(
                crate::crdt::Dot { actor: low, seq: 5 },
                planned_k1800.clock().clone(),
                crate::crdt::Hlc {
                    wall_ms: { planned_k1800.hlc.wall_ms } + 1,
                    logical: 0,
                },
                Some(crate::crdt::Body::Resident(
                    Document::from_value(&json!({ "from": "low" })).unwrap(),
                )),
                None,
            ),
        };
        db.apply_remote(vec![superseding.clone()], Origin::Peer("low".into()), None)
            .await
            .unwrap();
        assert!(!db.version_vector().covers(&superseding.version.dot()));
        loop {
            let next = db.next_planned_chunks(&mut plan, 32 * 1024).await.unwrap();
            if next.is_empty() {
                break;
            }
            chunks.extend(next);
        }
        let indices: Vec<usize> = chunks.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, (0..count).collect::<Vec<_>>());
        for (_, ops) in &chunks[..count - 1] {
            assert!(ops
                .windows(2)
                .all(|pair| pair[0].version.dot() < pair[1].version.dot()));
            assert!(ops.iter().all(|op| op.version.document().is_some()));
        }
        let last: Vec<&str> = chunks[count - 1].1.iter().map(|op| &*op.id).collect();
        assert_eq!(last, vec!["k1999", "k1500"]);
        // The peer's write is in the chunk that planned k1800's version,
        // first (its dot is the smallest), and no chunk holds a dot beyond
        // its planned last one.
        let planned_in = chunks
            .iter()
            .position(|(_, ops)| {
                ops.iter()
                    .any(|op| &*op.id == "k1799" || &*op.id == "k1801")
            })
            .unwrap();
        assert_eq!(
            chunks[planned_in].1[0].version.dot(),
            superseding.version.dot()
        );
        for (index, ops) in &chunks[..count - 1] {
            let last = plan.plan.last_dot(*index);
            assert!(ops.iter().all(|op| op.version.dot() <= last));
        }
        // A replica that took it all holds what the vector claims.
        let mut replica = CrdtStore::new(ActorId::from_bytes([9; 16]));
        let ops: Vec<CrdtOperation> = chunks.into_iter().flat_map(|(_, ops)| ops).collect();
        replica.apply_delta(ops, &vector, 1);
        for i in 0..2_000 {
            let id = format!("k{i:04}");
            let record = replica
                .record(&id)
                .unwrap_or_else(|| panic!("{id} missing"));
            assert!(record.is_resident());
        }
        assert!(replica.record("k1500").unwrap().is_deleted());
        assert_eq!(
            replica.get("k1999").map(|d| d.as_str().to_owned()),
            Some(r#"{"again":1999}"#.to_owned())
        );
        assert_eq!(
            replica.get("k1800").map(|d| d.as_str().to_owned()),
            Some(r#"{"from":"low"}"#.to_owned())
        );
        // (k0000's new version came after the plan and is not claimed: it
        // reaches peers as every new write does.)
        assert!(!vector.covers(
            &db.shared
                .state()
                .store
                .record("k0000")
                .unwrap()
                .winner()
                .dot()
        ));
    }
}
