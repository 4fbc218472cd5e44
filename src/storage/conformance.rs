//! The storage conformance suite: one set of behaviour checks, written once,
//! that every [`Storage`] backend must pass. Native tests run it on memory
//! and SQLite, browser tests on memory and IndexedDB, through
//! [`storage_conformance_tests!`](crate::storage_conformance_tests).
//!
//! Each check panics (with a message) when the backend misbehaves.

use std::future::Future;

use serde_json::json;

use super::{meta_keys, CommitBatch, Storage, StreamedRows, FORMAT_VERSION};
use crate::crdt::{ActorId, CrdtStore, Document, VersionVector};
use crate::error::{Error, StorageError};
use crate::{Database, ListOptions, OpenOptions, Origin, Query};

/// Turns injected commit failures on (`true`) or off.
pub type FailSwitch = Box<dyn Fn(bool)>;

/// Makes storages for the suite.
pub trait StorageFactory {
    /// The backend under test.
    type Storage: Storage;

    /// Opens the storage called `name`, creating it on first use. Opening a
    /// name again gives another handle to the same data (like a second tab
    /// or process), also after earlier handles were dropped.
    fn open(&self, name: &str) -> impl Future<Output = Self::Storage>;

    /// A storage whose commits fail with a quota error while the returned
    /// switch is on, for backends that can inject failures.
    fn failing(&self, _name: &str) -> impl Future<Output = Option<(Self::Storage, FailSwitch)>> {
        async { None }
    }

    /// Whether the backend hands rows over with hints of where they lie
    /// ([`StoredRow::hint`](super::StoredRow::hint)), which the checks of
    /// reading at hints then require.
    fn hints_rows(&self) -> bool {
        false
    }
}

fn doc(value: serde_json::Value) -> Document {
    Document::from_value(&value).expect("test documents are JSON")
}

/// A new storage loads as empty, generation 0.
pub async fn fresh_storage_is_empty<F: StorageFactory>(factory: &F) {
    let storage = factory.open("fresh").await;
    let mut state = storage.load().await.expect("load");
    assert!(
        state.read_all_rows().expect("rows").is_empty(),
        "a fresh storage has no records"
    );
    assert!(state.meta.is_empty(), "a fresh storage has no metadata");
    assert_eq!(state.generation, 0);
}

/// Committed rows come back on load, from another handle too, and every
/// commit bumps the generation.
pub async fn commits_round_trip<F: StorageFactory>(factory: &F) {
    let storage = factory.open("round-trip").await;
    let receipt = storage
        .commit(CommitBatch {
            expected_generation: 0,
            records: vec![
                ("a".into(), vec![1, 2, 3]),
                ("b".into(), vec![4]),
                ("c".into(), vec![]),
            ],
            meta: vec![("k".into(), vec![9, 9])],
            ..Default::default()
        })
        .await
        .expect("first commit");
    assert_eq!(receipt.generation, 1);
    assert!(receipt.merged_records.is_empty());
    let receipt = storage
        .commit(CommitBatch {
            expected_generation: 1,
            records: vec![("b".into(), vec![5, 6])],
            removed_records: vec!["c".into()],
            ..Default::default()
        })
        .await
        .expect("second commit");
    assert_eq!(receipt.generation, 2);

    drop(storage);
    let reopened = factory.open("round-trip").await;
    let mut state = reopened.load().await.expect("load");
    let rows = state.read_all_rows().expect("rows");
    // Rows come in no particular order and may repeat an id (backends
    // that append): every row of `b` is one of its two writes, the second
    // among them; `c` is gone.
    let rows_of = |wanted: &str| -> Vec<Vec<u8>> {
        rows.iter()
            .filter(|(id, _)| id == wanted)
            .map(|(_, row)| row.clone())
            .collect()
    };
    assert_eq!(rows_of("a"), vec![vec![1, 2, 3]]);
    let b = rows_of("b");
    assert!(b.contains(&vec![5, 6]), "the second write of b: {b:?}");
    assert!(b.iter().all(|row| row == &vec![4] || row == &vec![5, 6]));
    assert!(rows_of("c").is_empty(), "c was removed");
    assert_eq!(rows.len(), 1 + b.len());
    assert_eq!(state.meta.get("k"), Some(&vec![9, 9]));
    assert_eq!(state.generation, 2);
}

/// A removal (tombstone compaction) drops every row of its id written
/// before it, and no row written after it: a record created again after
/// its tombstone was compacted away is kept, and only its new version is.
pub async fn removals_drop_only_earlier_rows<F: StorageFactory>(factory: &F) {
    let storage = factory.open("removals").await;
    let mut generation = 0;
    for batch in [
        CommitBatch {
            records: vec![("x".into(), vec![1]), ("y".into(), vec![2])],
            ..Default::default()
        },
        CommitBatch {
            removed_records: vec!["x".into(), "z".into()],
            ..Default::default()
        },
        CommitBatch {
            records: vec![("x".into(), vec![3]), ("z".into(), vec![4])],
            ..Default::default()
        },
        CommitBatch {
            removed_records: vec!["z".into()],
            ..Default::default()
        },
    ] {
        generation = storage
            .commit(CommitBatch {
                expected_generation: generation,
                ..batch
            })
            .await
            .expect("commit")
            .generation;
    }
    drop(storage);
    let mut state = factory.open("removals").await.load().await.expect("load");
    let mut rows = state.read_all_rows().expect("rows");
    rows.sort();
    assert_eq!(
        rows,
        vec![("x".into(), vec![3]), ("y".into(), vec![2])],
        "x's first row and both of z's are gone; x's second row stays"
    );
}

