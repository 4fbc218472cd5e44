//! Databases whose documents outgrow `OpenOptions::cache_bytes`, on SQLite:
//! most documents are left in the file, and every read, merge and sync still
//! sees them, while what stays in memory keeps within the cache.
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pluresdb::crdt::{Document, VersionVector};
use pluresdb::error::StorageError;
use pluresdb::storage::SqliteStorage;
use pluresdb::{Database, ListOptions, OpenOptions, Origin, Query, SearchRequest};
use serde_json::{json, Value};

/// Bytes of document text the databases below keep in memory: a few dozen
/// of their documents.
const CACHE: usize = 8 * 1024;
const RECORDS: usize = 2_000;

fn document(n: usize) -> Value {
    json!({
        "n": n,
        "category": format!("c{}", n % 7),
        "text": "x".repeat(100 + n % 50),
    })
}

fn id(n: usize) -> String {
    format!("note:{n:05}")
}

async fn open(path: &Path, cache_bytes: usize) -> Database<SqliteStorage> {
    let options = OpenOptions {
        cache_bytes,
        indexes: vec!["category".into()],
        ..OpenOptions::default()
    };
    Database::open(SqliteStorage::open(path).unwrap(), options)
        .await
        .unwrap()
}

async fn filled(path: &Path, cache_bytes: usize) -> Database<SqliteStorage> {
    let db = open(path, cache_bytes).await;
    db.put_many((0..RECORDS).map(|n| (id(n), Document::from_value(&document(n)).unwrap())))
        .await
        .unwrap();
    db
}

/// The cache holds at most `CACHE` bytes, and most documents are in the
/// file only.
fn assert_within_cache(db: &Database<SqliteStorage>, when: &str) {
    let stats = db.stats().unwrap();
    assert!(
        stats.cached_bytes <= CACHE,
        "{when}: {} bytes of documents in memory, over the cache of {CACHE}",
        stats.cached_bytes
    );
    assert!(
        stats.records_in_storage_only > RECORDS / 2,
        "{when}: only {} records have their document in storage only",
        stats.records_in_storage_only
    );
}

/// The documents of every version of `id` (all must be there), sorted by
/// their text.
async fn version_documents<S: pluresdb::storage::Storage>(
    db: &Database<S>,
    id: &str,
) -> Vec<Value> {
    let record = db.record(id).await.unwrap().unwrap();
    let mut documents: Vec<Value> = record
        .versions()
        .iter()
        .map(|version| version.document().unwrap().to_value())
        .collect();
    documents.sort_by_key(|value| value.to_string());
    documents
}

/// The ids a query through the `category` index finds, sorted.
async fn indexed_ids(db: &Database<SqliteStorage>, category: &str) -> Vec<String> {
    let indexed = Query::from_json(&json!({ "where": { "category": category } })).unwrap();
    let (found, plan) = db.query_with_plan(&indexed).await.unwrap();
    assert_eq!(plan.index.as_deref(), Some("category"));
    let mut found: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
    found.sort();
    found
}

fn expected_in(category: &str) -> Vec<String> {
    (0..RECORDS)
        .filter(|n| format!("c{}", n % 7) == category)
        .map(id)
        .collect()
}

#[tokio::test]
async fn every_read_sees_documents_left_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let db = filled(&path, CACHE).await;
    assert_within_cache(&db, "after writing");
    // The index learned every record written, whatever the cache kept.
    assert_eq!(indexed_ids(&db, "c3").await, expected_in("c3"));
    db.close().await.unwrap();

    let db = open(&path, CACHE).await;
    assert_within_cache(&db, "after opening");
    for n in 0..RECORDS {
        assert_eq!(db.get(&id(n)).await.unwrap(), Some(document(n)), "get {n}");
    }
    assert_within_cache(&db, "after every get");

    // A prefix listed page by page.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = db
            .list(&ListOptions {
                prefix: "note:01".into(),
                limit: Some(64),
                cursor: cursor.take(),
            })
            .await
            .unwrap();
        listed.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<(String, Value)> = (1000..RECORDS).map(|n| (id(n), document(n))).collect();
    let listed: Vec<(String, Value)> = listed
        .into_iter()
        .map(|(id, document)| (id, document.to_value()))
        .collect();
    assert_eq!(listed, expected);

    // A query through the index, and one that scans, sorts and limits.
    assert_eq!(indexed_ids(&db, "c3").await, expected_in("c3"));
    let scan = Query::from_json(&json!({
        "where": { "n": { "$gte": 1500 } },
        "sort": "-n",
        "limit": 5,
    }))
    .unwrap();
    let found: Vec<Value> = db
        .query(&scan)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, document)| document.to_value())
        .collect();
    let expected: Vec<Value> = (RECORDS - 5..RECORDS).rev().map(document).collect();
    assert_eq!(found, expected);

    // The full record, and a peer catching up, get every document.
    let record = db.record(&id(7)).await.unwrap().unwrap();
    assert_eq!(record.data().unwrap().to_value(), document(7));
    let ops = db.changes_since(&VersionVector::new()).await.unwrap();
    assert_eq!(ops.len(), RECORDS);
    for op in &ops {
        let n: usize = op.id[5..].parse().unwrap();
        assert_eq!(op.version.document().unwrap().to_value(), document(n));
    }
    assert_within_cache(&db, "after reading everything");
}

