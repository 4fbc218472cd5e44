//! Durable storage: the [`Storage`] trait and its backends (memory always;
//! SQLite natively; IndexedDB on wasm32).
//!
//! A backend stores three keyed collections of opaque bytes: records (key =
//! record id, value = the record encoding from [`crate::crdt`]), metadata
//! (format version, version vector, HLC, actor slots) and vector-index
//! segments. It knows nothing of the CRDT except one thing: when another
//! writer (another tab, another process) committed since this instance last
//! did, the backend merges the rows it is about to overwrite with what is
//! stored, inside the same transaction, so no writer ever erases another's
//! concurrent version. The *generation* counter, bumped by every commit,
//! tells the backend whether that read-merge is needed; a lone writer never
//! pays for it.

use std::collections::BTreeMap;
use std::future::Future;

use crate::codec::Reader;
use crate::crdt::{Hlc, Record, VersionVector};
use crate::error::StorageError;
use crate::platform::{MaybeSend, MaybeSync};

pub mod chunk;
#[cfg(target_arch = "wasm32")]
pub mod indexeddb;
pub mod memory;
#[cfg(not(target_arch = "wasm32"))]
pub mod sqlite;

#[cfg(target_arch = "wasm32")]
pub use indexeddb::{EarlyReader, IdbDurability, IndexedDbStorage, ListedRows, StorageHealth};
pub use memory::MemoryStorage;
#[cfg(not(target_arch = "wasm32"))]
pub use sqlite::{Durability, SqliteStorage};

/// The on-disk format version this build writes. Databases with an older
/// format are migrated on open; newer ones are refused.
///
/// - 1: records and metadata.
/// - 2: adds persisted vector-index segments, and IndexedDB stores records in
///   chunks (one per commit). Migrating from 1 rewrites nothing: rows stored
///   one per record stay readable (and are folded into chunks by the next
///   full compaction), and a database without segments has its index built
///   from the records' embeddings on open.
pub const FORMAT_VERSION: u32 = 2;

/// Metadata keys.
pub mod meta_keys {
    /// `u32` format version.
    pub const FORMAT: &str = "format";
    /// The store's version vector.
    pub const VERSION_VECTOR: &str = "vv";
    /// The greatest HLC issued or seen.
    pub const HLC: &str = "hlc";
    /// Prefix of actor-slot keys: `slot/<n>` holds that slot's actor id.
    pub const SLOT_PREFIX: &str = "slot/";
    /// The database's sync identity (id and secret), once sync is set up.
    pub const SYNC_IDENTITY: &str = "sync";
    /// Prefix of sync state: `sync/cursor/<transport>` (the relay backlog
    /// cursor), `sync/published/<transport>` (the version vector that
    /// transport stored so far).
    pub const SYNC_PREFIX: &str = "sync/";
    /// The embedding model that filled the database (`minilm-static@1`),
    /// written when a named embedder first opens an empty index.
    pub const EMBEDDER: &str = "embedder";

    /// The metadata key of actor slot `slot`.
    pub fn slot(slot: u32) -> String {
        format!("{SLOT_PREFIX}{slot}")
    }
}

/// Everything a backend holds, as read on open.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// Commit counter; pass it back as [`CommitBatch::expected_generation`].
    pub generation: u64,
    /// The stored record rows, read as they are consumed (a backend may
    /// hand them over a stored value at a time, so that a large database is
    /// never in memory twice while it opens). See [`LoadedRecords`].
    pub records: LoadedRecords,
    /// Metadata rows. Mergeable rows ([`MERGEABLE_META`]) may be completed
    /// by [`StoredEntry::Meta`] entries among `records`.
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Vector-index segment rows `(segment id, bytes)`.
    pub segments: Vec<(String, Vec<u8>)>,
}

impl LoadedState {
    /// Reads every entry of `records`: the record rows `(id, encoded
    /// record)`, with the entries' mergeable metadata merged into `meta`.
    /// [`Database::open`](crate::Database::open) instead consumes the
    /// entries one by one; this is for tools and tests.
    pub fn read_all_rows(&mut self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let mut rows = Vec::new();
        for entry in std::mem::take(&mut self.records) {
            match entry? {
                StoredEntry::Row(row) => rows.push(row.into_parts()),
                StoredEntry::Meta(key, value) => merge_meta_into(&mut self.meta, key, &value),
            }
        }
        Ok(rows)
    }
}

/// One entry of a [`LoadedState`]'s records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEntry {
    /// A live record row.
    Row(StoredRow),
    /// A mergeable metadata row ([`MERGEABLE_META`]) to merge into
    /// [`LoadedState::meta`].
    Meta(String, Vec<u8>),
}

