//! SQLite storage (native), through `rusqlite` with the bundled SQLite.
//!
//! Tables: `records(id TEXT PRIMARY KEY, value BLOB, generation INTEGER)
//! WITHOUT ROWID` (the generation of the commit that wrote the row, so a
//! stale writer finds every row written since its own generation; not
//! indexed: only a stale commit, which needs several writers on one file,
//! reads it, by one scan, and an index would cost every bulk insert a
//! second B-tree),
//! `meta(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID` and `segments`;
//! values are the same encodings IndexedDB stores. Pragmas (the seed's): WAL journal,
//! `synchronous=NORMAL`, `temp_store=MEMORY`, memory-mapped I/O, 4 KiB
//! pages, a 64 MB page cache; plus a busy timeout so several processes can
//! share a file.
//!
//! Durability: with WAL and `synchronous=NORMAL` a committed transaction
//! survives the process being killed at any moment; after an OS crash or
//! power loss the last transactions may roll back (the file stays
//! consistent). [`Durability::Full`] (`synchronous=FULL`) syncs every commit.
//!
//! Each transaction runs on tokio's blocking pool, so async callers never
//! block the runtime for long. Two exceptions: a file's load hands its rows
//! over in pages read on the opening thread, so a database larger than
//! memory can open within its cache; and a read of a few rows by id runs
//! on the caller's thread when no commit holds the connection. Actor slots are advisory file locks on
//! `<file>.slot-<n>.lock`, released by the OS if the process dies.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    merge_meta_rows, merge_record_rows, CommitBatch, CommitReceipt, LoadedRecords, LoadedState,
    RowStream, SlotLease, Storage, StoredEntry, StoredRow, StreamedRows, MERGEABLE_META,
};
use crate::error::StorageError;

const GENERATION_KEY: &str = "generation";
/// SQLite's `user_version` for the schema this build creates (1: records
/// and meta; 2: adds segments; 3: adds `records.generation`).
const SCHEMA_VERSION: i64 = 3;

/// How hard commits push data to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` (default): survives process crashes; an OS crash
    /// may roll back the last commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is synced to disk.
    Full,
}

fn sqlite_error(context: &str, error: rusqlite::Error) -> StorageError {
    use rusqlite::ErrorCode;
    if let rusqlite::Error::SqliteFailure(failure, _) = &error {
        match failure.code {
            ErrorCode::DiskFull => {
                return StorageError::QuotaExceeded(format!("{context}: the disk is full"))
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StorageError::Backend(format!(
                    "{context}: the database file is locked by another process ({error})"
                ))
            }
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                return StorageError::Corrupt {
                    store: "sqlite".into(),
                    key: "file".into(),
                    reason: format!("{context}: {error}"),
                }
            }
            _ => {}
        }
    }
    StorageError::Backend(format!("{context}: {error}"))
}

/// SQLite storage in one file (or in memory).
#[derive(Clone)]
pub struct SqliteStorage {
    path: Option<PathBuf>,
    connection: Arc<Mutex<Connection>>,
    checkpoints: Arc<Checkpointer>,
}

/// Copies the write-ahead log back into the database file in the
/// background. The writer connection has automatic checkpoints turned off,
/// so a large commit returns as soon as its WAL frames are written instead
/// of also copying them into the main file; this thread does that copy
/// (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks writers) once
/// enough has been written, on its own connection.
struct Checkpointer {
    path: Option<PathBuf>,
    /// Bytes committed since the last checkpoint started.
    pending_bytes: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicBool,
}

/// Start a background checkpoint once this much has been committed.
const CHECKPOINT_AFTER_BYTES: u64 = 4 * 1024 * 1024;

