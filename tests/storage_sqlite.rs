//! The storage conformance suite on SQLite files, plus SQLite specifics.
#![cfg(not(target_arch = "wasm32"))]

use pluresdb::storage::conformance::{FailSwitch, StorageFactory};
use pluresdb::storage::SqliteStorage;
use pluresdb::{Database, OpenOptions};
use serde_json::json;

/// SQLite files `<name>.db` in a temporary directory.
struct SqliteFactory {
    dir: tempfile::TempDir,
}

impl SqliteFactory {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl StorageFactory for SqliteFactory {
    type Storage = SqliteStorage;

    async fn open(&self, name: &str) -> SqliteStorage {
        SqliteStorage::open(self.dir.path().join(format!("{name}.db"))).expect("sqlite opens")
    }

    async fn failing(&self, name: &str) -> Option<(SqliteStorage, FailSwitch)> {
        let storage = self.open(name).await;
        let switch = storage.clone();
        let fail = move |on: bool| {
            // A cap below the current size holds the file at its size.
            switch
                .set_max_size(on.then_some(4096))
                .expect("size limit applies")
        };
        Some((storage, Box::new(fail)))
    }
}

pluresdb::storage_conformance_tests!(tokio::test, SqliteFactory::new());

#[tokio::test]
async fn pragmas_are_the_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(dir.path().join("p.db")).unwrap();
    assert_eq!(storage.query_u64("PRAGMA page_size").await.unwrap(), 4096);
    assert_eq!(storage.query_u64("PRAGMA synchronous").await.unwrap(), 1); // NORMAL
    assert_eq!(storage.query_u64("PRAGMA temp_store").await.unwrap(), 2); // MEMORY
                                                                          // The seed asks for 30 GB; SQLite caps it at SQLITE_MAX_MMAP_SIZE (2 GiB
                                                                          // in the bundled build), which is what a query reports.
    assert_eq!(
        storage.query_u64("PRAGMA mmap_size").await.unwrap(),
        0x7fff_0000
    );
    // cache_size is negative (KiB): -64000.
    assert_eq!(
        storage.query_u64("PRAGMA cache_size").await.unwrap() as i64,
        -64000
    );
}

#[tokio::test]
async fn journal_is_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let db = Database::open(SqliteStorage::open(&path).unwrap(), OpenOptions::default())
        .await
        .unwrap();
    db.put("a", json!(1)).await.unwrap();
    assert!(dir.path().join("wal.db-wal").exists(), "a WAL file exists");
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    drop(connection);
    let error = SqliteStorage::open(&path).expect_err("newer schema");
    assert!(error.to_string().contains("upgrade PluresDB"), "{error}");
}

/// A file of schema 2 (before `records.generation`) opens, keeps its rows,
/// and a stale writer on it still learns every row another writer stored.
#[tokio::test]
async fn a_schema_2_file_is_upgraded_in_place() {
    use pluresdb::storage::{CommitBatch, Storage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE records (id TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE segments (id TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             INSERT INTO records (id, value) VALUES ('old', x'0102');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    drop(connection);
    let first = SqliteStorage::open(&path).unwrap();
    let second = SqliteStorage::open(&path).unwrap();
    let mut loaded = first.load().await.unwrap();
    assert_eq!(
        loaded.read_all_rows().unwrap(),
        vec![("old".to_string(), vec![1, 2])]
    );
    let receipt = first
        .commit(CommitBatch {
            expected_generation: loaded.generation,
            records: vec![("new".into(), vec![3])],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(receipt.foreign_records.is_empty(), "not stale");
    // The second handle still believes the old generation.
    let receipt = second
        .commit(CommitBatch {
            expected_generation: loaded.generation,
            records: vec![("other".into(), vec![4])],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        receipt.foreign_records,
        vec![("new".to_string(), vec![3])],
        "exactly what the other writer stored since"
    );
}