/// A stored record row: its id and its record encoding, either owned or a
/// range of a stored value that holds many rows (a chunk: rows are then
/// read where they lie, without a copy each).
#[derive(Clone)]
pub struct StoredRow(RowBytes);

#[derive(Clone)]
enum RowBytes {
    Owned(String, Vec<u8>),
    InChunk {
        chunk: std::sync::Arc<Vec<u8>>,
        id: std::ops::Range<usize>,
        row: std::ops::Range<usize>,
        hint: u32,
    },
}

impl StoredRow {
    /// A row of its own.
    pub fn new(id: String, row: Vec<u8>) -> Self {
        Self(RowBytes::Owned(id, row))
    }

    /// The row whose id and encoding lie at `id` and `row` in `chunk`; `id`
    /// must be UTF-8 (its text is empty otherwise). `hint` names where the
    /// chunk lies, for [`Storage::read_rows_at`] (or is
    /// [`NO_HINT`](crate::crdt::NO_HINT)).
    pub(crate) fn in_chunk(
        chunk: std::sync::Arc<Vec<u8>>,
        id: std::ops::Range<usize>,
        row: std::ops::Range<usize>,
        hint: u32,
    ) -> Self {
        Self(RowBytes::InChunk {
            chunk,
            id,
            row,
            hint,
        })
    }

    /// Where the backend that handed this row over found it, as
    /// [`Storage::read_rows_at`] takes places back, or
    /// [`NO_HINT`](crate::crdt::NO_HINT).
    pub fn hint(&self) -> u32 {
        match &self.0 {
            RowBytes::InChunk { hint, .. } => *hint,
            RowBytes::Owned(..) => crate::crdt::NO_HINT,
        }
    }

    /// The record id the row is stored under.
    pub fn id(&self) -> &str {
        match &self.0 {
            RowBytes::Owned(id, _) => id,
            RowBytes::InChunk { chunk, id, .. } => {
                std::str::from_utf8(&chunk[id.clone()]).unwrap_or_default()
            }
        }
    }

    /// The record id's UTF-8 bytes (compared without decoding them again).
    pub fn id_bytes(&self) -> &[u8] {
        match &self.0 {
            RowBytes::Owned(id, _) => id.as_bytes(),
            RowBytes::InChunk { chunk, id, .. } => &chunk[id.clone()],
        }
    }

    /// The record encoding.
    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            RowBytes::Owned(_, row) => row,
            RowBytes::InChunk { chunk, row, .. } => &chunk[row.clone()],
        }
    }

    /// `(id, record encoding)`, owned.
    pub fn into_parts(self) -> (String, Vec<u8>) {
        match self.0 {
            RowBytes::Owned(id, row) => (id, row),
            RowBytes::InChunk { .. } => (self.id().to_owned(), self.bytes().to_vec()),
        }
    }
}

impl PartialEq for StoredRow {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id() && self.bytes() == other.bytes()
    }
}

impl Eq for StoredRow {}

impl std::fmt::Debug for StoredRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoredRow")
            .field(&self.id())
            .field(&self.bytes().len())
            .finish()
    }
}

/// The entries of a [`LoadedState`]: the live record rows and mergeable
/// metadata rows, in no particular order. An id may appear in more than one
/// row (backends that append, like IndexedDB's chunks): its record is the
/// CRDT merge of every row, which no order changes. An `Err` ends the load:
/// a stored value could not be read.
pub struct LoadedRecords {
    entries: crate::platform::BoxIterator<Result<StoredEntry, StorageError>>,
    rows_at_most: usize,
}

impl LoadedRecords {
    /// Entries produced as they are read.
    pub fn streamed(
        entries: impl Iterator<Item = Result<StoredEntry, StorageError>> + MaybeSend + 'static,
    ) -> Self {
        Self {
            entries: Box::new(entries),
            rows_at_most: 0,
        }
    }

    /// The same entries, of which at most `rows` are record rows (as the
    /// stored values' headers count their entries): the database opening
    /// makes room for that many records at once. A buffer grown by doubling
    /// holds its old and new storage at its last growth, and memory that
    /// WebAssembly grows never shrinks.
    pub fn with_rows_at_most(self, rows: usize) -> Self {
        Self {
            rows_at_most: rows,
            ..self
        }
    }

    /// At most how many record rows there are, when the storage counted
    /// them (0 when it did not).
    pub fn rows_at_most(&self) -> usize {
        self.rows_at_most
    }

