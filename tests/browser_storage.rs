//! The storage conformance suite in headless Chromium, on IndexedDB and on
//! memory. Each run uses fresh database names.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::collections::HashMap;

use pluresdb::error::StorageError;
use pluresdb::storage::conformance::{FailSwitch, StorageFactory};
use pluresdb::storage::{IndexedDbStorage, MemoryStorage};
use wasm_bindgen_test::wasm_bindgen_test_configure;

wasm_bindgen_test_configure!(run_in_browser);

/// IndexedDB databases named `<run>-<name>`, where `run` is unique per test.
struct IndexedDbFactory {
    run: String,
}

impl IndexedDbFactory {
    fn new() -> Self {
        let mut bytes = [0u8; 8];
        pluresdb::platform::fill_random(&mut bytes);
        Self {
            run: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

impl StorageFactory for IndexedDbFactory {
    type Storage = IndexedDbStorage;

    /// Every database keeps id lists from its first commit, so that the
    /// checks of reading records back run on small databases.
    async fn open(&self, name: &str) -> IndexedDbStorage {
        let storage = IndexedDbStorage::open(&format!("{}-{name}", self.run))
            .await
            .expect("IndexedDB opens");
        storage.list_ids_from_bytes(0);
        storage
    }

    fn hints_rows(&self) -> bool {
        true
    }
}

#[derive(Default)]
struct MemoryFactory {
    storages: RefCell<HashMap<String, MemoryStorage>>,
}

impl StorageFactory for MemoryFactory {
    type Storage = MemoryStorage;

    async fn open(&self, name: &str) -> MemoryStorage {
        self.storages
            .borrow_mut()
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

mod indexeddb {
    use super::*;
    pluresdb::storage_conformance_tests!(
        wasm_bindgen_test::wasm_bindgen_test,
        IndexedDbFactory::new()
    );
}

mod memory {
    use super::*;
    pluresdb::storage_conformance_tests!(
        wasm_bindgen_test::wasm_bindgen_test,
        MemoryFactory::default()
    );
}

mod indexeddb_specifics {
    use super::*;
    use pluresdb::storage::{meta_keys, Storage};
    use pluresdb::{Database, OpenOptions};
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    async fn a_lost_connection_is_reopened_and_the_commit_retried() {
        let factory = IndexedDbFactory::new();
        let db = Database::open(factory.open("lost").await, OpenOptions::default())
            .await
            .unwrap();
        db.put("before", json!(1)).await.unwrap();
        db.storage().simulate_lost_connection();
        db.put("after", json!(2))
            .await
            .expect("the commit is retried on a new connection");
        db.close().await.unwrap();
        let db = Database::open(factory.open("lost").await, OpenOptions::default())
            .await
            .unwrap();
        assert_eq!(db.get("before").await.unwrap(), Some(json!(1)));
        assert_eq!(db.get("after").await.unwrap(), Some(json!(2)));
        db.close().await.unwrap();
    }

    /// A storage dropped without `close` (as when a database's open fails
    /// after its storage reopened a lost connection) closes the connection
    /// it holds: left open, with its `versionchange` handler dropped, it
    /// blocks deleting or upgrading the database until garbage collection.
    #[wasm_bindgen_test]
    async fn a_dropped_storage_closes_the_connection_it_reopened() {
        let factory = IndexedDbFactory::new();
        let storage = factory.open("dropped").await;
        storage.simulate_lost_connection();
        storage
            .load()
            .await
            .expect("the load reopens the connection");
        drop(storage);
        // `blocked` alone proves nothing: a closed connection whose last
        // transaction is still finishing fires it too, then lets the delete
        // through. A connection left open never does.
        let script = format!(
            r#"new Promise((ok, fail) => {{
                const request = indexedDB.deleteDatabase({:?});
                const timer = setTimeout(() => fail(new Error('the database was not deleted within 5 s: a connection stays open')), 5000);
                request.onsuccess = () => {{ clearTimeout(timer); ok(); }};
                request.onerror = () => {{ clearTimeout(timer); fail(request.error); }};
            }})"#,
            format!("pluresdb/{}-dropped", factory.run)
        );
        let promise: js_sys::Promise = js_sys::eval(&script).unwrap().into();
        wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .expect("the database is deleted");
    }

    /// Rewrites a database as schema 3 or 2 laid it out: chunks without
    /// metadata entries, and a head row (`meta/generation`) holding the
    /// generation and the version vector and HLC (schema 3), or the
    /// generation alone with the vector and HLC as rows of their own
    /// (schema 2). One writer wrote the database, so its newest chunk's
    /// metadata is all of it.
    async fn as_older_schema(database: &str, schema: u32) {
        let script = format!(
            r#"(async () => {{
                const request = (r) => new Promise((ok, fail) => {{ r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }});
                const db = await request(indexedDB.open({database:?}));
                const tx = db.transaction(['records', 'meta'], 'readwrite');
                const records = tx.objectStore('records');
                const meta = tx.objectStore('meta');
                const keys = await request(records.getAllKeys());
                const values = await request(records.getAll());
                let generation = 0;
                let newest = [];
                keys.forEach((key, index) => {{
                    if (!Array.isArray(key)) return;
                    const chunk = new Uint8Array(values[index]);
                    const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
                    const kept = [];
                    const found = [];
                    let at = 5;
                    const count = view.getUint32(1, true);
                    for (let entry = 0; entry < count; entry++) {{
                        const start = at;
                        const kind = chunk[at]; at += 1;
                        const idLength = view.getUint32(at, true); at += 4;
                        const id = chunk.subarray(at, at + idLength); at += idLength;
                        let value = null;
                        if (kind !== 1) {{
                            const length = view.getUint32(at, true); at += 4;
                            value = chunk.slice(at, at + length); at += length;
                        }}
                        if (kind === 2) found.push([id, value]);
                        else kept.push(chunk.subarray(start, at));
                    }}
                    if (at !== chunk.length) throw new Error('unexpected chunk layout');
                    if (key[0] >= generation && found.length) newest = found;
                    generation = Math.max(generation, key[0]);
                    const size = 5 + kept.reduce((sum, part) => sum + part.length, 0);
                    const out = new Uint8Array(size);
                    out[0] = chunk[0];
                    new DataView(out.buffer).setUint32(1, kept.length, true);
                    let offset = 5;
                    for (const part of kept) {{ out.set(part, offset); offset += part.length; }}
                    records.put(out, key);
                }});
                if (!newest.length) throw new Error('no chunk carried metadata');
                const parts = [];
                const head = new Uint8Array(8);
                new DataView(head.buffer).setBigUint64(0, BigInt(generation), true);
                parts.push(head);
                for (const [key, value] of newest) {{
                    if ({schema} === 2) {{
                        meta.put(value, new TextDecoder().decode(key));
                        continue;
                    }}
                    const lengths = new Uint8Array(6);
                    const view = new DataView(lengths.buffer);
                    view.setUint16(0, key.length, true);
                    parts.push(lengths.subarray(0, 2), key);
                    view.setUint32(2, value.length, true);
                    parts.push(lengths.subarray(2, 6), value);
                }}
                const row = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
                let offset = 0;
                for (const part of parts) {{ row.set(part, offset); offset += part.length; }}
                meta.put(row, 'generation');
                await new Promise((ok) => {{ tx.oncomplete = ok; }});
                db.close();
            }})()"#
        );
        let promise: js_sys::Promise = js_sys::eval(&script).unwrap().into();
        wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .expect("the database was rewritten");
    }

    /// Runs `request` (a JavaScript expression over `store`, an object
    /// store of IndexedDB database `database` opened read-only) and resolves
    /// to its result.
    async fn read_store(database: &str, store: &str, request: &str) -> wasm_bindgen::JsValue {
        let script = format!(
            r#"(async () => {{
                const request = (r) => new Promise((ok, fail) => {{ r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }});
                const db = await request(indexedDB.open({database:?}));
                const store = db.transaction({store:?}).objectStore({store:?});
                const result = await request({request});
                db.close();
                return result;
            }})()"#
        );
        let promise: js_sys::Promise = js_sys::eval(&script).unwrap().into();
        wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .expect("the store was read")
    }

    /// Runs `statement` (JavaScript, with `store` bound to the object store)
    /// in a read-write transaction on store `store` of IndexedDB database
    /// `database`, and waits until the transaction completes.
    async fn write_store(database: &str, store: &str, statement: &str) {
        let script = format!(
            r#"(async () => {{
                const request = (r) => new Promise((ok, fail) => {{ r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }});
                const db = await request(indexedDB.open({database:?}));
                const tx = db.transaction({store:?}, 'readwrite');
                const store = tx.objectStore({store:?});
                {statement};
                await new Promise((ok, fail) => {{ tx.oncomplete = ok; tx.onabort = () => fail(tx.error); }});
                db.close();
            }})()"#
        );
        let promise: js_sys::Promise = js_sys::eval(&script).unwrap().into();
        wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .expect("the store was written");
    }

    /// How many chunks (commits or compaction outputs, however many parts
    /// each is stored in: keys `[generation, part]`) the records store of
    /// IndexedDB database `database` holds.
    async fn stored_chunks(database: &str) -> u32 {
        read_store(
            database,
            "records",
            "store.getAllKeys()).then((keys) => new Set(keys.map((key) => key[0])).size",
        )
        .await
        .as_f64()
        .expect("a count") as u32
    }

    /// A run of commits is folded at once when what it appended reaches
    /// 8 MiB, however few chunks that is (a compaction reads them all into
    /// memory): twelve commits of 900 KB leave far fewer than twelve
    /// chunks, and every row.
    #[wasm_bindgen_test]
    async fn runs_of_large_commits_are_folded_by_size() {
        let name = format!("{}-by-size", IndexedDbFactory::new().run);
        let storage = IndexedDbStorage::open(&name).await.unwrap();
        let mut generation = 0;
        for i in 0..12u8 {
            let receipt = storage
                .commit(pluresdb::storage::CommitBatch {
                    expected_generation: generation,
                    records: vec![(format!("r{i:02}"), vec![i; 900_000])],
                    ..Default::default()
                })
                .await
                .unwrap();
            generation = receipt.generation;
        }
        let chunks = stored_chunks(&format!("pluresdb/{name}")).await;
        assert!(chunks < 8, "twelve commits folded: {chunks} chunks stored");
        drop(storage);
        let mut loaded = IndexedDbStorage::open(&name)
            .await
            .unwrap()
            .load()
            .await
            .unwrap();
        let mut rows = loaded.read_all_rows().unwrap();
        rows.sort();
        let expected: Vec<(String, Vec<u8>)> = (0..12u8)
            .map(|i| (format!("r{i:02}"), vec![i; 900_000]))
            .collect();
        assert!(rows == expected, "every row once, as written");
    }

    /// The same through a database: twelve awaited puts of 900 KB
    /// documents leave far fewer than twelve chunks (without the bound on
    /// bytes, a run of them waited for 128).
    #[wasm_bindgen_test]
    async fn a_pause_after_large_writes_folds_them_by_size() {
        let name = format!("{}-pause-by-size", IndexedDbFactory::new().run);
        let db = Database::open(
            IndexedDbStorage::open(&name).await.unwrap(),
            OpenOptions::default(),
        )
        .await
        .unwrap();
        let text = |i: usize| format!("{i}").repeat(900_000);
        for i in 0..12 {
            db.put(&format!("r{i:02}"), json!(text(i % 10)))
                .await
                .unwrap();
        }
        db.close().await.unwrap();
        let chunks = stored_chunks(&format!("pluresdb/{name}")).await;
        assert!(chunks < 8, "twelve commits folded: {chunks} chunks stored");
        let db = Database::open(
            IndexedDbStorage::open(&name).await.unwrap(),
            OpenOptions::default(),
        )
        .await
        .unwrap();
        for i in 0..12 {
            assert_eq!(
                db.get(&format!("r{i:02}")).await.unwrap(),
                Some(json!(text(i % 10))),
                "r{i:02}"
            );
        }
        db.close().await.unwrap();
    }

    /// Whether the meta store of IndexedDB database `database` has a row
    /// `key`.
    async fn meta_row_exists(database: &str, key: &str) -> bool {
        !read_store(database, "meta", &format!("store.get({key:?})"))
            .await
            .is_undefined()
    }

    /// One dot claimed with two documents, in two rows of one record (a
    /// peer equivocated, and the settled row was appended while the first
    /// was still there): a database that leaves the documents in storage
    /// as it opens reads the record as one that keeps them in memory does,
    /// whichever claim came first and whatever their lengths.
    #[wasm_bindgen_test]
    async fn a_dot_claimed_twice_reads_the_same_from_storage_as_from_memory() {
        let factory = IndexedDbFactory::new();
        for (case, (first, second)) in [("a", "b"), ("b", "a"), ("a", "bbbb"), ("bbbb", "a")]
            .into_iter()
            .enumerate()
        {
            let name = format!("{}-equivocation-{case}", factory.run);
            let storage = IndexedDbStorage::open(&name).await.unwrap();
            storage.list_ids_from_bytes(0);
            let mut generation = storage.load().await.unwrap().generation;
            for text in [first, second] {
                // The same actor and time: the same dot, another document.
                let mut claim =
                    pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([5; 16]));
                let document = pluresdb::crdt::Document::from_value(&json!(text)).unwrap();
                claim.put("x", document, 1_000);
                let batch = pluresdb::storage::CommitBatch {
                    expected_generation: generation,
                    records: vec![("x".into(), claim.record("x").unwrap().to_bytes())],
                    ..Default::default()
                };
                generation = storage.commit(batch).await.unwrap().generation;
            }
            drop(storage);
            let open = |cache_bytes: usize| {
                let name = name.clone();
                async move {
                    let storage = IndexedDbStorage::open(&name).await.unwrap();
                    storage.list_ids_from_bytes(0);
                    Database::open(
                        storage,
                        OpenOptions {
                            cache_bytes,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap()
                }
            };
            let in_memory = open(usize::MAX).await;
            let expected = in_memory.get("x").await.unwrap();
            in_memory.close().await.unwrap();
            let bounded = open(0).await;
            assert!(bounded.storage().reads_records(), "case {case}");
            assert_eq!(
                bounded.stats().unwrap().records_in_storage_only,
                1,
                "case {case}: the document was left in storage"
            );
            assert_eq!(bounded.get("x").await.unwrap(), expected, "case {case}");
            bounded.close().await.unwrap();
        }
    }

    /// Lists start once the database holds enough, counting what every
    /// instance wrote: each instance counts the rows of others it reads
    /// before committing, not only its own. And an instance that found
    /// another's parts without lists reads records back only after its
    /// list pass.
    #[wasm_bindgen_test]
    async fn lists_start_once_instances_together_wrote_enough() {
        let factory = IndexedDbFactory::new();
        let database = format!("pluresdb/{}-together", factory.run);
        let open = || {
            let name = format!("{}-together", factory.run);
            async move {
                let storage = IndexedDbStorage::open(&name).await.unwrap();
                storage.list_ids_from_bytes(50_000);
                storage
            }
        };
        let lists = || {
            let database = database.clone();
            async move {
                read_store(&database, "ids", "store.count()")
                    .await
                    .as_f64()
                    .unwrap() as u32
            }
        };
        // Twenty records of about 1.1 KB each, as one commit.
        fn batch(
            tab: &mut pluresdb::crdt::CrdtStore,
            from: usize,
            generation: u64,
        ) -> pluresdb::storage::CommitBatch {
            let records = (from..from + 20)
                .map(|i| {
                    let id = format!("k{i:03}");
                    let text = format!("{i:05}").repeat(200);
                    let document = pluresdb::crdt::Document::from_value(&json!(text)).unwrap();
                    tab.put(&id, document, 1_000 + i as u64);
                    (id.clone(), tab.record(&id).unwrap().to_bytes())
                })
                .collect();
            pluresdb::storage::CommitBatch {
                expected_generation: generation,
                records,
                ..Default::default()
            }
        }
        let (first, second, third) = (open().await, open().await, open().await);
        for storage in [&first, &second, &third] {
            storage.load().await.unwrap();
        }
        let mut tab_a =
            pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([6; 16]));
        let mut tab_b =
            pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([7; 16]));
        let mut generation = first
            .commit(batch(&mut tab_a, 0, 0))
            .await
            .unwrap()
            .generation;
        second.commit(batch(&mut tab_b, 20, 0)).await.unwrap();
        // The first instance has now seen about 66 KB, though it wrote 44.
        generation = first
            .commit(batch(&mut tab_a, 40, generation))
            .await
            .unwrap()
            .generation;
        assert_eq!(lists().await, 0, "nothing listed yet");
        first
            .commit(batch(&mut tab_a, 60, generation))
            .await
            .unwrap();
        assert_eq!(lists().await, 1, "lists start from what both wrote");
        assert!(!first.reads_records(), "earlier parts are not listed yet");
        // A third instance, which wrote nothing yet, finds the lists and
        // the parts without them: its commit is listed, and its upkeep
        // has parts to list.
        let mut tab_c =
            pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([8; 16]));
        third.commit(batch(&mut tab_c, 80, 0)).await.unwrap();
        assert_eq!(lists().await, 2, "the third instance listed its commit");
        assert!(
            third.housekeeping_due(),
            "the third instance knows not every part is listed"
        );
        assert!(first.housekeeping_due());
        while first.housekeeping_due() {
            first.housekeeping().await.unwrap();
        }
        assert!(first.reads_records(), "every part listed by its upkeep");
        let ids: Vec<String> = ["k005", "k025", "k045", "k065", "k085"]
            .map(String::from)
            .to_vec();
        let read = first.read_records(ids).await.unwrap();
        assert_eq!(read.len(), 5, "every instance's records read back");
        assert!(!second.reads_records(), "the other never listed");
    }

    /// A database opened while small keeps every document in memory; once
    /// it grows past the size at which id lists are kept and its upkeep has
    /// listed every part, it leaves documents beyond its cache in storage
    /// without being opened again, and reads them back as written.
    #[wasm_bindgen_test]
    async fn a_database_that_grows_large_bounds_its_documents_without_reopening() {
        let factory = IndexedDbFactory::new();
        let storage = IndexedDbStorage::open(&format!("{}-grows", factory.run))
            .await
            .unwrap();
        storage.list_ids_from_bytes(50_000);
        let cache_bytes = 4_000;
        let db = Database::open(
            storage,
            OpenOptions {
                cache_bytes,
                indexes: vec!["group".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(!db.storage().reads_records(), "small when opened");
        let mut expected = std::collections::BTreeMap::new();
        for round in 0..2 {
            write_documents_of_a_kilobyte(&db, round, &mut expected).await;
        }
        // Upkeep runs once writes pause.
        let mut stats = db.stats().unwrap();
        for _ in 0..200 {
            if stats.records_in_storage_only > 0 {
                break;
            }
            pluresdb::platform::sleep(std::time::Duration::from_millis(25)).await;
            stats = db.stats().unwrap();
        }
        assert!(db.storage().reads_records(), "reads back once listed");
        assert!(
            stats.records_in_storage_only >= 110 && stats.cached_bytes <= cache_bytes,
            "documents beyond the cache left memory: {stats:?}"
        );
        for (id, value) in &expected {
            assert_eq!(db.get(id).await.unwrap().as_ref(), Some(value), "{id}");
        }
        let query = pluresdb::Query::from_json(&json!({ "where": { "group": "g1" } })).unwrap();
        assert_eq!(db.query(&query).await.unwrap().len(), 40);
        // Writes over documents in storage, and the cache bound after them.
        db.put("d007", json!({ "round": 2 })).await.unwrap();
        assert_eq!(db.get("d007").await.unwrap(), Some(json!({ "round": 2 })));
        let stats = db.stats().unwrap();
        assert!(stats.cached_bytes <= cache_bytes + 1_100, "{stats:?}");
        db.close().await.unwrap();
    }

    /// Writes `d000` to `d119` (about 1 KB each, in three groups) in six
    /// batches, noting what each holds in `expected`.
    async fn write_documents_of_a_kilobyte(
        db: &Database<IndexedDbStorage>,
        round: usize,
        expected: &mut std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        let document = |i: usize| json!({ "i": i, "round": round, "group": format!("g{}", i % 3), "pad": format!("{i:04}").repeat(250) });
        for start in (0..120).step_by(20) {
            let batch: Vec<(String, pluresdb::crdt::Document)> = (start..start + 20)
                .map(|i| {
                    let id = format!("d{i:03}");
                    expected.insert(id.clone(), document(i));
                    let value = pluresdb::crdt::Document::from_value(&document(i));
                    (id, value.unwrap())
                })
                .collect();
            db.put_many(batch).await.unwrap();
        }
    }

    /// A tab that only merges what another tab writes runs no upkeep of its
    /// own: it asks storage as announcements come in, and bounds its
    /// documents once the other tab has listed every part.
    #[wasm_bindgen_test]
    async fn a_tab_that_only_reads_bounds_its_documents_once_another_listed_every_part() {
        let factory = IndexedDbFactory::new();
        let name = format!("{}-reader", factory.run);
        let open = |cache_bytes: usize| {
            let name = name.clone();
            async move {
                let storage = IndexedDbStorage::open(&name).await.unwrap();
                storage.list_ids_from_bytes(50_000);
                let options = OpenOptions {
                    cache_bytes,
                    indexes: vec!["group".into()],
                    ..Default::default()
                };
                Database::open(storage, options).await.unwrap()
            }
        };
        let cache_bytes = 4_000;
        let reader = open(cache_bytes).await;
        let writer = open(usize::MAX).await;
        assert!(!reader.storage().reads_records(), "small when opened");
        let mut expected = std::collections::BTreeMap::new();
        for round in 0..2 {
            write_documents_of_a_kilobyte(&writer, round, &mut expected).await;
            // The writer's upkeep lists every part once its writes pause.
            for _ in 0..200 {
                if writer.storage().reads_records() {
                    break;
                }
                pluresdb::platform::sleep(std::time::Duration::from_millis(25)).await;
            }
            assert!(
                writer.storage().reads_records(),
                "round {round}: the writer listed its parts"
            );
        }
        let mut stats = reader.stats().unwrap();
        for _ in 0..200 {
            if stats.records_in_storage_only > 0 {
                break;
            }
            pluresdb::platform::sleep(std::time::Duration::from_millis(25)).await;
            stats = reader.stats().unwrap();
        }
        assert!(
            reader.storage().reads_records(),
            "the reader learned that storage reads back"
        );
        assert!(
            stats.records_in_storage_only >= 110 && stats.cached_bytes <= cache_bytes,
            "the reader's documents beyond its cache left memory: {stats:?}"
        );
        for (id, value) in &expected {
            assert_eq!(reader.get(id).await.unwrap().as_ref(), Some(value), "{id}");
        }
        let query = pluresdb::Query::from_json(&json!({ "where": { "group": "g1" } })).unwrap();
        assert_eq!(reader.query(&query).await.unwrap().len(), 40);
        writer.close().await.unwrap();
        reader.close().await.unwrap();
    }

    /// A database keeps no id lists while small; once it holds enough, its
    /// commits write them, its next upkeep lists what came before, and from
    /// its next open it reads records back. Another instance that had not
    /// seen it grow learns it from the first commit it finds.
    #[wasm_bindgen_test]
    async fn id_lists_start_once_the_database_is_large() {
        let factory = IndexedDbFactory::new();
        let database = format!("pluresdb/{}-growing", factory.run);
        let open = |bytes: usize| {
            let name = format!("{}-growing", factory.run);
            async move {
                let storage = IndexedDbStorage::open(&name).await.unwrap();
                storage.list_ids_from_bytes(bytes);
                storage
            }
        };
        let count = |store: &'static str| {
            let database = database.clone();
            async move {
                read_store(&database, store, "store.count()")
                    .await
                    .as_f64()
                    .unwrap() as u32
            }
        };
        let options = || OpenOptions {
            cache_bytes: 1_000,
            ..Default::default()
        };
        fn text(i: usize) -> String {
            format!("{i:05}").repeat(200)
        }
        // Twenty records of 1 KB written by `tab`, as one commit.
        fn batch(
            tab: &mut pluresdb::crdt::CrdtStore,
            from: usize,
            generation: u64,
        ) -> pluresdb::storage::CommitBatch {
            let mut records = Vec::new();
            for i in from..from + 20 {
                let id = format!("k{i:03}");
                let document = pluresdb::crdt::Document::from_value(&json!(text(i))).unwrap();
                tab.put(&id, document, 1_000 + i as u64);
                records.push((id.clone(), tab.record(&id).unwrap().to_bytes()));
            }
            pluresdb::storage::CommitBatch {
                expected_generation: generation,
                records,
                meta: vec![(
                    meta_keys::VERSION_VECTOR.into(),
                    tab.version_vector().to_bytes(),
                )],
                ..Default::default()
            }
        }
        // A storage of its own (a database would run upkeep on its own
        // schedule) keeps no lists below 50 KB.
        let writer = open(50_000).await;
        let mut tab = pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([6; 16]));
        let mut generation = writer.load().await.unwrap().generation;
        for from in [0, 20] {
            let written = writer.commit(batch(&mut tab, from, generation)).await;
            generation = written.unwrap().generation;
        }
        assert_eq!(count("ids").await, 0, "a small database keeps no id lists");
        let keys = || {
            let database = database.clone();
            async move {
                let keys = read_store(
                    &database,
                    "records",
                    "store.getAllKeys()).then((keys) => keys.map((key) => key.join('/')).join(' ')",
                )
                .await
                .as_string()
                .unwrap();
                keys.split(' ').map(String::from).collect::<Vec<_>>()
            }
        };
        // This commit takes it past 50 KB: lists are kept from the next on.
        generation = writer
            .commit(batch(&mut tab, 40, generation))
            .await
            .unwrap()
            .generation;
        let unlisted = keys().await;
        assert_eq!(count("ids").await, 0);
        // Another instance, which would never list by itself, opens while
        // no list exists.
        let other = open(usize::MAX).await;
        let other_generation = other.load().await.unwrap().generation;
        assert_eq!(other_generation, generation);
        // Upkeep lists the parts written before, in place.
        assert!(writer.housekeeping_due());
        writer.housekeeping().await.unwrap();
        assert_eq!(
            count("ids").await,
            count("records").await,
            "every part listed"
        );
        let after = keys().await;
        assert!(
            unlisted.iter().all(|key| after.contains(key)),
            "the parts were listed where they lie: {unlisted:?} in {after:?}"
        );
        // The other instance's next commit (it saw no list, and nothing it
        // wrote was superseded) finds them, and lists its own.
        let mut other_tab =
            pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([7; 16]));
        other_tab.put(
            "other",
            pluresdb::crdt::Document::from_value(&json!(1)).unwrap(),
            1,
        );
        other
            .commit(pluresdb::storage::CommitBatch {
                expected_generation: other_generation,
                records: vec![(
                    "other".into(),
                    other_tab.record("other").unwrap().to_bytes(),
                )],
                ..Default::default()
            })
            .await
            .unwrap();
        let listed = read_store(
            &database,
            "ids",
            "store.getAll()).then((lists) => lists.some((list) => list.ids.includes('other'))",
        )
        .await;
        assert_eq!(
            listed.as_bool(),
            Some(true),
            "the other instance listed its commit"
        );
        assert_eq!(count("ids").await, count("records").await);
        drop(other);
        drop(writer);
        let db = Database::open(open(50_000).await, options()).await.unwrap();
        assert!(db.storage().reads_records());
        assert!(db.stats().unwrap().records_in_storage_only > 50);
        for i in 0..60 {
            assert_eq!(
                db.get(&format!("k{i:03}")).await.unwrap(),
                Some(json!(text(i)))
            );
        }
        assert_eq!(db.get("other").await.unwrap(), Some(json!(1)));
        db.close().await.unwrap();
    }

    /// About a kilobyte of text for record `i` of [`kilobyte_rows`].
    fn kilobyte_text(i: usize) -> String {
        format!("{i:04}").repeat(250)
    }

    /// `(key, bytes)` rows: record rows by id, or metadata rows by key.
    type Rows = Vec<(String, Vec<u8>)>;

    /// Rows of `count` records `v000`, `v001`, … (`kilobyte_text(i)` each)
    /// written by `actor`, and that writer's version vector as a chunk's
    /// metadata entry.
    fn kilobyte_rows(actor: u8, count: usize) -> (Rows, Rows) {
        let mut tab =
            pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::from_bytes([actor; 16]));
        let mut rows = Vec::new();
        for i in 0..count {
            let id = format!("v{i:03}");
            let document = pluresdb::crdt::Document::from_value(&json!(kilobyte_text(i))).unwrap();
            tab.put(&id, document, 1_000 + i as u64);
            rows.push((id.clone(), tab.record(&id).unwrap().to_bytes()));
        }
        let meta = vec![(
            meta_keys::VERSION_VECTOR.to_owned(),
            tab.version_vector().to_bytes(),
        )];
        (rows, meta)
    }

    /// Stores each chunk under its key (a JavaScript array literal)
    /// straight in IndexedDB, as an older build would have.
    async fn store_chunks(database: &str, chunks: &[(&str, &[u8])]) {
        let global = js_sys::global();
        let mut statements = Vec::new();
        for (at, (key, chunk)) in chunks.iter().enumerate() {
            js_sys::Reflect::set(
                &global,
                &format!("storedChunk{at}").into(),
                &js_sys::Uint8Array::from(*chunk),
            )
            .unwrap();
            statements.push(format!("store.put(globalThis.storedChunk{at}, {key})"));
        }
        write_store(database, "records", &statements.join("; ")).await;
    }

    /// A value of many rows far larger than a part (schema 4 stored each
    /// commit as one value) is not listed in place, where every record
    /// read back from it would read it whole: upkeep rewrites the database
    /// in parts, listed, and it reads back from its next open.
    #[wasm_bindgen_test]
    async fn a_large_value_from_schema_4_is_split_by_upkeep() {
        let factory = IndexedDbFactory::new();
        let name = "large-value";
        let database = format!("pluresdb/{}-{name}", factory.run);
        let text = kilobyte_text;
        let (rows, meta) = kilobyte_rows(5, 400);
        let chunk = pluresdb::storage::chunk::encode_chunk(&rows, &[], &meta);
        assert!(chunk.len() > 400_000);
        // Created by this build, then the one value written as schema 4
        // wrote a commit: whole, without an id list.
        factory.open(name).await.load().await.unwrap();
        store_chunks(&database, &[("[1, 0]", &chunk)]).await;

        let storage = factory.open(name).await;
        storage.load().await.unwrap();
        assert!(!storage.reads_records(), "a value without its list");
        assert!(storage.housekeeping_due());
        storage.housekeeping().await.unwrap();
        assert!(!storage.housekeeping_due(), "one upkeep rewrote it");
        let largest = read_store(
            &database,
            "records",
            "store.getAll()).then((values) => Math.max(...values.map((v) => v.byteLength))",
        )
        .await
        .as_f64()
        .unwrap();
        assert!(
            largest < 100_000.0,
            "rewritten in parts: the largest is {largest} bytes"
        );
        drop(storage);
        let db = Database::open(
            factory.open(name).await,
            OpenOptions {
                cache_bytes: 10_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(db.storage().reads_records());
        assert!(db.stats().unwrap().records_in_storage_only > 350);
        for i in (0..400).step_by(7) {
            assert_eq!(
                db.get(&format!("v{i:03}")).await.unwrap(),
                Some(json!(text(i))),
                "v{i:03}"
            );
        }
        db.close().await.unwrap();
    }

    /// A list pass that meets a value only a full compaction can list
    /// writes no list at all: had it kept the lists of the values before
    /// it, the oldest part would have a list while a later one has none,
    /// and the reads of a background load, which take the oldest part's
    /// list for every part's, would miss that value's rows until a full
    /// compaction succeeded.
    #[wasm_bindgen_test]
    async fn a_list_pass_that_stops_at_a_large_value_lists_nothing() {
        let factory = IndexedDbFactory::new();
        let name = "partial-list-pass";
        let database = format!("pluresdb/{}-{name}", factory.run);
        let (rows, meta) = kilobyte_rows(6, 401);
        // The oldest value is a small part; the next is one schema 4 wrote
        // whole.
        let small = pluresdb::storage::chunk::encode_chunk(&rows[..1], &[], &meta);
        let large = pluresdb::storage::chunk::encode_chunk(&rows[1..], &[], &meta);
        assert!(large.len() > 400_000);
        factory.open(name).await.load().await.unwrap();
        store_chunks(&database, &[("[1, 0]", &small), ("[2, 0]", &large)]).await;

        let storage = factory.open(name).await;
        storage.load().await.unwrap();
        assert!(!storage.list_unlisted_parts_alone().await.unwrap());
        let lists = read_store(&database, "ids", "store.count()")
            .await
            .as_f64()
            .unwrap();
        assert_eq!(lists, 0.0, "the pass wrote lists of some parts");
        // Upkeep then rewrites everything, listed.
        storage.housekeeping().await.unwrap();
        assert!(storage.reads_records());
    }

    /// A database written before the id lists (schema 4) cannot read a
    /// record back by id: it opens with every document in memory whatever
    /// its cache, its first upkeep (at the latest when it closes) rewrites
    /// it with id lists, and opened again it leaves documents in storage.
    #[wasm_bindgen_test]
    async fn a_database_without_id_lists_is_rewritten_with_them() {
        let factory = IndexedDbFactory::new();
        let name = "no-id-lists";
        let database = format!("pluresdb/{}-{name}", factory.run);
        let options = || OpenOptions {
            cache_bytes: 2_000,
            ..Default::default()
        };
        let text = |i: usize| format!("{i:04}").repeat(100);
        let db = Database::open(factory.open(name).await, options())
            .await
            .unwrap();
        db.put_many((0..50).map(|i| {
            let document = pluresdb::crdt::Document::from_value(&json!(text(i))).unwrap();
            (format!("k{i:02}"), document)
        }))
        .await
        .unwrap();
        db.close().await.unwrap();
        // What schema 4 left: chunks, no id lists.
        write_store(&database, "ids", "store.clear()").await;

        let storage = factory.open(name).await;
        storage.load().await.unwrap();
        assert!(
            !storage.reads_records(),
            "no id lists: nothing is read back by id"
        );
        drop(storage);
        let db = Database::open(factory.open(name).await, options())
            .await
            .unwrap();
        assert_eq!(db.stats().unwrap().records_in_storage_only, 0);
        assert_eq!(db.get("k07").await.unwrap(), Some(json!(text(7))));
        db.close().await.unwrap();

        let storage = factory.open(name).await;
        storage.load().await.unwrap();
        assert!(
            storage.reads_records(),
            "upkeep at close wrote the id lists"
        );
        let db = Database::open(storage, options()).await.unwrap();
        assert!(db.stats().unwrap().records_in_storage_only > 40);
        for i in 0..50 {
            assert_eq!(
                db.get(&format!("k{i:02}")).await.unwrap(),
                Some(json!(text(i))),
                "k{i:02}"
            );
        }
        db.close().await.unwrap();
    }

    /// Schema 4 keeps the version vector and HLC in the chunks; a database
    /// laid out as schema 3 (a head row carrying them) or schema 2 (rows of
    /// their own) opens with its vector and clock, new writes never reuse a
    /// dot, and a full compaction folds the old head in.
    #[wasm_bindgen_test]
    async fn older_head_rows_keep_their_version_vector_and_clock() {
        for schema in [2, 3] {
            older_head_rows_for(schema).await;
        }
    }

    async fn older_head_rows_for(schema: u32) {
        let name = format!("legacy-head-{schema}");
        let factory = IndexedDbFactory::new();
        let db = Database::open(factory.open(&name).await, OpenOptions::default())
            .await
            .unwrap();
        for i in 0..5 {
            db.put(&format!("k{i}"), json!(i)).await.unwrap();
        }
        let vector = db.version_vector();
        db.close().await.unwrap();
        let stored = |loaded: &mut pluresdb::storage::LoadedState| {
            loaded.read_all_rows().unwrap();
            (
                loaded.meta.get(meta_keys::VERSION_VECTOR).cloned(),
                loaded.meta.contains_key(meta_keys::HLC),
            )
        };
        let mut before = factory.open(&name).await.load().await.unwrap();
        assert_eq!(stored(&mut before), (Some(vector.to_bytes()), true));
        as_older_schema(&format!("pluresdb/{}-{name}", factory.run), schema).await;
        let mut legacy = factory.open(&name).await.load().await.unwrap();
        assert_eq!(
            stored(&mut legacy),
            (Some(vector.to_bytes()), true),
            "schema {schema}: the old head is read"
        );
        assert_eq!(legacy.generation, before.generation);

        let db = Database::open(factory.open(&name).await, OpenOptions::default())
            .await
            .unwrap();
        assert_eq!(
            db.version_vector(),
            vector,
            "schema {schema}: the vector came from the old head"
        );
        db.put("k5", json!(5)).await.unwrap();
        let after = db.version_vector();
        assert_ne!(after, vector, "a new write advanced the vector");
        db.close().await.unwrap();
        // Closing ran the upkeep that waited: a full compaction folded the
        // old head into its output and removed it.
        let database = format!("pluresdb/{}-{name}", factory.run);
        for key in ["generation", meta_keys::VERSION_VECTOR, meta_keys::HLC] {
            assert!(
                !meta_row_exists(&database, key).await,
                "schema {schema}: the old row {key} was folded in and removed"
            );
        }
        let mut reloaded = factory.open(&name).await.load().await.unwrap();
        assert_eq!(stored(&mut reloaded), (Some(after.to_bytes()), true));
        assert!(reloaded.generation > legacy.generation + 1);
        let db = Database::open(factory.open(&name).await, OpenOptions::default())
            .await
            .unwrap();
        assert_eq!(db.version_vector(), after);
        assert_eq!(db.len(), 6);
        for i in 0..6 {
            assert_eq!(db.get(&format!("k{i}")).await.unwrap(), Some(json!(i)));
        }
        db.close().await.unwrap();
    }

    /// Hides `navigator.locks` (as in a page outside a secure context) until
    /// dropped.
    struct NoWebLocks;

    impl NoWebLocks {
        fn hide() -> Self {
            js_sys::eval(
                "Object.defineProperty(globalThis.navigator, 'locks', \
                 { get: () => undefined, configurable: true })",
            )
            .expect("navigator.locks can be shadowed");
            NoWebLocks
        }
    }

    impl Drop for NoWebLocks {
        fn drop(&mut self) {
            let _ = js_sys::eval("delete globalThis.navigator.locks");
        }
    }

    /// Issue #20, bug 6: without Web Locks every tab took actor slot 0, so
    /// two tabs issued the same dots for different writes and one write
    /// vanished.
    #[wasm_bindgen_test]
    async fn tabs_without_web_locks_write_under_actors_of_their_own() {
        let factory = IndexedDbFactory::new();
        let hidden = NoWebLocks::hide();
        let first = Database::open(factory.open("no-locks").await, OpenOptions::default())
            .await
            .unwrap();
        let second = Database::open(factory.open("no-locks").await, OpenOptions::default())
            .await
            .unwrap();
        assert_ne!(first.actor(), second.actor(), "two tabs, two actors");
        first.put("first", json!(1)).await.unwrap();
        second.put("second", json!(2)).await.unwrap();
        first.close().await.unwrap();
        second.close().await.unwrap();
        let third = Database::open(factory.open("no-locks").await, OpenOptions::default())
            .await
            .unwrap();
        assert_ne!(
            third.actor(),
            first.actor(),
            "a stored actor is never reused"
        );
        assert_eq!(third.get("first").await.unwrap(), Some(json!(1)));
        assert_eq!(third.get("second").await.unwrap(), Some(json!(2)));
        third.close().await.unwrap();
        drop(hidden);
    }

    #[wasm_bindgen_test]
    async fn many_small_commits_are_compacted_without_losing_anything() {
        let factory = IndexedDbFactory::new();
        let db = Database::open(factory.open("compact").await, OpenOptions::default())
            .await
            .unwrap();
        // 120 commits: 40 ids, each written three times, so compaction runs
        // several times and has superseded rows to drop.
        for round in 0..3 {
            for i in 0..40 {
                db.put(&format!("k{i:02}"), json!({ "round": round, "i": i }))
                    .await
                    .unwrap();
            }
        }
        assert!(db.delete("k07").await.unwrap());
        db.close().await.unwrap();

        let storage = factory.open("compact").await;
        let mut loaded = pluresdb::storage::Storage::load(&storage).await.unwrap();
        let rows = loaded.read_all_rows().unwrap().len();
        assert!(
            rows < 121,
            "compaction folded rows: {rows} rows for 121 writes"
        );
        let db = Database::open(storage, OpenOptions::default())
            .await
            .unwrap();
        for i in 0..40 {
            let expected = (i != 7).then(|| json!({ "round": 2, "i": i }));
            assert_eq!(
                db.get(&format!("k{i:02}")).await.unwrap(),
                expected,
                "k{i:02}"
            );
        }
        db.close().await.unwrap();
    }
}
