//! In-memory storage: nothing survives the process, everything else behaves
//! like a durable backend (atomic commits, generations, read-merge, slots).
//! Clones share the same data, like two connections to one database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{
    merge_meta_rows, merge_record_rows, CommitBatch, CommitReceipt, LoadedRecords, LoadedState,
    SlotLease, Storage, MERGEABLE_META,
};
use crate::error::StorageError;

#[derive(Debug, Default)]
struct MemoryData {
    generation: u64,
    /// id -> (the generation that wrote the row, the row).
    records: BTreeMap<String, (u64, Vec<u8>)>,
    meta: BTreeMap<String, Vec<u8>>,
    segments: BTreeMap<String, Vec<u8>>,
    held_slots: BTreeSet<u32>,
    /// When set, commits fail with this error (for failure-path tests).
    fail_commits_with: Option<StorageError>,
    /// A volatile store keeps no record rows or index segments.
    volatile: bool,
}

/// Storage in process memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    data: Arc<Mutex<MemoryData>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store for one database that nothing ever reopens (the
    /// browser's `storage: 'memory'`): commits keep generations and
    /// metadata but not record rows or index segments, which the database
    /// already holds in memory, so nothing is held twice. Loading it again
    /// once written is an error, never an empty database.
    pub fn volatile() -> Self {
        let storage = Self::default();
        storage.data().volatile = true;
        storage
    }

    fn data(&self) -> std::sync::MutexGuard<'_, MemoryData> {
        // A panic while holding this lock leaves plain maps behind, which are
        // still consistent, so a poisoned lock is safe to reuse.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later commit fail with `error` (or succeed again with
    /// `None`): lets tests exercise quota and I/O failures.
    pub fn fail_commits_with(&self, error: Option<StorageError>) {
        self.data().fail_commits_with = error;
    }

    /// The stored bytes of one record row.
    pub fn raw_record(&self, id: &str) -> Option<Vec<u8>> {
        self.data().records.get(id).map(|(_, row)| row.clone())
    }

    /// Overwrites one record row with raw bytes (for corruption tests).
    pub fn put_raw_record(&self, id: &str, bytes: Vec<u8>) {
        let mut data = self.data();
        data.generation += 1;
        let generation = data.generation;
        data.records.insert(id.to_owned(), (generation, bytes));
    }

    /// Overwrites one metadata row with raw bytes (for format tests).
    pub fn put_raw_meta(&self, key: &str, bytes: Vec<u8>) {
        let mut data = self.data();
        data.meta.insert(key.to_owned(), bytes);
        data.generation += 1;
    }
}

struct SlotGuard {
    storage: MemoryStorage,
    slot: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.storage.data().held_slots.remove(&self.slot);
    }
}