impl Checkpointer {
    fn committed(self: &Arc<Self>, bytes: u64) {
        use std::sync::atomic::Ordering;
        let Some(path) = self.path.clone() else {
            return;
        };
        let total = self.pending_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total < CHECKPOINT_AFTER_BYTES || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.pending_bytes.store(0, Ordering::Relaxed);
        let this = self.clone();
        std::thread::spawn(move || {
            if let Err(error) = checkpoint(&path, "PASSIVE") {
                tracing::warn!(%error, "background WAL checkpoint failed; SQLite retries at the next one");
            }
            this.running.store(false, Ordering::Release);
        });
    }
}

fn checkpoint(path: &Path, mode: &str) -> rusqlite::Result<()> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, Durability::default())
    }

    /// Opens the file at `path` with the given durability.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StorageError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StorageError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let connection = Connection::open(path)
            .map_err(|e| sqlite_error(&format!("opening {}", path.display()), e))?;
        Self::prepare(connection, Some(path.to_path_buf()), durability)
    }

    /// A private in-memory SQLite database (tests, benchmarks).
    pub fn open_in_memory() -> Result<Self, StorageError> {
        let connection =
            Connection::open_in_memory().map_err(|e| sqlite_error("opening :memory:", e))?;
        Self::prepare(connection, None, Durability::default())
    }

    fn prepare(
        connection: Connection,
        path: Option<PathBuf>,
        durability: Durability,
    ) -> Result<Self, StorageError> {
        let synchronous = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sqlite_error("setting the busy timeout", e))?;
        connection
            .execute_batch(&format!(
                "PRAGMA page_size = 4096;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = {synchronous};
                 PRAGMA temp_store = MEMORY;
                 PRAGMA mmap_size = 30000000000;
                 PRAGMA cache_size = -64000;
                 PRAGMA wal_autocheckpoint = 0;"
            ))
            .map_err(|e| sqlite_error("applying pragmas", e))?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| sqlite_error("reading the schema version", e))?;
        if version > SCHEMA_VERSION {
            return Err(StorageError::FormatTooNew {
                found: version as u32,
                supported: SCHEMA_VERSION as u32,
            });
        }
        if version < SCHEMA_VERSION {
            // Each step is idempotent, so a schema left half-upgraded by a
            // crash (impossible inside one transaction, but cheap to allow)
            // upgrades again.
            upgrade_schema(&connection)
                .map_err(|e| sqlite_error("creating or upgrading the schema", e))?;
        }
        Ok(Self {
            checkpoints: Arc::new(Checkpointer {
                path: path.clone(),
                pending_bytes: Default::default(),
                running: Default::default(),
            }),
            path,
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// The database file, if not in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `work` with the connection on tokio's blocking pool.
    async fn with_connection<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("the storage task failed: {e}")))?
    }

    /// Caps the database file at about `bytes` (SQLite's `max_page_count`);
    /// commits that would grow it further fail with a quota error and change
    /// nothing. `None` removes the cap.
    pub fn set_max_size(&self, bytes: Option<u64>) -> Result<(), StorageError> {
        let pages = bytes.map_or(u64::from(u32::MAX) - 1, |b| (b / 4096).max(1));
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| sqlite_error("setting the size limit", e))
    }

    /// Runs a read-only SQL query returning one integer (for status output
    /// and tests).
    pub async fn query_u64(&self, sql: &'static str) -> Result<u64, StorageError> {
        self.with_connection(move |c| {
            c.query_row(sql, [], |row| row.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| sqlite_error("querying", e))
        })
        .await
    }
}