/// A streamed commit writes its first rows and every streamed chunk in one
/// transaction; a stream that stops before `Complete` writes nothing. A
/// database's large `putMany` (streamed in chunks) survives a reopen whole.
pub async fn streamed_commits_are_atomic<F: StorageFactory>(factory: &F) {
    let storage = factory.open("streamed").await;
    let row = |id: &str, byte: u8| (id.to_owned(), vec![byte; 3]);
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    let send_rest = async move {
        for chunk in [vec![row("b", 2), row("c", 3)], vec![row("d", 4)]] {
            sender.unbounded_send(StreamedRows::More(chunk)).unwrap();
        }
        sender.unbounded_send(StreamedRows::Complete).unwrap();
    };
    let batch = CommitBatch {
        expected_generation: 0,
        records: vec![row("a", 1)],
        ..Default::default()
    };
    let (receipt, ()) = futures::join!(storage.commit_streamed(batch, receiver), send_rest);
    assert_eq!(receipt.expect("streamed commit").generation, 1);

    // The sender goes away half-way: nothing of that batch is written.
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    let abandon = async move {
        sender
            .unbounded_send(StreamedRows::More(vec![row("f", 6)]))
            .unwrap();
        drop(sender);
    };
    let batch = CommitBatch {
        expected_generation: 1,
        records: vec![row("e", 5)],
        ..Default::default()
    };
    let (result, ()) = futures::join!(storage.commit_streamed(batch, receiver), abandon);
    assert_eq!(result.unwrap_err(), StorageError::IncompleteBatch);

    let mut state = factory.open("streamed").await.load().await.expect("load");
    let rows = state.read_all_rows().expect("rows");
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"].into_iter().collect());
    assert_eq!(state.generation, 1, "the abandoned batch did not commit");
    drop(storage);

    let db = Database::open(factory.open("streamed-db").await, OpenOptions::default())
        .await
        .unwrap();
    let entries = (0..5_000).map(|n| (format!("doc:{n:05}"), doc(json!({ "n": n }))));
    db.put_many(entries).await.unwrap();
    db.close().await.unwrap();
    let db = Database::open(factory.open("streamed-db").await, OpenOptions::default())
        .await
        .unwrap();
    assert_eq!(db.len(), 5_000);
    assert_eq!(
        db.get("doc:04999").await.unwrap(),
        Some(json!({ "n": 4_999 }))
    );
    db.close().await.unwrap();
}

/// A writer whose generation is stale merges its rows with what another
/// writer stored instead of overwriting them.
pub async fn stale_writers_merge_instead_of_overwriting<F: StorageFactory>(factory: &F) {
    let first = factory.open("stale").await;
    let second = factory.open("stale").await;

    let mut tab_a = CrdtStore::new(ActorId::from_bytes([1; 16]));
    let mut tab_b = CrdtStore::new(ActorId::from_bytes([2; 16]));
    tab_a.put("x", doc(json!("from a")), 100);
    tab_b.put("x", doc(json!("from b")), 200);
    let row_a = tab_a.record("x").unwrap().to_bytes();
    let row_b = tab_b.record("x").unwrap().to_bytes();
    let vector_a = tab_a.version_vector().to_bytes();
    let vector_b = tab_b.version_vector().to_bytes();

    first
        .commit(CommitBatch {
            expected_generation: 0,
            records: vec![("x".into(), row_a)],
            meta: vec![(meta_keys::VERSION_VECTOR.into(), vector_a)],
            ..Default::default()
        })
        .await
        .expect("first writer commits");
    // The second writer still believes generation 0.
    let receipt = second
        .commit(CommitBatch {
            expected_generation: 0,
            records: vec![("x".into(), row_b.clone())],
            meta: vec![(meta_keys::VERSION_VECTOR.into(), vector_b)],
            ..Default::default()
        })
        .await
        .expect("second writer commits");
    assert_eq!(receipt.generation, 2);

    let mut state = factory.open("stale").await.load().await.expect("load");
    let rows = state.read_all_rows().expect("rows");
    // Backends either merged the rows or kept both (append-only): merging
    // what load returns must give both versions either way.
    let mut rows = rows.iter().filter(|(id, _)| id == "x");
    let (_, first) = rows.next().expect("row x");
    let mut record = crate::crdt::Record::from_bytes(first).expect("row decodes");
    for (_, row) in rows {
        record.merge(&crate::crdt::Record::from_bytes(row).expect("row decodes"));
    }
    assert_eq!(record.versions().len(), 2, "both concurrent versions kept");
    assert_eq!(record.data().unwrap().as_str(), "\"from b\"");
    let vector = VersionVector::from_bytes(&state.meta[meta_keys::VERSION_VECTOR]).unwrap();
    assert_eq!(vector.len(), 2, "version vectors merged pointwise");
}

/// Two open instances hold different actor slots; a released slot is
/// reused.
pub async fn slots_are_exclusive_and_reused<F: StorageFactory>(factory: &F) {
    let first = factory.open("slots").await;
    let second = factory.open("slots").await;
    let lease_a = first.acquire_slot().await.expect("slot a");
    let lease_b = second.acquire_slot().await.expect("slot b");
    assert_ne!(lease_a.slot(), lease_b.slot(), "two holders, two slots");
    let freed = lease_a.slot();
    drop(lease_a);
    // Releasing may complete asynchronously (Web Locks): retry briefly.
    let mut reused = None;
    for _ in 0..50 {
        let lease = first.acquire_slot().await.expect("slot again");
        if lease.slot() == freed {
            reused = Some(lease);
            break;
        }
        drop(lease);
        crate::platform::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reused.is_some(), "the released slot {freed} is taken again");
    drop(lease_b);
}

/// A database's writes survive closing and reopening, with the same actor.
pub async fn database_persists_across_reopen<F: StorageFactory>(factory: &F) {
    let db = Database::open(factory.open("reopen").await, OpenOptions::default())
        .await
        .expect("open");
    let actor = db.actor();
    db.put("user:1", json!({"name": "Alice", "age": 30}))
        .await
        .unwrap();
    db.put("user:2", json!({"name": "Bob"})).await.unwrap();
    db.put_many((0..50).map(|i| (format!("bulk:{i:03}"), doc(json!({ "i": i })))))
        .await
        .unwrap();
    assert!(db.delete("user:2").await.unwrap());
    assert!(!db.delete("never-existed").await.unwrap());
    let vector = db.version_vector();
    db.close().await.unwrap();
    assert!(matches!(
        db.get("user:1").await,
        Err(Error::Storage(StorageError::Closed))
    ));

    let db = Database::open(factory.open("reopen").await, OpenOptions::default())
        .await
        .expect("reopen");
    assert_eq!(db.actor(), actor, "slot 0 keeps its actor id");
    assert_eq!(db.version_vector(), vector);
    assert_eq!(
        db.get("user:1").await.unwrap(),
        Some(json!({"name": "Alice", "age": 30}))
    );
    assert_eq!(db.get("user:2").await.unwrap(), None);
    let page = db
        .list(&ListOptions {
            prefix: "bulk:".into(),
            limit: Some(20),
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 20);
    assert_eq!(page.next_cursor.as_deref(), Some("bulk:019"));
    let rest = db
        .list(&ListOptions {
            prefix: "bulk:".into(),
            limit: None,
            cursor: page.next_cursor,
        })
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 30);
    assert_eq!(rest.next_cursor, None);
    // New writes continue the actor's sequence.
    db.put("user:3", json!(3)).await.unwrap();
    assert!(db.version_vector().get(&actor) > vector.get(&actor));
    db.close().await.unwrap();
}