impl Storage for MemoryStorage {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn acquire_slot(&self) -> Result<SlotLease, StorageError> {
        let slot = {
            let mut data = self.data();
            let slot = (0..).find(|n| !data.held_slots.contains(n)).unwrap_or(0);
            data.held_slots.insert(slot);
            slot
        };
        let guard = SlotGuard {
            storage: self.clone(),
            slot,
        };
        Ok(SlotLease::new(slot, Box::new(guard)))
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        let data = self.data();
        if data.volatile && data.generation > 0 {
            return Err(StorageError::Backend(
                "a volatile memory store keeps no records to reopen".into(),
            ));
        }
        Ok(LoadedState {
            generation: data.generation,
            records: LoadedRecords::from_rows(
                data.records
                    .iter()
                    .map(|(k, (_, v))| (k.clone(), v.clone()))
                    .collect(),
            ),
            meta: data.meta.clone(),
            segments: data
                .segments
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn reads_records(&self) -> bool {
        !self.data().volatile
    }

    async fn read_records(&self, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let data = self.data();
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                let row = data.records.get(&id)?.1.clone();
                Some((id, row))
            })
            .collect())
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitReceipt, StorageError> {
        let mut data = self.data();
        if let Some(error) = &data.fail_commits_with {
            return Err(error.clone());
        }
        let stale = data.generation != batch.expected_generation;
        // Rows other writers stored since this one's generation (all rows if
        // the stored generation went back: a restored copy).
        let since = if data.generation < batch.expected_generation {
            0
        } else {
            batch.expected_generation
        };
        let foreign_records: Vec<(String, Vec<u8>)> = if stale {
            data.records
                .iter()
                .filter(|(_, (generation, _))| *generation > since)
                .map(|(id, (_, row))| (id.clone(), row.clone()))
                .collect()
        } else {
            Vec::new()
        };
        // Compute everything first so a corrupt stored row fails the whole
        // commit before anything is written.
        let mut merged_records = Vec::new();
        let mut record_rows = Vec::with_capacity(batch.records.len());
        for (id, bytes) in batch.records {
            let row = match (stale, data.records.get(&id).map(|(_, row)| row)) {
                (true, Some(stored)) => {
                    let merged = merge_record_rows(&id, stored, &bytes)?;
                    if merged != bytes {
                        merged_records.push((id.clone(), merged.clone()));
                    }
                    merged
                }
                _ => bytes,
            };
            record_rows.push((id, row));
        }
        let meta_rows: Vec<(String, Vec<u8>)> = batch
            .meta
            .into_iter()
            .map(|(key, value)| match (stale, data.meta.get(&key)) {
                (true, Some(stored)) => {
                    let merged = merge_meta_rows(&key, stored, &value);
                    (key, merged)
                }
                _ => (key, value),
            })
            .collect();
        let generation = data.generation + 1;
        let record_rows = if data.volatile {
            Vec::new()
        } else {
            record_rows
        };
        let segments = if data.volatile {
            Vec::new()
        } else {
            batch.segments
        };
        for (id, row) in record_rows {
            data.records.insert(id, (generation, row));
        }
        for id in batch.removed_records {
            data.records.remove(&id);
        }
        for (key, value) in meta_rows {
            data.meta.insert(key, value);
        }
        for (id, bytes) in segments {
            data.segments.insert(id, bytes);
        }
        for id in batch.removed_segments {
            data.segments.remove(&id);
        }
        data.generation = generation;
        let foreign_meta = if stale {
            MERGEABLE_META
                .iter()
                .filter_map(|key| Some((key.to_string(), data.meta.get(*key)?.clone())))
                .collect()
        } else {
            Vec::new()
        };
        Ok(CommitReceipt {
            generation,
            merged_records,
            foreign_records,
            foreign_meta,
        })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn batch(generation: u64) -> CommitBatch {
        CommitBatch {
            expected_generation: generation,
            records: vec![("a".into(), vec![1; 1000])],
            meta: vec![("m".into(), vec![2])],
            segments: vec![("s".into(), vec![3; 1000])],
            ..CommitBatch::default()
        }
    }

    #[test]
    fn a_volatile_store_keeps_generations_but_no_rows_and_cannot_be_reopened() {
        futures::executor::block_on(async {
            let volatile = MemoryStorage::volatile();
            assert_eq!(volatile.load().await.unwrap().generation, 0);
            let receipt = volatile.commit(batch(0)).await.unwrap();
            assert_eq!(receipt.generation, 1);
            assert_eq!(volatile.commit(batch(1)).await.unwrap().generation, 2);
            assert!(volatile.raw_record("a").is_none(), "no record row kept");
            assert!(volatile.data().segments.is_empty(), "no segment kept");
            assert!(matches!(
                volatile.load().await,
                Err(StorageError::Backend(message)) if message.contains("volatile")
            ));
            // The ordinary store keeps everything and reopens.
            let kept = MemoryStorage::new();
            kept.commit(batch(0)).await.unwrap();
            let mut loaded = kept.load().await.unwrap();
            let rows = loaded.read_all_rows().unwrap();
            assert_eq!((rows.len(), loaded.segments.len()), (1, 1));
        });
    }
}
