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