/// Two instances on one storage write under different actors and never
/// lose each other's writes, even to the same id.
pub async fn two_instances_never_lose_writes<F: StorageFactory>(factory: &F) {
    let first = Database::open(factory.open("two").await, OpenOptions::default())
        .await
        .unwrap();
    let second = Database::open(factory.open("two").await, OpenOptions::default())
        .await
        .unwrap();
    assert_ne!(first.actor(), second.actor());
    first.put("shared", json!("first")).await.unwrap();
    second.put("shared", json!("second")).await.unwrap();
    first.put("only-first", json!(1)).await.unwrap();
    second.put("only-second", json!(2)).await.unwrap();
    first.close().await.unwrap();
    second.close().await.unwrap();

    let db = Database::open(factory.open("two").await, OpenOptions::default())
        .await
        .unwrap();
    assert_eq!(db.get("only-first").await.unwrap(), Some(json!(1)));
    assert_eq!(db.get("only-second").await.unwrap(), Some(json!(2)));
    let record = db.record("shared").await.unwrap().expect("shared record");
    let mut values: Vec<String> = record
        .versions()
        .iter()
        .map(|v| v.document().unwrap().as_str().to_owned())
        .collect();
    values.sort();
    if values.len() == 1 {
        // The second write saw the first (announced between instances) and
        // superseded it: a causal overwrite, not a loss.
        assert_eq!(values, vec!["\"second\"".to_owned()]);
    } else {
        assert_eq!(
            values,
            vec!["\"first\"".to_owned(), "\"second\"".to_owned()]
        );
    }
    db.close().await.unwrap();
}

/// Two instances commit one write at a time, interleaved, often enough
/// that each folds chunks the other appended (IndexedDB compacts every 32
/// commits, removing the folded range in one request), on top of rows an
/// earlier session stored: every write is there after reopening.
pub async fn interleaved_writers_survive_compaction<F: StorageFactory>(factory: &F) {
    // Chunks from before (a session of fewer commits than compaction waits
    // for): never folded by the partial compactions below, and never lost.
    let earlier = Database::open(factory.open("interleaved").await, OpenOptions::default())
        .await
        .unwrap();
    for id in 0..10 {
        earlier.put(&format!("z{id}"), json!(id)).await.unwrap();
    }
    earlier.close().await.unwrap();
    let first = Database::open(factory.open("interleaved").await, OpenOptions::default())
        .await
        .unwrap();
    let second = Database::open(factory.open("interleaved").await, OpenOptions::default())
        .await
        .unwrap();
    for round in 0..90 {
        // The first writes new ids only, so no chunk of it is redundant; the
        // second overwrites, so compaction has rows to drop.
        first
            .put(&format!("a{round}"), json!({ "round": round }))
            .await
            .unwrap();
        second
            .put(&format!("b{}", round % 45), json!({ "round": round }))
            .await
            .unwrap();
    }
    assert!(first.delete("a3").await.unwrap());
    first.close().await.unwrap();
    second.close().await.unwrap();

    let db = Database::open(factory.open("interleaved").await, OpenOptions::default())
        .await
        .unwrap();
    for id in 0..90 {
        let expected = (id != 3).then(|| json!({ "round": id }));
        assert_eq!(db.get(&format!("a{id}")).await.unwrap(), expected, "a{id}");
    }
    for id in 0..45 {
        assert_eq!(
            db.get(&format!("b{id}")).await.unwrap(),
            Some(json!({ "round": 45 + id })),
            "b{id}"
        );
    }
    for id in 0..10 {
        assert_eq!(
            db.get(&format!("z{id}")).await.unwrap(),
            Some(json!(id)),
            "z{id}"
        );
    }
    assert_eq!(db.len(), 89 + 45 + 10);
    db.close().await.unwrap();
}

/// Hundreds of single-row commits from one handle (past the 128 after
/// which IndexedDB compacts what a handle appended at once, without
/// waiting for a pause) with another handle committing in between: every
/// row is kept, each commit's receipt hands back the other handle's rows
/// stored since the generation it expected, and generations only grow.
pub async fn long_runs_of_single_commits_keep_every_row<F: StorageFactory>(factory: &F) {
    let first = factory.open("single-commits").await;
    let second = factory.open("single-commits").await;
    let (mut first_generation, mut second_generation) = (0, 0);
    let mut unseen: Vec<String> = Vec::new();
    let mut newest = 0;
    for i in 0..300u32 {
        let id = format!("a{i:03}");
        let receipt = first
            .commit(CommitBatch {
                expected_generation: first_generation,
                records: vec![(id, i.to_le_bytes().to_vec())],
                ..Default::default()
            })
            .await
            .expect("first's commit");
        for other in unseen.drain(..) {
            assert!(
                receipt.foreign_records.iter().any(|(id, _)| *id == other),
                "commit {i} of the first handed back the second's row {other}"
            );
        }
        assert!(receipt.generation > newest, "generations grow");
        newest = receipt.generation;
        first_generation = receipt.generation;
        // Every third: the first's compactions (after every 128th commit)
        // fold chunks of the second's.
        if i % 3 == 0 {
            let id = format!("b{i:03}");
            let receipt = second
                .commit(CommitBatch {
                    expected_generation: second_generation,
                    records: vec![(id.clone(), vec![0xb])],
                    ..Default::default()
                })
                .await
                .expect("second's commit");
            assert!(receipt.generation > newest, "generations grow");
            newest = receipt.generation;
            second_generation = receipt.generation;
            unseen.push(id);
        }
    }
    drop((first, second));
    let mut state = factory
        .open("single-commits")
        .await
        .load()
        .await
        .expect("load");
    let mut rows = state.read_all_rows().expect("rows");
    rows.sort();
    let mut expected: Vec<(String, Vec<u8>)> = (0..300u32)
        .map(|i| (format!("a{i:03}"), i.to_le_bytes().to_vec()))
        .chain(
            (0..300u32)
                .filter(|i| i % 3 == 0)
                .map(|i| (format!("b{i:03}"), vec![0xb])),
        )
        .collect();
    expected.sort();
    assert_eq!(rows, expected, "every row, once");
}