/// Creates the tables or brings an older schema up to [`SCHEMA_VERSION`],
/// in one transaction. Every step checks what exists, so another process
/// upgrading at the same moment (transactions serialise them) is harmless.
fn upgrade_schema(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, value BLOB NOT NULL, generation INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS segments (id TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
    )?;
    let result = (|| {
        let has_generation: bool = connection.query_row(
            "SELECT count(*) FROM pragma_table_info('records') WHERE name = 'generation'",
            [],
            |row| row.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_generation {
            // Rows from before: generation 0, older than any writer's.
            connection.execute_batch(
                "ALTER TABLE records ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        connection.execute_batch(&format!(
            "PRAGMA user_version = {SCHEMA_VERSION};
             COMMIT;"
        ))
    })();
    if result.is_err() {
        let _ = connection.execute_batch("ROLLBACK;");
    }
    result
}

/// Every record row written by a commit after `since` (all rows when the
/// stored generation is below it: the file was replaced by an older copy).
fn rows_written_after(
    transaction: &rusqlite::Transaction<'_>,
    since: u64,
    stored_generation: u64,
) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
    // Rows migrated from schema 2 have generation 0: the all-rows case
    // starts there.
    let first = if stored_generation < since {
        0
    } else {
        since + 1
    };
    let mut select = transaction
        .prepare_cached("SELECT id, value FROM records WHERE generation >= ?1")
        .map_err(|e| sqlite_error("preparing a read", e))?;
    let rows = select
        .query_map([first as i64], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(|e| sqlite_error("reading rows of other writers", e))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| sqlite_error("reading rows of other writers", e))
}

/// Reads of at most this many rows may run on the caller's thread
/// (`Storage::read_records`): a `get` or `record` of a document left in
/// the file.
const INLINE_READ_ROWS: usize = 4;

/// The rows of those of `ids` that exist, in one read transaction.
fn read_rows(
    connection: &mut Connection,
    ids: Vec<String>,
) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
    let transaction = connection
        .transaction()
        .map_err(|e| sqlite_error("starting a read", e))?;
    let mut rows = Vec::with_capacity(ids.len());
    {
        let mut select = transaction
            .prepare_cached("SELECT value FROM records WHERE id = ?1")
            .map_err(|e| sqlite_error("preparing a read", e))?;
        for id in ids {
            let row = select
                .query_row([&id], |row| row.get::<_, Vec<u8>>(0))
                .optional()
                .map_err(|e| sqlite_error("reading a record", e))?;
            if let Some(row) = row {
                rows.push((id, row));
            }
        }
    }
    Ok(rows)
}

/// Reads the generation (first, so that a read transaction's snapshot
/// starts with it), the metadata and the index segments.
fn load_all_but_records(connection: &Connection) -> Result<LoadedState, StorageError> {
    let mut state = LoadedState {
        generation: read_generation(connection)?,
        ..LoadedState::default()
    };
    let mut meta = connection
        .prepare("SELECT key, value FROM meta")
        .map_err(|e| sqlite_error("reading metadata", e))?;
    let rows = meta
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| sqlite_error("reading metadata", e))?;
    for row in rows {
        let (key, value) = row.map_err(|e| sqlite_error("reading metadata", e))?;
        if key != GENERATION_KEY {
            state.meta.insert(key, value);
        }
    }
    let mut segments = connection
        .prepare("SELECT id, value FROM segments")
        .map_err(|e| sqlite_error("reading index segments", e))?;
    let rows = segments
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| sqlite_error("reading index segments", e))?;
    for row in rows {
        state
            .segments
            .push(row.map_err(|e| sqlite_error("reading an index segment", e))?);
    }
    Ok(state)
}

/// Rows read in one step of a load: at most this many...
const LOAD_PAGE_ROWS: usize = 512;
/// ...and not many more bytes than this.
const LOAD_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The record rows of a file being loaded, read in pages in id order from
/// a read transaction held open on `reader` until the last page (so every
/// page comes from the snapshot the generation was read in). Reads run on
/// the thread that takes the rows: the database's open, which decodes them.
struct PagedRecords {
    reader: Connection,
    /// The last id handed over.
    after: Option<String>,
    page: std::vec::IntoIter<(String, Vec<u8>)>,
    finished: bool,
}

