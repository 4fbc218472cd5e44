//! The storage conformance suite on the in-memory backend.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::sync::Mutex;

use pluresdb::crdt::{ActorId, CrdtStore, Document};
use pluresdb::error::StorageError;
use pluresdb::storage::conformance::{FailSwitch, StorageFactory};
use pluresdb::storage::{
    meta_keys, CommitBatch, CommitReceipt, LoadedRecords, LoadedState, MemoryStorage, SlotLease,
    Storage, StoredEntry, StoredRow,
};
use pluresdb::{Database, OpenOptions};
use serde_json::json;

/// Memory storages by name; opening a name again shares its data.
#[derive(Default)]
struct MemoryFactory {
    storages: Mutex<HashMap<String, MemoryStorage>>,
}

impl StorageFactory for MemoryFactory {
    type Storage = MemoryStorage;

    async fn open(&self, name: &str) -> MemoryStorage {
        self.storages
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    async fn failing(&self, name: &str) -> Option<(MemoryStorage, FailSwitch)> {
        let storage = self.open(name).await;
        let switch = storage.clone();
        let fail = move |on: bool| {
            switch.fail_commits_with(
                on.then(|| StorageError::QuotaExceeded("injected by the test".into())),
            )
        };
        Some((storage, Box::new(fail)))
    }
}

pluresdb::storage_conformance_tests!(tokio::test, MemoryFactory::default());

/// A memory storage whose load hands over scripted entries, as a backend
/// that appends (IndexedDB's chunks) reads them: rows (several of one id)
/// and metadata, in any order.
struct Scripted {
    inner: MemoryStorage,
    entries: Mutex<Option<Vec<Result<StoredEntry, StorageError>>>>,
}

impl Storage for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }

    async fn acquire_slot(&self) -> Result<SlotLease, StorageError> {
        self.inner.acquire_slot().await
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        let mut state = self.inner.load().await?;
        let entries = self.entries.lock().unwrap().take().unwrap_or_default();
        state.records = LoadedRecords::streamed(entries.into_iter());
        Ok(state)
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitReceipt, StorageError> {
        self.inner.commit(batch).await
    }
}

fn scripted(entries: Vec<Result<StoredEntry, StorageError>>) -> Scripted {
    Scripted {
        inner: MemoryStorage::new(),
        entries: Mutex::new(Some(entries)),
    }
}

#[tokio::test]
async fn opening_merges_streamed_rows_and_metadata_and_reports_corrupt_rows() {
    let now = 1_700_000_000_000;
    let mut writer = CrdtStore::new(ActorId::from_bytes([3; 16]));
    let mut row = |id: &str, value: serde_json::Value, at: u64| {
        writer.put(id, Document::from_value(&value).unwrap(), now + at);
        (id.to_string(), writer.record(id).unwrap().to_bytes())
    };
    let (_, b) = row("b", json!("b"), 2);
    let (_, new_a) = row("a", json!("new a"), 3);
    let (_, c) = row("c", json!("c"), 4);
    // A concurrent version of `a`: both must be kept.
    let mut peer = CrdtStore::new(ActorId::from_bytes([4; 16]));
    peer.put("a", Document::from_value(&json!("old a")).unwrap(), now);
    let old_a = peer.record("a").unwrap().to_bytes();
    let wrapped =
        |id: &str, bytes: &[u8]| Ok(StoredEntry::Row(StoredRow::new(id.into(), bytes.to_vec())));
    let storage = scripted(vec![
        wrapped("a", &new_a),
        wrapped("b", &b),
        wrapped("a", &old_a),
        wrapped("c", &c),
        wrapped("d", &[0xff]),
        wrapped("e", &b),
        Ok(StoredEntry::Meta(
            meta_keys::VERSION_VECTOR.into(),
            writer.version_vector().to_bytes(),
        )),
        Ok(StoredEntry::Meta(
            meta_keys::VERSION_VECTOR.into(),
            peer.version_vector().to_bytes(),
        )),
        // Only mergeable metadata may come as an entry: a claimed sync
        // identity is ignored (this one would not even decode).
        Ok(StoredEntry::Meta(
            meta_keys::SYNC_IDENTITY.into(),
            vec![0xff; 3],
        )),
    ]);
    let db = Database::open(storage, OpenOptions::default())
        .await
        .unwrap();
    // The rows of `a` merge: two concurrent versions, the later one wins.
    let a = db.record("a").await.unwrap().unwrap();
    assert_eq!(a.versions().len(), 2);
    assert_eq!(db.get("a").await.unwrap(), Some(json!("new a")));
    assert_eq!(db.get("b").await.unwrap(), Some(json!("b")));
    assert_eq!(db.get("c").await.unwrap(), Some(json!("c")));
    // Corrupt rows that stay are reported on access, not dropped silently:
    // an undecodable one, and one whose row holds another id's record.
    assert!(matches!(
        db.get("d").await,
        Err(pluresdb::Error::Storage(StorageError::Corrupt { .. }))
    ));
    assert!(matches!(
        db.get("e").await,
        Err(pluresdb::Error::Storage(StorageError::Corrupt { .. }))
    ));
    // Metadata entries merge: the peer's counter is known too.
    let opened = db.version_vector();
    for (actor, counter) in [([3; 16], 3), ([4; 16], 1)] {
        assert_eq!(opened.get(&ActorId::from_bytes(actor)), counter);
    }
}

#[tokio::test]
async fn a_stored_value_that_cannot_be_read_fails_the_open() {
    let storage = scripted(vec![Err(StorageError::Corrupt {
        store: "records".into(),
        key: "chunk [7, 0]".into(),
        reason: "truncated".into(),
    })]);
    let error = Database::open(storage, OpenOptions::default())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("chunk [7, 0]"),
        "the error names the value: {error}"
    );
}
