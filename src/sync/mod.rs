//! Sync: end-to-end encryption, the delta protocol (a pure state machine)
//! and the relay framing. No I/O here; transports live in
//! [`crate::transport`] and the engine that drives a database over one in
//! [`engine`].

pub mod crypto;
pub mod protocol;
pub mod relay_frame;

pub use crypto::{envelope_nonce, topic_of, CryptoError, JoinKey, SyncCipher, SyncIdentity, Topic};
pub use protocol::{ChunkId, Incoming, Message, PeerId, SyncError, SyncProtocol, MAX_DELTA_CHUNKS};
