//! The storage conformance suite on the in-memory backend.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::sync::Mutex;

use pluresdb::error::StorageError;
use pluresdb::storage::conformance::{FailSwitch, StorageFactory};
use pluresdb::storage::MemoryStorage;

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