impl PagedRecords {
    fn read_page(&mut self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        // Two statements, so that every page is a seek in the primary key
        // (an `OR` in one condition would make each page a scan).
        let limit = LOAD_PAGE_ROWS as i64;
        let mut select = match &self.after {
            None => self
                .reader
                .prepare_cached("SELECT id, value FROM records ORDER BY id LIMIT ?1"),
            Some(_) => self
                .reader
                .prepare_cached("SELECT id, value FROM records WHERE id > ?1 ORDER BY id LIMIT ?2"),
        }
        .map_err(|e| sqlite_error("preparing a read", e))?;
        let mut rows = match &self.after {
            None => select.query(params![limit]),
            Some(after) => select.query(params![after, limit]),
        }
        .map_err(|e| sqlite_error("reading records", e))?;
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows
            .next()
            .map_err(|e| sqlite_error("reading a record", e))?
        {
            let id: String = row
                .get(0)
                .map_err(|e| sqlite_error("reading a record", e))?;
            let value: Vec<u8> = row
                .get(1)
                .map_err(|e| sqlite_error("reading a record", e))?;
            bytes += id.len() + value.len();
            page.push((id, value));
            if bytes >= LOAD_PAGE_BYTES {
                break;
            }
        }
        Ok(page)
    }
}

impl Iterator for PagedRecords {
    type Item = Result<StoredEntry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((id, row)) = self.page.next() {
                return Some(Ok(StoredEntry::Row(StoredRow::new(id, row))));
            }
            if self.finished {
                return None;
            }
            match self.read_page() {
                Ok(page) if page.is_empty() => {
                    self.finished = true;
                    // Ends the read transaction (the connection closes when
                    // the load is dropped).
                    let _ = self.reader.execute_batch("COMMIT");
                }
                Ok(page) => {
                    self.after = page.last().map(|(id, _)| id.clone());
                    self.page = page.into_iter();
                }
                Err(error) => {
                    self.finished = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

fn read_generation(connection: &Connection) -> Result<u64, StorageError> {
    let value: Option<Vec<u8>> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [GENERATION_KEY],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| sqlite_error("reading the generation", e))?;
    match value {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt {
                        store: "meta".into(),
                        key: GENERATION_KEY.into(),
                        reason: "expected 8 bytes".into(),
                    })?;
            Ok(u64::from_le_bytes(array))
        }
    }
}

