//! The CRDT core: last-write-wins records with vector clocks and hybrid
//! logical clocks, tombstones, conflicts, version vectors and the delta feed.
//!
//! Pure: no I/O, no platform types. Time comes in as `now_ms` arguments and
//! randomness only through [`ActorId::random`], so tests can control both.
//!
//! The merge rule (see `docs/ARCHITECTURE.md`): if one version's clock has
//! seen the other, it wins; concurrent versions are ordered by `(hlc, actor)`
//! and the loser is kept as a conflict until a later write covers it. Deletes
//! are tombstone versions under the same rule.

mod clock;
mod record;
pub(crate) use record::write_operations;
mod record_map;
mod store;

pub use clock::{
    ActorId, Dot, Hlc, HlcClock, VectorClock, VersionVector, MAX_COUNTER, MAX_FUTURE_DRIFT_MS,
};
pub use record::{
    decode_operations, encode_operations, validate_id, Body, CrdtOperation, Document, Record,
    Version, DOCUMENT_OVERHEAD_BYTES, MAX_DOCUMENT_BYTES, MAX_EMBEDDING_DIM, MAX_ID_BYTES, NO_HINT,
    RECORD_ENCODING_VERSION,
};
pub use store::{Change, ChangeKind, ChangePlan, CrdtStore, Preview, RestoredRecords};