    /// Record rows already in memory.
    pub fn from_rows(rows: Vec<(String, Vec<u8>)>) -> Self {
        Self::streamed(
            rows.into_iter()
                .map(|(id, row)| Ok(StoredEntry::Row(StoredRow::new(id, row)))),
        )
    }
}

impl Default for LoadedRecords {
    fn default() -> Self {
        Self::from_rows(Vec::new())
    }
}

impl Iterator for LoadedRecords {
    type Item = Result<StoredEntry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.entries.next()
    }
}

impl std::fmt::Debug for LoadedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadedRecords(..)")
    }
}

/// Merges a mergeable metadata row into `meta` (or adds it). Rows of other
/// keys are ignored: only [`MERGEABLE_META`] may be merged, and a stored
/// entry claiming another key (a slot's actor, the sync identity) must not
/// replace it.
pub fn merge_meta_into(meta: &mut BTreeMap<String, Vec<u8>>, key: String, value: &[u8]) {
    if !MERGEABLE_META.contains(&key.as_str()) {
        return;
    }
    match meta.get_mut(&key) {
        Some(existing) => *existing = merge_meta_rows(&key, existing, value),
        None => {
            meta.insert(key, value.to_vec());
        }
    }
}

/// One atomic write.
#[derive(Debug, Default, Clone)]
pub struct CommitBatch {
    /// The generation this writer last saw; when the stored one differs,
    /// rows are read-merged before writing.
    pub expected_generation: u64,
    /// Record rows to write `(id, encoded record)`.
    pub records: Vec<(String, Vec<u8>)>,
    /// Record ids to remove (tombstone compaction).
    pub removed_records: Vec<String>,
    /// Metadata rows to write; mergeable keys (version vector, HLC) are
    /// merged with the stored value on a stale generation.
    pub meta: Vec<(String, Vec<u8>)>,
    /// Vector-index segment rows to write (segments are immutable: a segment
    /// id is never written twice with different bytes).
    pub segments: Vec<(String, Vec<u8>)>,
    /// Segment ids to remove (after a merge replaced them).
    pub removed_segments: Vec<String>,
}

impl CommitBatch {
    /// Total payload bytes, for size accounting.
    pub fn byte_len(&self) -> usize {
        self.records
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .chain(self.meta.iter().map(|(k, v)| k.len() + v.len()))
            .chain(self.segments.iter().map(|(k, v)| k.len() + v.len()))
            .sum()
    }
}

/// What a [`Storage::commit_streamed`] receives after the batch it started
/// with: more record rows, then `Complete`. A stream that ends without
/// `Complete` (its sender was dropped half-way) commits nothing.
#[derive(Debug)]
pub enum StreamedRows {
    /// More record rows `(id, encoded record)` of the same batch.
    More(Vec<(String, Vec<u8>)>),
    /// Every row was sent: commit.
    Complete,
}

/// The receiving end of a streamed commit's rows.
pub type RowStream = futures::channel::mpsc::UnboundedReceiver<StreamedRows>;

/// What a commit did.
#[derive(Debug, Default, Clone)]
pub struct CommitReceipt {
    /// The generation after this commit.
    pub generation: u64,
    /// Rows whose stored value differs from what the batch carried because
    /// another writer's concurrent versions were merged in: `(id, stored)`.
    pub merged_records: Vec<(String, Vec<u8>)>,
    /// Set on a stale commit (another writer committed since
    /// `expected_generation`): every record row another writer stored since
    /// then, as stored before this commit merged its own rows in. A backend
    /// may return more (older rows too); it must not return fewer. The
    /// committer merges them into memory, so that its next commit, which is
    /// no longer stale and overwrites rows without reading them, cannot
    /// erase a version it never saw (issue #20, bug 1).
    pub foreign_records: Vec<(String, Vec<u8>)>,
    /// Set on a stale commit: the stored version vector and HLC (keys
    /// [`meta_keys::VERSION_VECTOR`] and [`meta_keys::HLC`]) after this
    /// commit merged its own in, so the committer's next commit does not
    /// write back a smaller vector than storage holds.
    pub foreign_meta: Vec<(String, Vec<u8>)>,
}

/// The metadata keys returned in [`CommitReceipt::foreign_meta`].
pub const MERGEABLE_META: [&str; 2] = [meta_keys::VERSION_VECTOR, meta_keys::HLC];

/// A held actor slot; dropping the lease releases the slot.
pub struct SlotLease {
    slot: u32,
    exclusive: bool,
    _guard: Box<dyn MaybeSend>,
}

