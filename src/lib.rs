//! # PluresDB
//!
//! A browser-first, local-first JSON database. One crate compiles to
//! `wasm32-unknown-unknown` (the npm package: IndexedDB persistence, workers,
//! several tabs at once) and natively (a Rust library and the `pluresdb`
//! binary: SQLite persistence, the relay server, a CLI and an HTTP API).
//!
//! Records are JSON documents replicated as last-write-wins CRDTs with vector
//! clocks and hybrid logical clocks ([`crdt`]); a [`Database`] ties the CRDT
//! store to a [`Storage`](storage::Storage) backend and makes every write
//! durable before it resolves.
//!
//! ```
//! use pluresdb::{Database, OpenOptions, storage::MemoryStorage};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pluresdb::Result<()> {
//! let db = Database::open(MemoryStorage::new(), OpenOptions::default()).await?;
//! db.put("user:1", json!({ "name": "Alice" })).await?;
//! assert_eq!(db.get("user:1").await?, Some(json!({ "name": "Alice" })));
//! # Ok(())
//! # }
//! ```
//!
//! Architecture, merge rule and formats: `docs/ARCHITECTURE.md` and
//! `docs/PROTOCOL.md` in the repository.

pub mod codec;
pub mod crdt;
mod db;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod platform;
pub mod query;
pub mod storage;
pub mod sync;
#[cfg(test)]
mod test_random;
pub mod transport;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(all(feature = "hyperswarm", not(target_arch = "wasm32")))]
pub mod hyperswarm;
#[cfg(not(target_arch = "wasm32"))]
pub mod relay;

pub use db::{
    next_change_under, text_of, CommittedBatch, Database, DatabaseStats, EmbedText, EmbeddedEntry,
    ListOptions, OpenOptions, Origin, Page, QueryPlan, SearchHit, SearchQuery, SearchRequest,
    SyncEvent, SyncHandle, SyncState, SyncStatus, DEFAULT_CACHE_BYTES, SCAN_WARNING_READS,
};
pub use error::{Error, Result};
pub use query::Query;

/// The examples in README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