#[tokio::test]
async fn a_peers_concurrent_write_keeps_the_document_left_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a = filled(&path, CACHE).await;
    let stats = a.stats().unwrap();
    assert!(stats.records_in_storage_only > 0);
    // note:00000 came in first: its document is in the file only.
    let peer = Database::open(
        pluresdb::storage::MemoryStorage::new(),
        OpenOptions::default(),
    )
    .await
    .unwrap();
    peer.put(&id(0), json!({ "from": "peer" })).await.unwrap();
    let ops = peer.changes_since(&VersionVector::new()).await.unwrap();
    a.apply_remote(ops, Origin::Peer("peer".into()), None)
        .await
        .unwrap();

    let mut expected = vec![document(0), json!({ "from": "peer" })];
    expected.sort_by_key(|value| value.to_string());
    assert_eq!(
        version_documents(&a, &id(0)).await,
        expected,
        "both concurrent versions, in memory"
    );
    assert_eq!(a.conflicts(&id(0)).await.unwrap().len(), 1);
    a.close().await.unwrap();

    // The merged row was written whole: both documents are in the file.
    let reopened = open(&path, usize::MAX).await;
    assert_eq!(
        version_documents(&reopened, &id(0)).await,
        expected,
        "both concurrent versions, in the file"
    );
}

#[tokio::test]
async fn a_document_another_writer_superseded_is_read_as_the_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = filled(&path, CACHE).await;
    let b = open(&path, usize::MAX).await;
    // `b` supersedes a document `a` holds only in the file; `a` has not
    // heard of it (nothing announces SQLite commits across handles).
    b.put(&id(1), json!({ "rewritten": true })).await.unwrap();
    let mut events = a.subscribe();
    assert_eq!(
        a.get(&id(1)).await.unwrap(),
        Some(json!({ "rewritten": true }))
    );
    // `a` learned the newer version as it learns other writers' commits.
    match events.try_recv() {
        Ok(pluresdb::SyncEvent::Upsert { id: changed }) => assert_eq!(changed, id(1)),
        other => panic!("expected an upsert of {}, got {other:?}", id(1)),
    }
    assert_eq!(a.conflicts(&id(1)).await.unwrap().len(), 0);

    // A list, which reads documents back without caching them, meets a
    // row `b` superseded in the same way.
    b.put(&id(2), json!({ "rewritten": 2 })).await.unwrap();
    let listed = a
        .list(&ListOptions {
            prefix: "note:0000".into(),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 10);
    assert_eq!(listed.items[2].0, id(2));
    assert_eq!(listed.items[2].1.to_value(), json!({ "rewritten": 2 }));
    assert_eq!(listed.items[3].1.to_value(), document(3));
    match events.try_recv() {
        Ok(pluresdb::SyncEvent::Upsert { id: changed }) => assert_eq!(changed, id(2)),
        other => panic!("expected an upsert of {}, got {other:?}", id(2)),
    }
}

#[tokio::test]
async fn search_reads_the_documents_of_its_hits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vectors.db");
    let db = open(&path, 0).await;
    for n in 0..200usize {
        let angle = n as f32 / 200.0;
        let vector: Arc<[f32]> = Arc::from(vec![angle.cos(), angle.sin(), 0.5]);
        db.put_document(
            &id(n),
            Document::from_value(&document(n)).unwrap(),
            Some(vector),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        db.stats().unwrap().cached_bytes,
        0,
        "a cache of 0 keeps nothing"
    );
    let angle = 42.0f32 / 200.0;
    let hits = db
        .search(&SearchRequest {
            k: 3,
            ..SearchRequest::vector(vec![angle.cos(), angle.sin(), 0.5])
        })
        .await
        .unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].id, id(42));
    for hit in &hits {
        let n: usize = hit.id[5..].parse().unwrap();
        assert_eq!(hit.data.to_value(), document(n));
    }
    assert_eq!(db.stats().unwrap().cached_bytes, 0);
}