/// Issue #20, bug 1: two instances on one storage; B's first commit after
/// A's is stale and read-merges, B's next one is not. B must have learnt
/// every row A stored (not only the rows of its own batch), so its second
/// commit cannot erase A's acknowledged write or tombstone, nor write back a
/// version vector without A's writes; and A, reopened on its slot, never
/// issues one of its dots twice.
pub async fn a_stale_writer_never_overwrites_what_it_did_not_see<F: StorageFactory>(factory: &F) {
    let a = Database::open(factory.open("unseen").await, OpenOptions::default())
        .await
        .unwrap();
    let b = Database::open(factory.open("unseen").await, OpenOptions::default())
        .await
        .unwrap();
    b.put("t", json!("live")).await.unwrap();
    // A must not hear of B's write through announcements for this to be
    // the interesting case; either way, nothing may be lost.
    a.put("k", json!("from a")).await.unwrap();
    a.put("t", json!("seen by a")).await.unwrap();
    assert!(a.delete("t").await.unwrap());
    let mut a_writes: Vec<crate::crdt::Dot> = Vec::new();
    for id in ["k", "t"] {
        a_writes.push(a.record(id).await.unwrap().unwrap().winner().dot());
    }
    let a_actor = a.actor();
    b.put("x", json!("stale commit")).await.unwrap();
    b.put("k", json!("from b")).await.unwrap();
    b.put("t", json!("from b")).await.unwrap();
    let b_vector = b.version_vector();
    for dot in &a_writes {
        assert!(
            b_vector.covers(dot),
            "B's vector includes A's write {dot:?}"
        );
    }
    a.close().await.unwrap();
    b.close().await.unwrap();

    async fn check<S: Storage>(db: &Database<S>, a_writes: &[crate::crdt::Dot]) {
        for (id, dot) in ["k", "t"].iter().zip(a_writes) {
            let record = db.record(id).await.unwrap().expect("record kept");
            assert!(
                record
                    .versions()
                    .iter()
                    .any(|v| v.dot() == *dot || v.clock().covers(dot)),
                "A's acknowledged write {dot:?} to `{id}` is kept or superseded by a version \
                 that saw it: {record:?}"
            );
        }
    }
    let reopened = Database::open(factory.open("unseen").await, OpenOptions::default())
        .await
        .unwrap();
    assert_eq!(reopened.actor(), a_actor, "A's slot is reused");
    check(&reopened, &a_writes).await;
    for dot in &a_writes {
        assert!(reopened.version_vector().covers(dot));
    }
    reopened.put("after", json!(1)).await.unwrap();
    let next = reopened
        .record("after")
        .await
        .unwrap()
        .unwrap()
        .winner()
        .dot();
    assert!(
        a_writes.iter().all(|dot| next.seq > dot.seq),
        "the reused actor never issues a dot twice"
    );
    reopened.close().await.unwrap();
}

