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
