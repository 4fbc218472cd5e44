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

    async fn open(&self, name: &str) -> IndexedDbStorage {
        IndexedDbStorage::open(&format!("{}-{name}", self.run))
            .await
            .expect("IndexedDB opens")
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
        assert_eq!(db.get("before").unwrap(), Some(json!(1)));
        assert_eq!(db.get("after").unwrap(), Some(json!(2)));
        db.close().await.unwrap();
    }

    /// Rewrites a database's head row the way schema 2 kept it: the
    /// generation alone (8 bytes), the version vector and HLC as rows of
    /// their own.
    async fn as_schema_2(database: &str) {
        let script = format!(
            r#"(async () => {{
                const request = (r) => new Promise((ok, fail) => {{ r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }});
                const db = await request(indexedDB.open({database:?}));
                const tx = db.transaction('meta', 'readwrite');
                const meta = tx.objectStore('meta');
                const head = new Uint8Array(await request(meta.get('generation')));
                const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
                let at = 8;
                while (at < head.length) {{
                    const keyLength = view.getUint16(at, true); at += 2;
                    const key = new TextDecoder().decode(head.subarray(at, at + keyLength)); at += keyLength;
                    const valueLength = view.getUint32(at, true); at += 4;
                    meta.put(head.slice(at, at + valueLength), key); at += valueLength;
                }}
                if (at !== head.length || head.length <= 8) throw new Error('unexpected head row');
                meta.put(head.slice(0, 8), 'generation');
                await new Promise((ok) => {{ tx.oncomplete = ok; }});
                db.close();
            }})()"#
        );
        let promise: js_sys::Promise = js_sys::eval(&script).unwrap().into();
        wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .expect("the head row was rewritten");
    }

    /// Schema 3 keeps the version vector and HLC in the head row; a
    /// database whose rows are laid out as schema 2 kept them opens with
    /// its vector and clock, and new writes never reuse a dot.
    #[wasm_bindgen_test]
    async fn a_schema_2_head_keeps_its_version_vector_and_clock() {
        let factory = IndexedDbFactory::new();
        let db = Database::open(factory.open("legacy-head").await, OpenOptions::default())
            .await
            .unwrap();
        for i in 0..5 {
            db.put(&format!("k{i}"), json!(i)).await.unwrap();
        }
        let vector = db.version_vector();
        db.close().await.unwrap();
        let stored = |loaded: &pluresdb::storage::LoadedState| {
            (
                loaded.meta.get(meta_keys::VERSION_VECTOR).cloned(),
                loaded.meta.contains_key(meta_keys::HLC),
            )
        };
        let before = factory.open("legacy-head").await.load().await.unwrap();
        assert_eq!(stored(&before), (Some(vector.to_bytes()), true));
        as_schema_2(&format!("pluresdb/{}-legacy-head", factory.run)).await;
        let legacy = factory.open("legacy-head").await.load().await.unwrap();
        assert_eq!(
            stored(&legacy),
            (Some(vector.to_bytes()), true),
            "the rows schema 2 kept on their own are read"
        );
        assert_eq!(legacy.generation, before.generation);

        let db = Database::open(factory.open("legacy-head").await, OpenOptions::default())
            .await
            .unwrap();
        assert_eq!(
            db.version_vector(),
            vector,
            "the vector came from the schema-2 rows"
        );
        db.put("k5", json!(5)).await.unwrap();
        let after = db.version_vector();
        assert_ne!(after, vector, "a new write advanced the vector");
        db.close().await.unwrap();
        let db = Database::open(factory.open("legacy-head").await, OpenOptions::default())
            .await
            .unwrap();
        assert_eq!(db.version_vector(), after);
        let reloaded = factory.open("legacy-head").await.load().await.unwrap();
        assert_eq!(stored(&reloaded), (Some(after.to_bytes()), true));
        assert_eq!(db.len(), 6);
        for i in 0..6 {
            assert_eq!(db.get(&format!("k{i}")).unwrap(), Some(json!(i)));
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
        assert_eq!(third.get("first").unwrap(), Some(json!(1)));
        assert_eq!(third.get("second").unwrap(), Some(json!(2)));
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
        let loaded = pluresdb::storage::Storage::load(&storage).await.unwrap();
        assert!(
            loaded.records.len() < 121,
            "compaction folded rows: {} rows for 121 writes",
            loaded.records.len()
        );
        let db = Database::open(storage, OpenOptions::default())
            .await
            .unwrap();
        for i in 0..40 {
            let expected = (i != 7).then(|| json!({ "round": 2, "i": i }));
            assert_eq!(db.get(&format!("k{i:02}")).unwrap(), expected, "k{i:02}");
        }
        db.close().await.unwrap();
    }
}
