//! What a relay keeps, behind one trait: [`EnvelopeLog`], the per-topic log
//! of sealed envelopes that members who were offline catch up from. One
//! relay keeps it in SQLite ([`super::backlog`]); a cluster of relays keeps
//! it in Redis Streams ([`super::redis`]). The relay's connection handling,
//! limits and framing are the same code for both.

use std::future::Future;
use std::pin::Pin;

use crate::sync::Topic;

/// A boxed future of a store call.
pub(crate) type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An envelope kept in a log, with its sequence.
pub(crate) type Kept = (u64, Vec<u8>);

/// Why a store call did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The relay keeps backlogs for as many topics as it takes.
    TooManyTopics,
    /// The store failed or is unreachable (disk full, file cap, Redis
    /// down); the message says which, for the relay's log.
    Unavailable(String),
}

/// A per-topic log of envelopes with the single-node relay's limits
/// (frames, bytes and age per topic, bytes and topics in total).
///
/// Sequences are positive, grow with every envelope kept for a topic, and
/// are what clients pass back as their resume cursor.
pub(crate) trait EnvelopeLog: Send + Sync {
    /// Keeps `envelope` (published by connection `from`); its sequence.
    fn store(
        &self,
        topic: Topic,
        from: u64,
        envelope: Vec<u8>,
        member_topics: usize,
    ) -> StoreFuture<'_, Result<u64, Refusal>>;

    /// The newest sequence kept for `topic` (0: none).
    fn head(&self, topic: Topic) -> StoreFuture<'_, Result<u64, Refusal>>;

    /// Envelopes of `topic` after `after` up to `head`, in order, about
    /// `max_bytes` at most (at least one when any is left).
    fn after(
        &self,
        topic: Topic,
        after: u64,
        head: u64,
        max_bytes: usize,
    ) -> StoreFuture<'_, Result<Vec<Kept>, Refusal>>;

    /// Drops envelopes past the age limit.
    fn expire(&self) -> StoreFuture<'_, ()>;

    /// Topics with envelopes kept, and their bytes (as last seen; no I/O).
    fn usage(&self) -> (usize, u64);

    /// Whether `topic` has envelopes kept, as far as known without I/O
    /// (Redis: not known, so no).
    fn holds(&self, topic: &Topic) -> bool;
}
