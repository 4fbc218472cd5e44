//! The storage conformance suite on the in-memory backend.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::sync::Mutex;

use pluresdb::storage::conformance::StorageFactory;
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
}

pluresdb::storage_conformance_tests!(tokio::test, MemoryFactory::default());