impl SlotLease {
    /// A lease on `slot`, released when `guard` is dropped.
    pub fn new(slot: u32, guard: Box<dyn MaybeSend>) -> Self {
        Self {
            slot,
            exclusive: true,
            _guard: guard,
        }
    }

    /// No slot could be held exclusively (a browser page without the Web
    /// Locks API): the instance must write under a fresh actor of its own,
    /// never a stored one another instance might be using at the same time.
    pub fn unshared() -> Self {
        Self {
            slot: u32::MAX,
            exclusive: false,
            _guard: Box::new(()),
        }
    }

    /// The slot number (`u32::MAX` for an [`unshared`](Self::unshared)
    /// lease).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// False for an [`unshared`](Self::unshared) lease.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

impl std::fmt::Debug for SlotLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotLease")
            .field("slot", &self.slot)
            .finish()
    }
}

/// A durable home for one database.
///
/// Futures are `Send` natively and need not be on wasm32.
pub trait Storage: MaybeSend + MaybeSync + 'static {
    /// A short description for logs and `status` ("sqlite:/path", ...).
    fn describe(&self) -> String;

    /// Takes an actor slot that no other open instance of this database
    /// holds. Slots are reused after their holder closes, which keeps the
    /// number of actors bounded by the number of instances open at once.
    fn acquire_slot(&self) -> impl Future<Output = Result<SlotLease, StorageError>> + MaybeSend;

    /// Reads everything persisted.
    fn load(&self) -> impl Future<Output = Result<LoadedState, StorageError>> + MaybeSend;

    /// Writes `batch` atomically: all of it or nothing.
    fn commit(
        &self,
        batch: CommitBatch,
    ) -> impl Future<Output = Result<CommitReceipt, StorageError>> + MaybeSend;

    /// Writes `batch` and the record rows that follow it on `rows` atomically,
    /// as one [`commit`](Self::commit) of all of them. A large batch is
    /// encoded while its first rows are being written; a backend that cannot
    /// overlap the two gathers every row and commits once. Rows of a stream
    /// that ends without [`StreamedRows::Complete`] are never committed.
    fn commit_streamed(
        &self,
        batch: CommitBatch,
        rows: RowStream,
    ) -> impl Future<Output = Result<CommitReceipt, StorageError>> + MaybeSend {
        async move {
            let mut batch = batch;
            let mut rows = rows;
            loop {
                match futures::StreamExt::next(&mut rows).await {
                    Some(StreamedRows::More(more)) => batch.records.extend(more),
                    Some(StreamedRows::Complete) => break,
                    None => return Err(StorageError::IncompleteBatch),
                }
            }
            self.commit(batch).await
        }
    }

    /// True when [`read_records`](Self::read_records) reads rows back by id,
    /// so a database may leave document bodies in storage and read them
    /// when asked for (`OpenOptions::cache_bytes`). False by default: the
    /// database then keeps every body in memory. Answered after
    /// [`load`](Self::load); it may turn true later (after
    /// [`housekeeping`](Self::housekeeping): the database then bounds its
    /// documents from there on), never back to false.
    fn reads_records(&self) -> bool {
        false
    }

    /// True when the next [`housekeeping`](Self::housekeeping) would make
    /// [`reads_records`](Self::reads_records) true (IndexedDB: a database
    /// that grew large has parts to list). A database whose documents are
    /// unbounded until then runs that upkeep at once instead of waiting for
    /// writes to pause: taking in a large database from a peer, writes
    /// never pause, and the documents would all stay in memory. False by
    /// default.
    fn reads_records_after_housekeeping(&self) -> bool {
        false
    }

    /// Finds out whether [`reads_records`](Self::reads_records) can turn
    /// true now, because of what other instances of the same storage did
    /// (IndexedDB: another tab listed every part), and makes it so; the
    /// answer is then `reads_records()`. For an instance that only merges
    /// what others announce, and so runs no upkeep of its own. By default
    /// nothing changes.
    fn learn_whether_records_read_back(
        &self,
    ) -> impl Future<Output = Result<bool, StorageError>> + MaybeSend {
        let reads = self.reads_records();
        async move { Ok(reads) }
    }

    /// The stored rows `(id, record encoding)` of those of `ids` that exist,
    /// read together (one transaction where the backend has them): one row
    /// per id, every row of it that [`load`](Self::load) would hand over
    /// merged. Called only when [`reads_records`](Self::reads_records) is
    /// true.
    fn read_records(
        &self,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StorageError>> + MaybeSend {
        let _ = ids;
        async {
            Err(StorageError::Backend(
                "this storage does not read records by id".into(),
            ))
        }
    }

    /// The rows of `wanted` ids found in the places their hints name
    /// ([`StoredRow::hint`] of a row this backend handed over), and only
    /// there: one row per id (its rows there merged), which may be older
    /// than the id's merged row (a caller takes from it only documents by
    /// dot). Ids not found are left out, and the caller reads them with
    /// [`read_records`](Self::read_records). The default finds none.
    fn read_rows_at(
        &self,
        wanted: Vec<(String, u32)>,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StorageError>> + MaybeSend {
        let _ = wanted;
        async { Ok(Vec::new()) }
    }

    /// Whether [`housekeeping`](Self::housekeeping) has work to do. The
    /// database runs it once no write has come for a moment, so that it
    /// costs no awaited write anything.
    fn housekeeping_due(&self) -> bool {
        false
    }

    /// Upkeep deferred from commits (IndexedDB folds chunks). Returns the
    /// generation it wrote when the next commit should expect that one
    /// instead of the last commit's.
    fn housekeeping(&self) -> impl Future<Output = Result<Option<u64>, StorageError>> + MaybeSend {
        async { Ok(None) }
    }

    /// Called once when the database closes, after the last commit: a chance
    /// to leave files tidy (SQLite folds its write-ahead log back).
    fn close(&self) -> impl Future<Output = Result<(), StorageError>> + MaybeSend {
        async { Ok(()) }
    }

    /// Tells other open instances of this database (other tabs) about a
    /// committed batch: `message` is opaque to the backend (the database
    /// encodes it). Backends without such instances do nothing.
    fn announce(&self, _message: &[u8]) {}

    /// Batches announced by other open instances, already durable, to apply
    /// to memory. Called once, on open; `None` when there are none.
    fn announcements(&self) -> Option<futures::channel::mpsc::UnboundedReceiver<Vec<u8>>> {
        None
    }
}

/// Merges a record row about to be written with the stored row of another
/// writer. Used by every backend on a stale generation.
pub fn merge_record_rows(id: &str, stored: &[u8], ours: &[u8]) -> Result<Vec<u8>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        store: "records".into(),
        key: id.to_owned(),
        reason,
    };
    let mut merged = Record::from_bytes(stored).map_err(|e| corrupt(e.to_string()))?;
    let ours = Record::from_bytes(ours).map_err(|e| corrupt(e.to_string()))?;
    merged.merge(&ours);
    Ok(merged.to_bytes())
}