/// A database written by a newer format is refused with a clear error.
pub async fn newer_format_is_refused<F: StorageFactory>(factory: &F) {
    let storage = factory.open("newer").await;
    storage
        .commit(CommitBatch {
            expected_generation: 0,
            meta: vec![(
                meta_keys::FORMAT.into(),
                (FORMAT_VERSION + 1).to_le_bytes().to_vec(),
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    let error = Database::open(storage, OpenOptions::default())
        .await
        .expect_err("a newer format must not open");
    assert!(
        matches!(error, Error::Storage(StorageError::FormatTooNew { found, .. }) if found == FORMAT_VERSION + 1),
        "got {error:?}"
    );
    assert!(error.to_string().contains("upgrade PluresDB"));
}

/// A database written by an older format opens, keeps its data, and is
/// marked with the current format.
pub async fn older_format_is_migrated<F: StorageFactory>(factory: &F) {
    let db = Database::open(factory.open("older").await, OpenOptions::default())
        .await
        .unwrap();
    db.put("kept", json!({"from": "format 1"})).await.unwrap();
    db.close().await.unwrap();
    // Rewind the stored format to 1, as a build of that time left it.
    let storage = factory.open("older").await;
    let generation = storage.load().await.unwrap().generation;
    storage
        .commit(CommitBatch {
            expected_generation: generation,
            meta: vec![(meta_keys::FORMAT.into(), 1u32.to_le_bytes().to_vec())],
            ..Default::default()
        })
        .await
        .unwrap();
    let db = Database::open(storage, OpenOptions::default())
        .await
        .expect("an older format opens");
    assert_eq!(
        db.get("kept").await.unwrap(),
        Some(json!({"from": "format 1"}))
    );
    db.close().await.unwrap();
    let state = factory.open("older").await.load().await.unwrap();
    assert_eq!(
        state.meta.get(meta_keys::FORMAT),
        Some(&FORMAT_VERSION.to_le_bytes().to_vec()),
        "the format was brought up to date"
    );
}

/// Index segments round-trip and can be removed.
pub async fn segments_round_trip<F: StorageFactory>(factory: &F) {
    let storage = factory.open("segments").await;
    storage
        .commit(CommitBatch {
            expected_generation: 0,
            segments: vec![("s1".into(), vec![1; 100]), ("s2".into(), vec![2; 10])],
            ..Default::default()
        })
        .await
        .unwrap();
    storage
        .commit(CommitBatch {
            expected_generation: 1,
            segments: vec![("s3".into(), vec![3])],
            removed_segments: vec!["s1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut segments = factory
        .open("segments")
        .await
        .load()
        .await
        .unwrap()
        .segments;
    segments.sort();
    assert_eq!(
        segments,
        vec![("s2".into(), vec![2; 10]), ("s3".into(), vec![3])]
    );
}

/// A corrupt row is reported on access; every other row stays readable and
/// writable, and the corrupt row can be overwritten.
pub async fn corrupt_rows_are_reported_not_fatal<F: StorageFactory>(factory: &F) {
    let db = Database::open(factory.open("corrupt").await, OpenOptions::default())
        .await
        .unwrap();
    db.put("good", json!({"ok": true})).await.unwrap();
    db.close().await.unwrap();
    let storage = factory.open("corrupt").await;
    let generation = storage.load().await.unwrap().generation;
    storage
        .commit(CommitBatch {
            expected_generation: generation,
            records: vec![("bad".into(), vec![1, 0xff, 0xff, 0xff, 0xff, 7])],
            ..Default::default()
        })
        .await
        .unwrap();
    let db = Database::open(storage, OpenOptions::default())
        .await
        .expect("opens despite a corrupt row");
    assert_eq!(db.get("good").await.unwrap(), Some(json!({"ok": true})));
    let error = db.get("bad").await.expect_err("corrupt row is an error");
    assert!(
        matches!(error, Error::Storage(StorageError::Corrupt { ref key, .. }) if key == "bad"),
        "got {error:?}"
    );
    db.put("bad", json!("repaired")).await.unwrap();
    assert_eq!(db.get("bad").await.unwrap(), Some(json!("repaired")));
    db.close().await.unwrap();
}

/// Queries see persisted data; a conflict received from a peer is kept
/// across a reopen.
pub async fn queries_and_conflicts_survive_reopen<F: StorageFactory>(factory: &F) {
    let db = Database::open(factory.open("query").await, OpenOptions::default())
        .await
        .unwrap();
    db.put_many([
        ("user:1".to_owned(), doc(json!({"name": "Ann", "age": 31}))),
        ("user:2".to_owned(), doc(json!({"name": "Bob", "age": 17}))),
        ("user:3".to_owned(), doc(json!({"name": "Cid", "age": 45}))),
        ("team:1".to_owned(), doc(json!({"name": "Core", "age": 99}))),
    ])
    .await
    .unwrap();
    // A peer wrote user:1 concurrently, with an older timestamp: it loses,
    // and stays readable as a conflict.
    let mut peer = CrdtStore::new(ActorId::from_bytes([9; 16]));
    let op = peer.put("user:1", doc(json!({"name": "Ann (phone)"})), 1);
    db.apply_remote(vec![op], Origin::Peer("peer".into()), None)
        .await
        .unwrap();
    assert_eq!(db.conflicts("user:1").await.unwrap().len(), 1);
    db.close().await.unwrap();

    let db = Database::open(factory.open("query").await, OpenOptions::default())
        .await
        .unwrap();
    let query = Query::from_json(&json!({
        "prefix": "user:", "where": {"age": {"$gte": 18}}, "sort": "-age"
    }))
    .unwrap();
    let ids: Vec<String> = db
        .query(&query)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["user:3", "user:1"]);
    let conflicts = db.conflicts("user:1").await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        conflicts[0].document().unwrap().as_str(),
        r#"{"name":"Ann (phone)"}"#
    );
    assert_eq!(
        db.get("user:1").await.unwrap(),
        Some(json!({"name": "Ann", "age": 31}))
    );
    db.close().await.unwrap();
}

/// A failed commit (quota exceeded, I/O error) changes nothing and the
/// database keeps working once the cause is gone. Backends that cannot
/// inject a failure skip this check by returning `None`.
pub async fn failed_commits_change_nothing<F: StorageFactory>(factory: &F) {
    let Some((storage, fail)) = factory.failing("failing").await else {
        return;
    };
    let db = Database::open(storage, OpenOptions::default())
        .await
        .unwrap();
    db.put("kept", json!(1)).await.unwrap();
    fail(true);
    // Large enough to need new pages in any backend with a size cap.
    let big = "x".repeat(256 * 1024);
    let error = db.put("lost", json!(big)).await.expect_err("commit fails");
    assert_eq!(
        error.name(),
        crate::error::ErrorName::QuotaExceeded,
        "{error}"
    );
    assert_eq!(
        db.get("lost").await.unwrap(),
        None,
        "a failed write is not visible"
    );
    fail(false);
    db.put("after", json!(3)).await.unwrap();
    assert_eq!(db.get("kept").await.unwrap(), Some(json!(1)));
    assert_eq!(db.get("after").await.unwrap(), Some(json!(3)));
    db.close().await.unwrap();
}

/// A backend that reads records back by id ([`Storage::reads_records`])
/// returns, for each id asked for, every live row of it merged (rows of
/// two writers, one of them stale, spread over commits large enough to be
/// stored in several parts), nothing for an id removed or never written,
/// and the same after the rows were folded by upkeep.
pub async fn records_read_back_are_every_live_row_merged<F: StorageFactory>(factory: &F) {
    let first = factory.open("read-back").await;
    let loaded = first.load().await.expect("load");
    if !first.reads_records() {
        return;
    }
    let second = factory.open("read-back").await;
    let mut tab_a = CrdtStore::new(ActorId::from_bytes([1; 16]));
    let mut tab_b = CrdtStore::new(ActorId::from_bytes([2; 16]));
    let padding = "p".repeat(700);
    let mut rows_a = Vec::new();
    for i in 0..400 {
        let id = format!("r{i:03}");
        tab_a.put(&id, doc(json!({ "i": i, "pad": padding })), 100 + i);
        rows_a.push((id.clone(), tab_a.record(&id).unwrap().to_bytes()));
    }
    // 400 rows of about 800 bytes: several parts in a backend that splits.
    first
        .commit(CommitBatch {
            expected_generation: loaded.generation,
            records: rows_a,
            ..Default::default()
        })
        .await
        .expect("first writer commits");
    // The second writer, which saw nothing, writes two of them concurrently.
    for id in ["r007", "r350"] {
        tab_b.put(id, doc(json!({ "from": "b", "id": id })), 5_000);
    }
    let rows_b = ["r007", "r350"]
        .map(|id| (id.to_owned(), tab_b.record(id).unwrap().to_bytes()))
        .to_vec();
    let mut generation = second
        .commit(CommitBatch {
            expected_generation: 0,
            records: rows_b,
            ..Default::default()
        })
        .await
        .expect("the stale writer commits")
        .generation;
    // The first writer updates one, then removes another (tombstone
    // compaction), in commits of their own; and many small commits follow
    // so that upkeep has chunks to fold.
    tab_a.put("r100", doc(json!({ "updated": true })), 9_000);
    let mut batches = vec![CommitBatch {
        records: vec![("r100".into(), tab_a.record("r100").unwrap().to_bytes())],
        ..Default::default()
    }];
    batches.push(CommitBatch {
        removed_records: vec!["r200".into()],
        ..Default::default()
    });
    for i in 0..40 {
        let id = format!("s{i:02}");
        tab_a.put(&id, doc(json!(i)), 10_000 + i);
        batches.push(CommitBatch {
            records: vec![(id.clone(), tab_a.record(&id).unwrap().to_bytes())],
            ..Default::default()
        });
    }
    for mut batch in batches {
        batch.expected_generation = generation;
        generation = first.commit(batch).await.expect("commit").generation;
    }

    let check = |rows: Vec<(String, Vec<u8>)>, when: &str| {
        let by_id: std::collections::HashMap<String, crate::crdt::Record> = rows
            .into_iter()
            .map(|(id, row)| {
                let record = crate::crdt::Record::from_bytes(&row).expect("row decodes");
                assert_eq!(record.id(), id, "{when}: the row of {id} holds its record");
                (id, record)
            })
            .collect();
        assert!(
            !by_id.contains_key("r200"),
            "{when}: a removed id has no row"
        );
        assert!(
            !by_id.contains_key("none"),
            "{when}: an unknown id has no row"
        );
        for id in ["r007", "r350"] {
            let record = &by_id[id];
            assert_eq!(
                record.versions().len(),
                2,
                "{when}: both writers' versions of {id}"
            );
            assert_eq!(
                record.data().unwrap().as_str(),
                format!(r#"{{"from":"b","id":"{id}"}}"#),
                "{when}"
            );
        }
        assert_eq!(
            by_id["r100"].data().unwrap().as_str(),
            r#"{"updated":true}"#,
            "{when}"
        );
        assert_eq!(by_id["r399"], *tab_a.record("r399").unwrap(), "{when}");
        assert_eq!(by_id["s39"], *tab_a.record("s39").unwrap(), "{when}");
        assert_eq!(by_id.len(), 5, "{when}");
    };
    let wanted = || {
        ["r007", "r350", "r100", "r200", "r399", "s39", "none"]
            .map(String::from)
            .to_vec()
    };
    check(
        first.read_records(wanted()).await.expect("read back"),
        "appended",
    );
    check(
        second.read_records(wanted()).await.expect("read back"),
        "from the other handle",
    );
    while first.housekeeping_due() {
        first.housekeeping().await.expect("upkeep");
    }
    check(
        first.read_records(wanted()).await.expect("read back"),
        "after upkeep",
    );
    check(
        second.read_records(wanted()).await.expect("read back"),
        "after the other's upkeep",
    );
    let reopened = factory.open("read-back").await;
    reopened.load().await.expect("load");
    check(
        reopened.read_records(wanted()).await.expect("read back"),
        "after reopening",
    );
}

/// Rows read where their hints point ([`Storage::read_rows_at`]) are the
/// rows loaded from there: an id asked for at its row's place gets that
/// row, an id asked for where it has no row, an unknown id or a place out
/// of range gets nothing. Once the writer's upkeep folded those places
/// away, nothing is found there, and reading the ids whole still works.
/// Backends that give rows no hints pass trivially.
pub async fn rows_read_at_their_hints_are_the_rows_loaded<F: StorageFactory>(factory: &F) {
    use crate::crdt::NO_HINT;
    use std::collections::{BTreeMap, BTreeSet};
    let writer = factory.open("hints").await;
    let mut generation = writer.load().await.expect("load").generation;
    let mut tab = CrdtStore::new(ActorId::from_bytes([3; 16]));
    let padding = "h".repeat(600);
    let mut records = Vec::new();
    for i in 0..300 {
        let id = format!("h{i:03}");
        tab.put(&id, doc(json!({ "i": i, "pad": padding })), 100 + i);
        records.push((id.clone(), tab.record(&id).unwrap().to_bytes()));
    }
    // Several parts in a backend that splits.
    generation = writer
        .commit(CommitBatch {
            expected_generation: generation,
            records,
            ..Default::default()
        })
        .await
        .expect("commit")
        .generation;
    // Then rows in commits of their own: three written again (one id in
    // two places), and small ones, enough for upkeep to fold what this
    // writer appended (below).
    let again = [4, 150, 299].map(|i| (format!("h{i:03}"), json!({ "i": i, "again": true })));
    let small = (0..40).map(|i| (format!("t{i:03}"), json!(i)));
    for (at, (id, value)) in again.into_iter().chain(small).enumerate() {
        tab.put(&id, doc(value), 1_000 + at as u64);
        generation = writer
            .commit(CommitBatch {
                expected_generation: generation,
                records: vec![(id.clone(), tab.record(&id).unwrap().to_bytes())],
                ..Default::default()
            })
            .await
            .expect("commit")
            .generation;
    }
    let reader = factory.open("hints").await;
    let rows = reader
        .load()
        .await
        .expect("load")
        .read_all_rows()
        .expect("rows");
    let hinted: Vec<(String, u32, Vec<u8>)> = {
        let reloaded = factory.open("hints").await;
        let mut loaded = reloaded.load().await.expect("load");
        let mut hinted = Vec::new();
        for entry in std::mem::take(&mut loaded.records) {
            if let super::StoredEntry::Row(row) = entry.expect("entry") {
                if row.hint() != NO_HINT {
                    hinted.push((row.id().to_owned(), row.hint(), row.bytes().to_vec()));
                }
            }
        }
        hinted
    };
    assert!(rows.len() >= 300);
    assert_eq!(
        !hinted.is_empty(),
        factory.hints_rows(),
        "rows are handed over with hints exactly when the backend says so"
    );
    if hinted.is_empty() {
        return;
    }
    // Read through the handle that loaded with hints: `reader` loaded the
    // same values in the same order, so its hints name the same places.
    let places: BTreeMap<u32, BTreeSet<&str>> =
        hinted
            .iter()
            .fold(BTreeMap::new(), |mut places, (id, hint, _)| {
                places.entry(*hint).or_default().insert(id.as_str());
                places
            });
    assert!(places.len() >= 2, "rows lie in several places: {places:?}");
    let (first_place, first_ids) = places.iter().next().unwrap();
    let elsewhere = hinted
        .iter()
        .find(|(id, _, _)| !first_ids.contains(id.as_str()))
        .map(|(id, _, _)| id.clone())
        .expect("an id that is not in the first place");
    let misplaced = vec![
        (elsewhere.clone(), *first_place),
        ("unknown".to_owned(), *first_place),
        (elsewhere.clone(), u32::MAX - 1),
    ];
    let found = reader
        .read_rows_at(misplaced.clone())
        .await
        .expect("read at hints");
    assert!(
        found.is_empty(),
        "nothing where an id does not lie: found {:?}",
        found.iter().map(|(id, _)| id).collect::<Vec<_>>()
    );
    let mut wanted: Vec<(String, u32)> = hinted
        .iter()
        .map(|(id, hint, _)| (id.clone(), *hint))
        .collect();
    wanted.extend(misplaced);
    let found: BTreeMap<String, Vec<u8>> = reader
        .read_rows_at(wanted.clone())
        .await
        .expect("read at hints")
        .into_iter()
        .collect();
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (id, _, bytes) in &hinted {
        let merged = match expected.remove(id) {
            None => bytes.clone(),
            Some(kept) => super::merge_record_rows(id, bytes, &kept).expect("rows merge"),
        };
        expected.insert(id.clone(), merged);
    }
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "one row per id asked for where it lies, none for {elsewhere} where it does not"
    );
    for (id, bytes) in &found {
        assert_eq!(
            crate::crdt::Record::from_bytes(bytes).unwrap(),
            crate::crdt::Record::from_bytes(&expected[id]).unwrap(),
            "the row of {id}"
        );
    }
    // A database opened now keeps no document in memory: each body's hint
    // names a place loaded. Once those are gone, its gets go the long way.
    let db = Database::open(
        factory.open("hints").await,
        OpenOptions {
            cache_bytes: 0,
            ..Default::default()
        },
    )
    .await
    .expect("open");
    let check = |when: &'static str| {
        let db = &db;
        let padding = &padding;
        async move {
            for i in 0..300 {
                let id = format!("h{i:03}");
                let expected = if [4, 150, 299].contains(&i) {
                    json!({ "i": i, "again": true })
                } else {
                    json!({ "i": i, "pad": padding })
                };
                assert_eq!(
                    db.get(&id).await.expect("get"),
                    Some(expected),
                    "{when}: {id}"
                );
            }
            for i in 0..40 {
                let id = format!("t{i:03}");
                assert_eq!(
                    db.get(&id).await.expect("get"),
                    Some(json!(i)),
                    "{when}: {id}"
                );
            }
        }
    };
    // The writer's upkeep folds everything it appended, every place the
    // reader loaded from among them.
    assert!(
        writer.housekeeping_due(),
        "a backend that hints rows folds what it appended"
    );
    while writer.housekeeping_due() {
        writer.housekeeping().await.expect("upkeep");
    }
    let found = reader.read_rows_at(wanted).await.expect("read at hints");
    assert!(
        found.is_empty(),
        "places folded away hold nothing: found {:?}",
        found.iter().map(|(id, _)| id).collect::<Vec<_>>()
    );
    check("after the places were folded away").await;
    db.close().await.expect("close");
    if reader.reads_records() {
        let whole = reader
            .read_records(vec!["h004".into(), "h200".into()])
            .await
            .expect("read whole");
        assert_eq!(whole.len(), 2, "read whole after folding");
    }
}

/// A database whose documents outgrow its cache (`cache_bytes`) reads
/// every record back as written: gets, lists, indexed queries and
/// conflicts, before and after reopening. Backends that cannot read
/// records back keep every document in memory and pass the same checks.
pub async fn documents_beyond_the_cache_read_back_as_written<F: StorageFactory>(factory: &F) {
    use std::collections::BTreeMap;
    let options = || OpenOptions {
        cache_bytes: 8 * 1024,
        indexes: vec!["group".into()],
        ..Default::default()
    };
    let document = |i: usize, round: usize| json!({ "i": i, "round": round, "group": format!("g{}", i % 7), "pad": "q".repeat(300 + i % 500) });
    let db = Database::open(factory.open("beyond-cache").await, options())
        .await
        .unwrap();
    let mut expected: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for start in (0..400).step_by(100) {
        let batch: Vec<(String, Document)> = (start..start + 100)
            .map(|i| (format!("doc:{i:04}"), doc(document(i, 0))))
            .collect();
        for (id, document) in &batch {
            expected.insert(id.clone(), serde_json::from_str(document.as_str()).unwrap());
        }
        db.put_many(batch).await.unwrap();
    }
    for i in (0..400).step_by(9) {
        let id = format!("doc:{i:04}");
        db.put(&id, document(i, 1)).await.unwrap();
        expected.insert(id, document(i, 1));
    }
    for i in (5..400).step_by(31) {
        let id = format!("doc:{i:04}");
        db.delete(&id).await.unwrap();
        expected.remove(&id);
    }
    // A peer's concurrent, older write of one record: kept as a conflict.
    let mut peer = CrdtStore::new(ActorId::from_bytes([9; 16]));
    let op = peer.put("doc:0003", doc(json!({ "from": "peer" })), 1);
    db.apply_remote(vec![op], Origin::Peer("peer".into()), None)
        .await
        .unwrap();

    async fn check<S: Storage>(
        db: &Database<S>,
        expected: &BTreeMap<String, serde_json::Value>,
        when: &str,
    ) {
        if db.storage().reads_records() {
            let stats = db.stats().unwrap();
            assert!(
                stats.records_in_storage_only > 300,
                "{when}: documents were left in storage ({stats:?})"
            );
        }
        for i in 0..400 {
            let id = format!("doc:{i:04}");
            assert_eq!(
                db.get(&id).await.unwrap().as_ref(),
                expected.get(&id),
                "{when}: {id}"
            );
        }
        let listed: Vec<(String, serde_json::Value)> = db
            .list(&ListOptions {
                prefix: "doc:".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|(id, document)| (id, serde_json::from_str(document.as_str()).unwrap()))
            .collect();
        let wanted: Vec<(String, serde_json::Value)> = expected
            .iter()
            .map(|(id, value)| (id.clone(), value.clone()))
            .collect();
        assert_eq!(listed, wanted, "{when}: the list");
        let query = Query::from_json(&json!({ "where": { "group": "g3" }, "sort": "i" })).unwrap();
        let (hits, plan) = db.query_with_plan(&query).await.unwrap();
        assert_eq!(plan.index.as_deref(), Some("group"), "{when}");
        let hits: Vec<String> = hits.into_iter().map(|(id, _)| id).collect();
        let wanted: Vec<String> = expected
            .iter()
            .filter(|(_, value)| value["group"] == "g3")
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(hits, wanted, "{when}: the indexed query");
        let conflicts = db.conflicts("doc:0003").await.unwrap();
        assert_eq!(conflicts.len(), 1, "{when}");
        assert_eq!(
            conflicts[0].document().unwrap().as_str(),
            r#"{"from":"peer"}"#,
            "{when}"
        );
    }
    check(&db, &expected, "written").await;
    db.close().await.unwrap();
    let db = Database::open(factory.open("beyond-cache").await, options())
        .await
        .unwrap();
    check(&db, &expected, "reopened").await;
    // Writes over documents left in storage keep the others' versions.
    db.put("doc:0003", json!({ "round": 2 })).await.unwrap();
    expected.insert("doc:0003".into(), json!({ "round": 2 }));
    assert_eq!(
        db.get("doc:0003").await.unwrap(),
        Some(json!({ "round": 2 }))
    );
    db.close().await.unwrap();
}

/// Records written again in later commits (which an append-only backend
/// keeps as several rows until it folds them) are indexed by their newest
/// values when a database opens with a cache too small for their
/// documents, and deleted ones are in no index.
pub async fn an_index_opened_over_rewritten_records_holds_their_newest_values<F: StorageFactory>(
    factory: &F,
) {
    let options = |cache_bytes| OpenOptions {
        cache_bytes,
        indexes: vec!["group".into()],
        ..Default::default()
    };
    let db = Database::open(factory.open("rewritten").await, options(usize::MAX))
        .await
        .unwrap();
    let pad = "z".repeat(200);
    db.put_many((0..200).map(|i| {
        let value = json!({ "group": "old", "i": i, "pad": pad });
        (format!("n{i:03}"), doc(value))
    }))
    .await
    .unwrap();
    db.close().await.unwrap();
    // Reopened, a few records move to another group, one commit each (too
    // few to be folded), and some are deleted.
    let db = Database::open(factory.open("rewritten").await, options(usize::MAX))
        .await
        .unwrap();
    for i in (0..200).step_by(10) {
        db.put(
            &format!("n{i:03}"),
            json!({ "group": "new", "i": i, "pad": pad }),
        )
        .await
        .unwrap();
    }
    for i in (5..200).step_by(50) {
        db.delete(&format!("n{i:03}")).await.unwrap();
    }
    db.close().await.unwrap();
    let ids = |hits: Vec<(String, Document)>| -> Vec<String> {
        hits.into_iter().map(|(id, _)| id).collect()
    };
    for cache_bytes in [0, 1_000, usize::MAX] {
        let db = Database::open(factory.open("rewritten").await, options(cache_bytes))
            .await
            .unwrap();
        let query = |group: &str| {
            Query::from_json(&json!({ "where": { "group": group }, "sort": "i" })).unwrap()
        };
        let (new, plan) = db.query_with_plan(&query("new")).await.unwrap();
        assert_eq!(plan.index.as_deref(), Some("group"));
        let wanted: Vec<String> = (0..200).step_by(10).map(|i| format!("n{i:03}")).collect();
        assert_eq!(ids(new), wanted, "cache {cache_bytes}: the moved records");
        let old = ids(db.query(&query("old")).await.unwrap());
        let wanted: Vec<String> = (0..200)
            .filter(|i| i % 10 != 0 && i % 50 != 5)
            .map(|i| format!("n{i:03}"))
            .collect();
        assert_eq!(
            old, wanted,
            "cache {cache_bytes}: the others, without the deleted"
        );
        db.close().await.unwrap();
    }
}

/// Generates one test function per conformance check for a backend:
/// `storage_conformance_tests!(tokio::test, MyFactory::new())`.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($attribute:meta, $factory:expr) => {
        $crate::storage_conformance_tests!(@each $attribute, $factory,
            fresh_storage_is_empty,
            commits_round_trip,
            removals_drop_only_earlier_rows,
            streamed_commits_are_atomic,
            stale_writers_merge_instead_of_overwriting,
            slots_are_exclusive_and_reused,
            database_persists_across_reopen,
            two_instances_never_lose_writes,
            interleaved_writers_survive_compaction,
            long_runs_of_single_commits_keep_every_row,
            a_stale_writer_never_overwrites_what_it_did_not_see,
            newer_format_is_refused,
            older_format_is_migrated,
            segments_round_trip,
            corrupt_rows_are_reported_not_fatal,
            queries_and_conflicts_survive_reopen,
            failed_commits_change_nothing,
            records_read_back_are_every_live_row_merged,
            rows_read_at_their_hints_are_the_rows_loaded,
            documents_beyond_the_cache_read_back_as_written,
            an_index_opened_over_rewritten_records_holds_their_newest_values,
        );
    };
    (@each $attribute:meta, $factory:expr, $($check:ident,)*) => {
        $(
            #[$attribute]
            async fn $check() {
                let factory = $factory;
                $crate::storage::conformance::$check(&factory).await;
            }
        )*
    };
}
