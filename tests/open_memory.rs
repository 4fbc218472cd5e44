//! Opening a SQLite database many times larger than its document cache
//! (`OpenOptions::cache_bytes`): the heap grows while opening by what stays
//! resident per record plus the cache, not by the database's size, and the
//! database reads as it did before it was closed (issue #26).
//!
//! This file is its own test binary with one test, so the counting
//! allocator below sees nothing but that test.
#![cfg(not(target_arch = "wasm32"))]

use peak_alloc::PeakAlloc;
use pluresdb::crdt::Document;
use pluresdb::storage::SqliteStorage;
use pluresdb::{Database, ListOptions, OpenOptions, Query};
use serde_json::{json, Value};

/// Counts the heap: bytes allocated now, and the most at once since the
/// last `reset_peak_usage`.
#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

const RECORDS: usize = 10_000;
/// About 4 KB a document: some 40 MB of documents in all.
const TEXT_BYTES: usize = 4_000;
const CACHE: usize = 1024 * 1024;
const MIB: usize = 1024 * 1024;

fn document(n: usize) -> Value {
    json!({
        "n": n,
        "category": format!("c{}", n % 10),
        "text": format!("{n:08}").repeat(TEXT_BYTES / 8),
    })
}

fn id(n: usize) -> String {
    format!("doc:{n:05}")
}

async fn open(path: &std::path::Path, cache_bytes: usize) -> Database<SqliteStorage> {
    let options = OpenOptions {
        cache_bytes,
        indexes: vec!["category".into()],
        ..OpenOptions::default()
    };
    Database::open(SqliteStorage::open(path).unwrap(), options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_takes_the_metadata_and_the_cache_not_the_whole_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.sqlite");
    {
        let db = open(&path, usize::MAX).await;
        for first in (0..RECORDS).step_by(1_000) {
            db.put_many(
                (first..first + 1_000)
                    .map(|n| (id(n), Document::from_value(&document(n)).unwrap())),
            )
            .await
            .unwrap();
        }
        db.close().await.unwrap();
    }
    let database_bytes = RECORDS * TEXT_BYTES;

    HEAP.reset_peak_usage();
    let before = HEAP.current_usage();
    let db = open(&path, CACHE).await;
    let peak = HEAP.peak_usage() - before;
    let after = HEAP.current_usage().saturating_sub(before);
    println!(
        "opening {RECORDS} documents ({} MiB) with a {} MiB cache: heap peak +{:.1} MiB, +{:.1} MiB once open",
        database_bytes / MIB,
        CACHE / MIB,
        peak as f64 / MIB as f64,
        after as f64 / MIB as f64,
    );
    // Resident per record: its id, version, clock and index entries (a few
    // hundred bytes), plus the cache and one page of rows (4 MiB) in
    // flight. Loading every row first took more than the documents' size.
    assert!(
        peak < 12 * MIB,
        "opening took {:.1} MiB of heap at its peak, for {} MiB of documents and a {} MiB cache",
        peak as f64 / MIB as f64,
        database_bytes / MIB,
        CACHE / MIB
    );
    let stats = db.stats().unwrap();
    assert!(
        stats.cached_bytes <= CACHE,
        "{} bytes cached",
        stats.cached_bytes
    );
    assert!(
        stats.records_in_storage_only > RECORDS * 9 / 10,
        "only {} records were left in storage",
        stats.records_in_storage_only
    );

    // Everything reads as written: documents left in the file, the index
    // built while they streamed past, and a listing in id order.
    for n in [0, 1, RECORDS / 2, RECORDS - 1] {
        let got = db.get(&id(n)).await.unwrap().unwrap();
        assert_eq!(got, document(n), "get {}", id(n));
    }
    let query = Query::from_json(&json!({ "where": { "category": "c3" } })).unwrap();
    let (hits, plan) = db.query_with_plan(&query).await.unwrap();
    assert_eq!(plan.index.as_deref(), Some("category"), "{plan:?}");
    let mut found: Vec<String> = hits.iter().map(|(id, _)| id.clone()).collect();
    found.sort();
    let expected: Vec<String> = (0..RECORDS).filter(|n| n % 10 == 3).map(id).collect();
    assert_eq!(found, expected);
    for (id, document) in &hits {
        let n = document.to_value()["n"].as_u64().unwrap() as usize;
        assert_eq!(*id, self::id(n));
        assert_eq!(n % 10, 3, "{id} is not in c3");
    }
    let listed = db
        .list(&ListOptions {
            prefix: "doc:0999".into(),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    let listed: Vec<&str> = listed.items.iter().map(|(id, _)| id.as_str()).collect();
    let expected: Vec<String> = (9_990..10_000).map(id).collect();
    assert_eq!(listed, expected);
    db.close().await.unwrap();
}