/// Writes one batch in one transaction. `more` carries the rest of a
/// streamed batch's rows: they are written as they arrive, and nothing is
/// committed unless the stream says it is complete. Returns the receipt and
/// the bytes written.
fn commit_blocking(
    connection: &mut Connection,
    batch: CommitBatch,
    more: Option<RowStream>,
) -> Result<(CommitReceipt, u64), StorageError> {
    let mut bytes = batch.byte_len() as u64;
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sqlite_error("starting a transaction", e))?;
    let stored_generation = read_generation(&transaction)?;
    let stale = stored_generation != batch.expected_generation;
    let generation = stored_generation + 1;
    let foreign_records = if stale {
        rows_written_after(&transaction, batch.expected_generation, stored_generation)?
    } else {
        Vec::new()
    };
    let mut merged_records = Vec::new();
    let mut foreign_meta = Vec::new();
    {
        let mut rows = RecordWriter {
            select: transaction
                .prepare_cached("SELECT value FROM records WHERE id = ?1")
                .map_err(|e| sqlite_error("preparing a read", e))?,
            upsert: transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO records (id, value, generation) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| sqlite_error("preparing a write", e))?,
            stale,
            generation: generation as i64,
            merged_records: &mut merged_records,
        };
        for (id, value) in &batch.records {
            rows.write(id, value)?;
        }
        if let Some(mut more) = more {
            loop {
                match futures::executor::block_on(futures::StreamExt::next(&mut more)) {
                    Some(StreamedRows::More(chunk)) => {
                        for (id, value) in &chunk {
                            bytes += (id.len() + value.len()) as u64;
                            rows.write(id, value)?;
                        }
                    }
                    Some(StreamedRows::Complete) => break,
                    // Dropping the transaction rolls it back.
                    None => return Err(StorageError::IncompleteBatch),
                }
            }
        }
        let mut delete = transaction
            .prepare_cached("DELETE FROM records WHERE id = ?1")
            .map_err(|e| sqlite_error("preparing a delete", e))?;
        for id in &batch.removed_records {
            delete
                .execute([id])
                .map_err(|e| sqlite_error("removing a record", e))?;
        }
        let mut select_meta = transaction
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .map_err(|e| sqlite_error("preparing a read", e))?;
        let mut upsert_meta = transaction
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .map_err(|e| sqlite_error("preparing a write", e))?;
        for (key, value) in &batch.meta {
            let value = if stale {
                let stored: Option<Vec<u8>> = select_meta
                    .query_row([key], |row| row.get(0))
                    .optional()
                    .map_err(|e| sqlite_error("reading metadata", e))?;
                match stored {
                    Some(stored) => merge_meta_rows(key, &stored, value),
                    None => value.clone(),
                }
            } else {
                value.clone()
            };
            upsert_meta
                .execute(params![key, value])
                .map_err(|e| sqlite_error("writing metadata", e))?;
        }
        let mut upsert_segment = transaction
            .prepare_cached("INSERT OR REPLACE INTO segments (id, value) VALUES (?1, ?2)")
            .map_err(|e| sqlite_error("preparing a write", e))?;
        for (id, bytes) in &batch.segments {
            upsert_segment
                .execute(params![id, bytes])
                .map_err(|e| sqlite_error("writing an index segment", e))?;
        }
        let mut delete_segment = transaction
            .prepare_cached("DELETE FROM segments WHERE id = ?1")
            .map_err(|e| sqlite_error("preparing a delete", e))?;
        for id in &batch.removed_segments {
            delete_segment
                .execute([id])
                .map_err(|e| sqlite_error("removing an index segment", e))?;
        }
        upsert_meta
            .execute(params![GENERATION_KEY, generation.to_le_bytes().to_vec()])
            .map_err(|e| sqlite_error("writing the generation", e))?;
        if stale {
            for key in MERGEABLE_META {
                let stored: Option<Vec<u8>> = select_meta
                    .query_row([key], |row| row.get(0))
                    .optional()
                    .map_err(|e| sqlite_error("reading metadata", e))?;
                foreign_meta.extend(stored.map(|value| (key.to_owned(), value)));
            }
        }
    }
    transaction
        .commit()
        .map_err(|e| sqlite_error("committing", e))?;
    let receipt = CommitReceipt {
        generation,
        merged_records,
        foreign_records,
        foreign_meta,
    };
    Ok((receipt, bytes))
}

/// Writes record rows within a commit's transaction, merging each with the
/// stored row when another writer committed since this one last did.
struct RecordWriter<'a, 'c> {
    select: rusqlite::CachedStatement<'c>,
    upsert: rusqlite::CachedStatement<'c>,
    stale: bool,
    generation: i64,
    merged_records: &'a mut Vec<(String, Vec<u8>)>,
}

impl RecordWriter<'_, '_> {
    fn write(&mut self, id: &str, value: &[u8]) -> Result<(), StorageError> {
        let stored: Option<Vec<u8>> = if self.stale {
            self.select
                .query_row([id], |row| row.get(0))
                .optional()
                .map_err(|e| sqlite_error("reading a row", e))?
        } else {
            None
        };
        match stored {
            Some(stored) => {
                let merged = merge_record_rows(id, &stored, value)?;
                self.upsert
                    .execute(params![id, merged, self.generation])
                    .map_err(|e| sqlite_error("writing a record", e))?;
                if merged != value {
                    self.merged_records.push((id.to_owned(), merged));
                }
            }
            None => {
                self.upsert
                    .execute(params![id, value, self.generation])
                    .map_err(|e| sqlite_error("writing a record", e))?;
            }
        }
        Ok(())
    }
}