/// Merges a metadata row with the stored value on a stale generation:
/// version vectors by pointwise maximum, HLCs by maximum, anything else is
/// overwritten (slot ids and identities are written once).
pub fn merge_meta_rows(key: &str, stored: &[u8], ours: &[u8]) -> Vec<u8> {
    match key {
        meta_keys::VERSION_VECTOR => {
            match (
                VersionVector::from_bytes(stored),
                VersionVector::from_bytes(ours),
            ) {
                (Ok(mut stored), Ok(ours)) => {
                    stored.merge(&ours);
                    stored.to_bytes()
                }
                _ => ours.to_vec(),
            }
        }
        meta_keys::HLC => match (decode_hlc(stored), decode_hlc(ours)) {
            (Ok(stored), Ok(ours_hlc)) if stored > ours_hlc => encode_hlc(stored),
            _ => ours.to_vec(),
        },
        _ => ours.to_vec(),
    }
}

/// Encodes an HLC metadata value.
pub fn encode_hlc(hlc: Hlc) -> Vec<u8> {
    let mut writer = crate::codec::Writer::with_capacity(Hlc::LEN);
    writer.u64(hlc.wall_ms).u32(hlc.logical);
    writer.finish()
}

/// Decodes an HLC metadata value.
pub fn decode_hlc(bytes: &[u8]) -> Result<Hlc, crate::error::DecodeError> {
    let mut reader = Reader::new(bytes);
    let hlc = Hlc {
        wall_ms: reader.u64()?,
        logical: reader.u32()?,
    };
    reader.finish()?;
    Ok(hlc)
}

/// Encodes the format-version metadata value.
pub fn encode_format(version: u32) -> Vec<u8> {
    version.to_le_bytes().to_vec()
}

/// Decodes the format-version metadata value.
pub fn decode_format(bytes: &[u8]) -> Result<u32, StorageError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        store: "meta".into(),
        key: meta_keys::FORMAT.into(),
        reason: format!("expected 4 bytes, found {}", bytes.len()),
    })?;
    Ok(u32::from_le_bytes(array))
}

/// Backend-independent checks that every [`Storage`] must pass.
#[doc(hidden)]
pub mod conformance;
