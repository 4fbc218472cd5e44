//! The storage a browser database runs on, chosen at open time.

use crate::error::StorageError;
use crate::storage::{
    CommitBatch, CommitReceipt, IndexedDbStorage, LoadedState, MemoryStorage, SlotLease, Storage,
};

/// IndexedDB in browsers and workers, memory elsewhere (Node) or on request.
pub enum BrowserStorage {
    /// Nothing persists.
    Memory(MemoryStorage),
    /// Persisted in IndexedDB.
    IndexedDb(IndexedDbStorage),
}

impl Storage for BrowserStorage {
    fn describe(&self) -> String {
        match self {
            Self::Memory(s) => s.describe(),
            Self::IndexedDb(s) => s.describe(),
        }
    }

    async fn acquire_slot(&self) -> Result<SlotLease, StorageError> {
        match self {
            Self::Memory(s) => s.acquire_slot().await,
            Self::IndexedDb(s) => s.acquire_slot().await,
        }
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        match self {
            Self::Memory(s) => s.load().await,
            Self::IndexedDb(s) => s.load().await,
        }
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitReceipt, StorageError> {
        match self {
            Self::Memory(s) => s.commit(batch).await,
            Self::IndexedDb(s) => s.commit(batch).await,
        }
    }

    fn reads_records(&self) -> bool {
        match self {
            Self::Memory(s) => s.reads_records(),
            Self::IndexedDb(s) => s.reads_records(),
        }
    }

    fn reads_records_after_housekeeping(&self) -> bool {
        match self {
            Self::Memory(s) => s.reads_records_after_housekeeping(),
            Self::IndexedDb(s) => s.reads_records_after_housekeeping(),
        }
    }

    async fn learn_whether_records_read_back(&self) -> Result<bool, StorageError> {
        match self {
            Self::Memory(s) => s.learn_whether_records_read_back().await,
            Self::IndexedDb(s) => s.learn_whether_records_read_back().await,
        }
    }

    async fn read_records(&self, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        match self {
            Self::Memory(s) => s.read_records(ids).await,
            Self::IndexedDb(s) => s.read_records(ids).await,
        }
    }

    async fn read_rows_at(
        &self,
        wanted: Vec<(String, u32)>,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        match self {
            Self::Memory(s) => s.read_rows_at(wanted).await,
            Self::IndexedDb(s) => s.read_rows_at(wanted).await,
        }
    }

    fn housekeeping_due(&self) -> bool {
        match self {
            Self::Memory(s) => s.housekeeping_due(),
            Self::IndexedDb(s) => s.housekeeping_due(),
        }
    }

    async fn housekeeping(&self) -> Result<Option<u64>, StorageError> {
        match self {
            Self::Memory(s) => s.housekeeping().await,
            Self::IndexedDb(s) => s.housekeeping().await,
        }
    }

    async fn close(&self) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => s.close().await,
            Self::IndexedDb(s) => Storage::close(s).await,
        }
    }

    fn announce(&self, message: &[u8]) {
        match self {
            Self::Memory(s) => s.announce(message),
            Self::IndexedDb(s) => s.announce(message),
        }
    }

    fn announcements(&self) -> Option<futures::channel::mpsc::UnboundedReceiver<Vec<u8>>> {
        match self {
            Self::Memory(s) => s.announcements(),
            Self::IndexedDb(s) => s.announcements(),
        }
    }
}