/// Holds a slot's lock file open (and locked) until dropped.
struct SlotFile(#[allow(dead_code)] File);

impl Storage for SqliteStorage {
    fn describe(&self) -> String {
        match &self.path {
            Some(path) => format!("sqlite:{}", path.display()),
            None => "sqlite::memory:".into(),
        }
    }

    async fn acquire_slot(&self) -> Result<SlotLease, StorageError> {
        let Some(path) = &self.path else {
            return Ok(SlotLease::new(0, Box::new(())));
        };
        for slot in 0u32.. {
            let lock_path = PathBuf::from(format!("{}.slot-{slot}.lock", path.display()));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| {
                    StorageError::Backend(format!("cannot open {}: {e}", lock_path.display()))
                })?;
            match file.try_lock() {
                Ok(()) => return Ok(SlotLease::new(slot, Box::new(SlotFile(file)))),
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StorageError::Backend(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )))
                }
            }
        }
        unreachable!("u32 slots are never all taken")
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        let Some(path) = self.path.clone() else {
            // In memory: nothing to bound; read everything on the one
            // connection there is.
            return self
                .with_connection(|connection| {
                    let transaction = connection
                        .transaction()
                        .map_err(|e| sqlite_error("starting a read", e))?;
                    let mut state = load_all_but_records(&transaction)?;
                    let rows = {
                        let mut records = transaction
                            .prepare("SELECT id, value FROM records")
                            .map_err(|e| sqlite_error("reading records", e))?;
                        let rows = records
                            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                            .map_err(|e| sqlite_error("reading records", e))?;
                        rows.collect::<Result<Vec<_>, _>>()
                            .map_err(|e| sqlite_error("reading a record", e))?
                    };
                    state.records = LoadedRecords::from_rows(rows);
                    Ok(state)
                })
                .await;
        };
        // A file: its rows are handed over a page at a time from a read
        // transaction on a connection of their own (one snapshot with the
        // generation and metadata), so the database decodes each page, and
        // may leave documents in storage, before the next is read.
        tokio::task::spawn_blocking(move || {
            let reader = Connection::open(&path)
                .map_err(|e| sqlite_error(&format!("opening {} to load it", path.display()), e))?;
            reader
                .busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| sqlite_error("setting the busy timeout", e))?;
            reader
                .execute_batch("BEGIN")
                .map_err(|e| sqlite_error("starting a read", e))?;
            let mut state = load_all_but_records(&reader)?;
            state.records = LoadedRecords::streamed(PagedRecords {
                reader,
                after: None,
                page: Vec::new().into_iter(),
                finished: false,
            });
            Ok(state)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("the storage task failed: {e}")))?
    }

    fn reads_records(&self) -> bool {
        true
    }

    async fn read_records(&self, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        // A few rows are read on the caller's thread when no commit holds
        // the connection: a lookup by primary key takes microseconds, about
        // what the hop to the blocking pool and back costs by itself.
        if ids.len() <= INLINE_READ_ROWS {
            if let Ok(mut connection) = self.connection.try_lock() {
                return read_rows(&mut connection, ids);
            }
        }
        self.with_connection(move |connection| read_rows(connection, ids))
            .await
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitReceipt, StorageError> {
        let (receipt, bytes) = self
            .with_connection(move |connection| commit_blocking(connection, batch, None))
            .await?;
        self.checkpoints.committed(bytes);
        Ok(receipt)
    }

    /// Writes the rows on SQLite's thread as they arrive, so encoding the
    /// rest of a large batch overlaps with writing its start.
    async fn commit_streamed(
        &self,
        batch: CommitBatch,
        rows: RowStream,
    ) -> Result<CommitReceipt, StorageError> {
        let (receipt, bytes) = self
            .with_connection(move |connection| commit_blocking(connection, batch, Some(rows)))
            .await?;
        self.checkpoints.committed(bytes);
        Ok(receipt)
    }

    async fn close(&self) -> Result<(), StorageError> {
        // Fold the whole WAL back into the file so it is small at rest.
        self.with_connection(|connection| {
            connection
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| sqlite_error("checkpointing on close", e))
        })
        .await
    }
}