#[tokio::test]
async fn a_document_missing_from_the_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    let db = filled(&path, 0).await;
    // Someone deletes the row behind the database's back.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("DELETE FROM records WHERE id = ?1", [id(3)])
        .unwrap();
    match db.get(&id(3)).await {
        Err(pluresdb::Error::Storage(StorageError::Corrupt { key, .. })) => assert_eq!(key, id(3)),
        other => panic!("expected a corrupt-row error, got {other:?}"),
    }
    // Everything else still reads.
    assert_eq!(db.get(&id(4)).await.unwrap(), Some(document(4)));
}

/// Memory storage whose commits wait while the gate is shut, so a test can
/// queue writes while a commit is in flight.
#[derive(Clone)]
struct Gated {
    inner: pluresdb::storage::MemoryStorage,
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl pluresdb::storage::Storage for Gated {
    fn describe(&self) -> String {
        "gated".into()
    }

    async fn acquire_slot(&self) -> Result<pluresdb::storage::SlotLease, StorageError> {
        self.inner.acquire_slot().await
    }

    async fn load(&self) -> Result<pluresdb::storage::LoadedState, StorageError> {
        self.inner.load().await
    }

    async fn commit(
        &self,
        batch: pluresdb::storage::CommitBatch,
    ) -> Result<pluresdb::storage::CommitReceipt, StorageError> {
        let _open = self.gate.read().await;
        self.inner.commit(batch).await
    }

    fn reads_records(&self) -> bool {
        true
    }

    async fn read_records(&self, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.inner.read_records(ids).await
    }
}

/// A local write prepared while a peer's concurrent version of the same
/// record was being committed does not supersede that version: the record
/// it commits keeps the peer's version, whose document the cache left in
/// storage meanwhile. The write must succeed, and the row keep both.
#[tokio::test]
async fn a_local_write_prepared_during_a_peers_commit_keeps_its_document() {
    let storage = Gated {
        inner: pluresdb::storage::MemoryStorage::new(),
        gate: Arc::new(tokio::sync::RwLock::new(())),
    };
    let options = OpenOptions {
        cache_bytes: 0,
        ..OpenOptions::default()
    };
    let db = Database::open(storage.clone(), options).await.unwrap();
    db.put("k", json!("first")).await.unwrap();

    let peer = Database::open(
        pluresdb::storage::MemoryStorage::new(),
        OpenOptions::default(),
    )
    .await
    .unwrap();
    peer.put("k", json!("from the peer")).await.unwrap();
    let ops = peer.changes_since(&VersionVector::new()).await.unwrap();

    let shut = storage.gate.write().await;
    let remote = {
        let db = db.clone();
        tokio::spawn(async move {
            db.apply_remote(ops, Origin::Peer("peer".into()), None)
                .await
        })
    };
    // Let the committer take the peer's batch and wait in its commit.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let local = {
        let db = db.clone();
        tokio::spawn(async move { db.put("k", json!("second")).await })
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    drop(shut);
    remote.await.unwrap().unwrap();
    local.await.unwrap().unwrap();

    assert_eq!(
        version_documents(&db, "k").await,
        vec![json!("from the peer"), json!("second")]
    );
    db.close().await.unwrap();
    let reopened = Database::open(storage, OpenOptions::default())
        .await
        .unwrap();
    assert_eq!(reopened.conflicts("k").await.unwrap().len(), 1);
}

/// A handle that opens while another writes the same file reads one
/// snapshot: the file's rows reach it a page at a time (`SqliteStorage`'s
/// load), and every page must come from the state the first one did, so
/// each committed batch is there whole or not at all. The batches' ids are
/// spread over the whole key range, so a page read after a commit that an
/// earlier page missed would split that batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_opened_during_another_writers_commits_sees_whole_batches() {
    // The writer goes on until the reader has opened twice while it was
    // still committing (a fixed number of batches can all be committed
    // before one slow open ends), with a cap so a broken reader still ends.
    const MAX_BATCHES: usize = 20_000;
    const PER_BATCH: usize = 40;
    const OPENS_PART_WAY: usize = 2;
    let batch_id = |i: usize, batch: usize| format!("w{i:02}-{batch:05}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let writer = open(&path, usize::MAX).await;
    // Enough rows before the first open that its load takes several pages.
    writer
        .put_many((0..2_000).map(|n| (id(n), Document::from_value(&document(n)).unwrap())))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut batches = 0;
            while batches < MAX_BATCHES && !stop.load(Ordering::Acquire) {
                writer
                    .put_many((0..PER_BATCH).map(|i| {
                        let value = json!({ "batch": batches, "i": i, "text": "y".repeat(200) });
                        (batch_id(i, batches), Document::from_value(&value).unwrap())
                    }))
                    .await
                    .unwrap();
                batches += 1;
                tokio::task::yield_now().await;
            }
            writer.close().await.unwrap();
            batches
        }
    });
    // Counts the batches one open sees, and checks they are whole: a run of
    // complete batches from the first, then nothing.
    let whole_batches_seen = |reader: Database<SqliteStorage>| async move {
        let mut per_batch: Vec<usize> = Vec::new();
        let mut cursor = None;
        loop {
            let page = reader
                .list(&ListOptions {
                    prefix: "w".into(),
                    limit: Some(500),
                    cursor: cursor.take(),
                })
                .await
                .unwrap();
            for (id, document) in &page.items {
                let value = document.to_value();
                let batch = value["batch"].as_u64().unwrap() as usize;
                assert_eq!(*id, batch_id(value["i"].as_u64().unwrap() as usize, batch));
                if per_batch.len() <= batch {
                    per_batch.resize(batch + 1, 0);
                }
                per_batch[batch] += 1;
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let whole = per_batch
            .iter()
            .take_while(|count| **count == PER_BATCH)
            .count();
        assert!(
            per_batch[whole..].iter().all(|count| *count == 0),
            "batches committed while it loaded are split: {per_batch:?}"
        );
        assert_eq!(reader.get(&id(1_999)).await.unwrap(), Some(document(1_999)));
        reader.close().await.unwrap();
        whole
    };
    let mut opens_part_way = 0;
    while opens_part_way < OPENS_PART_WAY && !writing.is_finished() {
        let whole = whole_batches_seen(open(&path, CACHE).await).await;
        if whole > 0 && !writing.is_finished() {
            opens_part_way += 1;
        }
    }
    stop.store(true, Ordering::Release);
    let batches = writing.await.unwrap();
    assert_eq!(
        opens_part_way, OPENS_PART_WAY,
        "the writer committed {batches} batches before the reader opened twice part way"
    );
    assert_eq!(
        whole_batches_seen(open(&path, CACHE).await).await,
        batches,
        "an open after the writer closed sees every batch"
    );
}

/// A database opens with every document in storage. Reads of one record
/// keep what they read back in the cache; lists, queries and searches fill
/// it while it has room and pass the rest through, so a scan of the whole
/// database leaves the documents in use where they were.
#[tokio::test]
async fn a_scan_does_not_push_out_the_documents_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scan.db");
    filled(&path, CACHE).await.close().await.unwrap();
    let db = open(&path, CACHE).await;
    let stats = db.stats().unwrap();
    assert_eq!(stats.cached_bytes, 0, "the cache starts empty");
    assert_eq!(stats.records_in_storage_only, RECORDS);
    let in_use: Vec<String> = (RECORDS - 10..RECORDS).map(id).collect();
    for id in &in_use {
        assert!(
            db.get_in_memory(id).unwrap().is_none(),
            "{id} starts in the file"
        );
        db.get(id).await.unwrap().unwrap();
        assert!(
            db.get_in_memory(id).unwrap().is_some(),
            "{id} is cached once read"
        );
    }
    let cached = db.stats().unwrap().cached_bytes;

    let listed = db
        .list(&ListOptions {
            prefix: "note:".into(),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.len(), RECORDS);
    assert_eq!(indexed_ids(&db, "c3").await, expected_in("c3"));
    let scan = Query::from_json(&json!({ "where": { "n": { "$gte": 0 } } })).unwrap();
    assert_eq!(db.query(&scan).await.unwrap().len(), RECORDS);

    for id in &in_use {
        assert!(
            db.get_in_memory(id).unwrap().is_some(),
            "{id} was pushed out by a scan"
        );
    }
    // The first records listed filled the room the cache had.
    let filled_by_scans = db.stats().unwrap().cached_bytes;
    assert!(
        filled_by_scans > cached && filled_by_scans > CACHE * 9 / 10,
        "the scans filled the cache's room: {cached} -> {filled_by_scans} of {CACHE}"
    );
    assert!(db.get_in_memory(&id(0)).unwrap().is_some());
    assert!(db.get_in_memory(&id(RECORDS / 2)).unwrap().is_none());
    assert_within_cache(&db, "after the scans");
}

/// A document read again and again stays in memory while far more new
/// documents than the cache holds pass through it: each read gives it a
/// second chance when it reaches the front of the queue, instead of
/// leaving with the documents that came in around it.
#[tokio::test]
async fn a_document_read_often_stays_while_new_ones_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hot.db");
    let db = open(&path, CACHE).await;
    db.put("hot", json!({ "hot": true })).await.unwrap();
    for n in 0..RECORDS {
        db.put(&id(n), document(n)).await.unwrap();
        if n % 8 == 0 {
            assert!(
                db.get_in_memory("hot").unwrap().is_some(),
                "after {n} writes the document read all along was left in the file"
            );
        }
    }
    assert_within_cache(&db, "after the writes");
    // A document nobody read again left long ago.
    assert!(db.get_in_memory(&id(0)).unwrap().is_none());
}
