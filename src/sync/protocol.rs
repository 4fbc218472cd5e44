//! The sync protocol: a pure state machine, messages in and messages out,
//! over any transport that delivers each peer's messages in order (a relay
//! topic, a Hyperswarm connection). See `docs/PROTOCOL.md`.
//!
//! Every message is sealed with the database's [`SyncCipher`]; the plaintext
//! is:
//!
//! ```text
//! u8   protocol version = 1
//! [16] sender peer id (the sender's actor id)
//! u8   kind, then:
//!   1 HELLO  version vector                    "this is what I have"
//!   2 DELTA  [16] to, u32 delta id, u32 chunk, u32 chunks,
//!            version vector (the sender's, when it computed the delta),
//!            u32 count, operations             "what you lack", in chunks
//!   3 LIVE   u32 count, operations             newly committed writes
//!   4 ACK    [16] to, version vector           "I now have this"
//! ```
//!
//! Operations use the record encoding (`CrdtOperation::encode`). A delta is
//! complete when every chunk of its id arrived; only then does the receiver
//! adopt the sender's version vector.

use std::collections::HashMap;

use super::crypto::{CryptoError, SyncCipher};
use crate::codec::{Reader, Writer};
use crate::crdt::{ActorId, CrdtOperation, VersionVector};
use crate::error::DecodeError;

/// Version byte of protocol messages.
pub const PROTOCOL_VERSION: u8 = 1;
/// Plaintext size at which deltas and live batches are split.
pub const CHUNK_BYTES: usize = 256 * 1024;

const HELLO: u8 = 1;
const DELTA: u8 = 2;
const LIVE: u8 = 3;
const ACK: u8 = 4;

/// A sync peer: the actor id of the instance at the other end.
pub type PeerId = ActorId;

/// Failures of an incoming message. None of them is fatal to a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Failed authentication: another key, or tampered bytes.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Authenticated but malformed (a bug or an incompatible peer).
    #[error("malformed sync message: {0}")]
    Decode(#[from] DecodeError),
}

/// A decoded protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The sender's version vector; peers answer with a delta.
    Hello {
        /// What the sender has.
        vector: VersionVector,
    },
    /// One chunk of the operations `to` lacks.
    Delta {
        /// The addressee.
        to: PeerId,
        /// Identifies the delta among the sender's deltas.
        delta: u32,
        /// This chunk's index.
        chunk: u32,
        /// How many chunks the delta has.
        chunks: u32,
        /// The sender's version vector when it computed the delta.
        vector: VersionVector,
        /// The operations.
        ops: Vec<CrdtOperation>,
    },
    /// Newly committed operations, for everyone.
    Live {
        /// The operations.
        ops: Vec<CrdtOperation>,
    },
    /// What the sender has after applying something from `to`.
    Ack {
        /// The addressee.
        to: PeerId,
        /// The sender's version vector.
        vector: VersionVector,
    },
}

fn encode_ops(writer: &mut Writer, ops: &[CrdtOperation]) {
    writer.u32(crate::codec::len_u32(ops.len()));
    for op in ops {
        op.encode(writer);
    }
}

fn decode_ops(reader: &mut Reader<'_>) -> Result<Vec<CrdtOperation>, DecodeError> {
    let count = reader.count(1 + 4 + 16 + 12 + 4 + 1)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        ops.push(CrdtOperation::decode(reader)?);
    }
    Ok(ops)
}

impl Message {
    /// Encodes with the sender's id.
    pub fn encode(&self, sender: &PeerId) -> Vec<u8> {
        let mut writer = Writer::new();
        writer.u8(PROTOCOL_VERSION).raw(sender.as_bytes());
        match self {
            Message::Hello { vector } => {
                writer.u8(HELLO);
                vector.encode(&mut writer);
            }
            Message::Delta {
                to,
                delta,
                chunk,
                chunks,
                vector,
                ops,
            } => {
                writer.u8(DELTA).raw(to.as_bytes());
                writer.u32(*delta).u32(*chunk).u32(*chunks);
                vector.encode(&mut writer);
                encode_ops(&mut writer, ops);
            }
            Message::Live { ops } => {
                writer.u8(LIVE);
                encode_ops(&mut writer, ops);
            }
            Message::Ack { to, vector } => {
                writer.u8(ACK).raw(to.as_bytes());
                vector.encode(&mut writer);
            }
        }
        writer.finish()
    }

    /// Decodes a plaintext message: `(sender, message)`.
    pub fn decode(bytes: &[u8]) -> Result<(PeerId, Message), DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "sync message",
                found: version,
                supported: PROTOCOL_VERSION,
            });
        }
        let sender = ActorId::decode(&mut reader)?;
        let message = match reader.u8()? {
            HELLO => Message::Hello {
                vector: VersionVector::decode(&mut reader)?,
            },
            DELTA => {
                let to = ActorId::decode(&mut reader)?;
                let (delta, chunk, chunks) = (reader.u32()?, reader.u32()?, reader.u32()?);
                if chunks == 0 || chunk >= chunks {
                    return Err(DecodeError::Invalid(format!(
                        "delta chunk {chunk} of {chunks}"
                    )));
                }
                Message::Delta {
                    to,
                    delta,
                    chunk,
                    chunks,
                    vector: VersionVector::decode(&mut reader)?,
                    ops: decode_ops(&mut reader)?,
                }
            }
            LIVE => Message::Live {
                ops: decode_ops(&mut reader)?,
            },
            ACK => Message::Ack {
                to: ActorId::decode(&mut reader)?,
                vector: VersionVector::decode(&mut reader)?,
            },
            other => {
                return Err(DecodeError::Invalid(format!(
                    "unknown sync message kind {other}"
                )))
            }
        };
        reader.finish()?;
        Ok((sender, message))
    }
}

/// What a received message asks of the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A peer announced itself: answer with [`SyncProtocol::delta`] for
    /// `changes_since(vector)`.
    Hello {
        /// The peer.
        from: PeerId,
        /// What it has.
        vector: VersionVector,
    },
    /// Merge `ops`; when `complete` is set they finish a delta from a peer
    /// holding that vector, which the database may then adopt.
    Apply {
        /// The peer.
        from: PeerId,
        /// The operations.
        ops: Vec<CrdtOperation>,
        /// Set on the last chunk of a complete delta.
        complete: Option<VersionVector>,
    },
    /// A peer acknowledged what it has.
    Ack {
        /// The peer.
        from: PeerId,
        /// What it has.
        vector: VersionVector,
    },
    /// Not for this instance (its own echo, or addressed to another peer).
    Ignore,
}

/// The protocol state of one instance on one transport.
#[derive(Debug)]
pub struct SyncProtocol {
    me: PeerId,
    cipher: SyncCipher,
    next_delta: u32,
    /// Chunks received per (peer, delta id).
    partial: HashMap<(PeerId, u32), u32>,
    rejected: u64,
}

impl SyncProtocol {
    /// The protocol for instance `me`, sealing with `cipher`.
    pub fn new(me: PeerId, cipher: SyncCipher) -> Self {
        Self {
            me,
            cipher,
            next_delta: 0,
            partial: HashMap::new(),
            rejected: 0,
        }
    }

    /// This instance's peer id.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// Envelopes that failed authentication so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn seal(&self, message: &Message) -> Vec<u8> {
        self.cipher.seal(&message.encode(&self.me))
    }

    /// The HELLO envelope.
    pub fn hello(&self, vector: &VersionVector) -> Vec<u8> {
        self.seal(&Message::Hello {
            vector: vector.clone(),
        })
    }

    /// The ACK envelope for `to`.
    pub fn ack(&self, to: PeerId, vector: &VersionVector) -> Vec<u8> {
        self.seal(&Message::Ack {
            to,
            vector: vector.clone(),
        })
    }

    /// LIVE envelopes carrying `ops`, split at [`CHUNK_BYTES`].
    pub fn live(&self, ops: &[CrdtOperation]) -> Vec<Vec<u8>> {
        chunk_ops(ops)
            .into_iter()
            .map(|ops| self.seal(&Message::Live { ops }))
            .collect()
    }

    /// DELTA envelopes answering `to`'s hello with `ops` (what it lacks),
    /// computed when this instance had `vector`. Always at least one chunk,
    /// so an empty delta still tells the peer it is up to date.
    pub fn delta(
        &mut self,
        to: PeerId,
        ops: &[CrdtOperation],
        vector: &VersionVector,
    ) -> Vec<Vec<u8>> {
        let delta = self.next_delta;
        self.next_delta = self.next_delta.wrapping_add(1);
        let chunks = chunk_ops(ops);
        let count = crate::codec::len_u32(chunks.len());
        chunks
            .into_iter()
            .enumerate()
            .map(|(index, ops)| {
                self.seal(&Message::Delta {
                    to,
                    delta,
                    chunk: index as u32,
                    chunks: count,
                    vector: vector.clone(),
                    ops,
                })
            })
            .collect()
    }

    /// Opens and interprets an envelope from the transport.
    pub fn receive(&mut self, envelope: &[u8]) -> Result<Incoming, SyncError> {
        let plaintext = match self.cipher.open(envelope) {
            Ok(plaintext) => plaintext,
            Err(error) => {
                self.rejected += 1;
                return Err(error.into());
            }
        };
        let (from, message) = Message::decode(&plaintext)?;
        if from == self.me {
            return Ok(Incoming::Ignore);
        }
        Ok(match message {
            Message::Hello { vector } => Incoming::Hello { from, vector },
            Message::Live { ops } => Incoming::Apply {
                from,
                ops,
                complete: None,
            },
            Message::Ack { to, vector } if to == self.me => Incoming::Ack { from, vector },
            Message::Delta {
                to,
                delta,
                chunk,
                chunks,
                vector,
                ops,
            } if to == self.me => {
                // Chunks of one delta arrive in order on an ordered
                // transport; count them and adopt the vector only when all
                // arrived.
                let key = (from, delta);
                let seen = if chunk == 0 {
                    1
                } else {
                    self.partial.get(&key).copied().unwrap_or(0) + 1
                };
                let complete = seen == chunks && chunk + 1 == chunks;
                if complete {
                    self.partial.remove(&key);
                } else {
                    self.partial.insert(key, seen);
                }
                Incoming::Apply {
                    from,
                    ops,
                    complete: complete.then_some(vector),
                }
            }
            Message::Ack { .. } | Message::Delta { .. } => Incoming::Ignore,
        })
    }
}

/// Splits operations into groups of at most [`CHUNK_BYTES`] encoded bytes
/// (an operation larger than that travels alone). At least one group.
fn chunk_ops(ops: &[CrdtOperation]) -> Vec<Vec<CrdtOperation>> {
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for op in ops {
        let op_size = op.to_bytes().len();
        if size + op_size > CHUNK_BYTES && !chunks.last().expect("non-empty").is_empty() {
            chunks.push(Vec::new());
            size = 0;
        }
        size += op_size;
        chunks.last_mut().expect("non-empty").push(op.clone());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{CrdtStore, Document};
    use crate::sync::crypto::SyncIdentity;
    use serde_json::json;

    #[test]
    fn hello_delta_and_live_flow_between_two_peers() {
        let identity = SyncIdentity::generate();
        let mut a = CrdtStore::new(ActorId::from_bytes([1; 16]));
        let mut b = CrdtStore::new(ActorId::from_bytes([2; 16]));
        let big = "x".repeat(100_000);
        for i in 0..8 {
            a.put(
                &format!("k{i}"),
                Document::from_value(&json!(big)).unwrap(),
                10 + i,
            );
        }
        let mut pa = SyncProtocol::new(a.actor(), identity.cipher());
        let mut pb = SyncProtocol::new(b.actor(), identity.cipher());

        // B says hello; A answers with what B lacks, in several chunks.
        let hello = pb.hello(b.version_vector());
        let Incoming::Hello { from, vector } = pa.receive(&hello).unwrap() else {
            panic!("expected a hello");
        };
        assert_eq!(from, b.actor());
        let ops = a.changes_since(&vector);
        let chunks = pa.delta(from, &ops, &a.version_vector().clone());
        assert!(chunks.len() > 1, "an 800 KB delta is chunked");
        for (index, chunk) in chunks.iter().enumerate() {
            // Own messages and other peers' deltas are ignored by A.
            assert_eq!(pa.receive(chunk).unwrap(), Incoming::Ignore);
            let Incoming::Apply { ops, complete, .. } = pb.receive(chunk).unwrap() else {
                panic!("expected operations");
            };
            assert_eq!(complete.is_some(), index + 1 == chunks.len());
            match complete {
                Some(vector) => {
                    b.apply_delta(ops, &vector, 100);
                }
                None => {
                    for op in ops {
                        b.apply(op, 100);
                    }
                }
            }
        }
        assert_eq!(a.state_bytes(), b.state_bytes());

        // A live write reaches B.
        let op = a.put("live", Document::from_value(&json!(1)).unwrap(), 200);
        for envelope in pa.live(&[op]) {
            let Incoming::Apply { ops, .. } = pb.receive(&envelope).unwrap() else {
                panic!("expected operations");
            };
            for op in ops {
                b.apply(op, 300);
            }
        }
        assert_eq!(a.state_bytes(), b.state_bytes());
    }

    #[test]
    fn a_missing_chunk_means_the_vector_is_not_adopted() {
        let identity = SyncIdentity::generate();
        let mut pa = SyncProtocol::new(ActorId::from_bytes([1; 16]), identity.cipher());
        let mut pb = SyncProtocol::new(ActorId::from_bytes([2; 16]), identity.cipher());
        let mut a = CrdtStore::new(pa.me());
        for i in 0..4 {
            a.put(
                &format!("k{i}"),
                Document::from_value(&json!("y".repeat(200_000))).unwrap(),
                1,
            );
        }
        let chunks = pa.delta(
            pb.me(),
            &a.changes_since(&VersionVector::new()),
            a.version_vector(),
        );
        assert!(chunks.len() >= 3);
        // Drop the middle chunk.
        let mut completed = false;
        for (index, chunk) in chunks.iter().enumerate() {
            if index == 1 {
                continue;
            }
            if let Incoming::Apply { complete, .. } = pb.receive(chunk).unwrap() {
                completed |= complete.is_some();
            }
        }
        assert!(!completed);
    }

    #[test]
    fn wrong_keys_are_rejected_and_counted_and_garbage_never_panics() {
        let mut ours = SyncProtocol::new(
            ActorId::from_bytes([1; 16]),
            SyncIdentity::generate().cipher(),
        );
        let theirs = SyncProtocol::new(
            ActorId::from_bytes([2; 16]),
            SyncIdentity::generate().cipher(),
        );
        let hello = theirs.hello(&VersionVector::new());
        assert!(matches!(
            ours.receive(&hello),
            Err(SyncError::Crypto(CryptoError::Rejected))
        ));
        assert_eq!(ours.rejected(), 1);
        for garbage in [&b""[..], &[1u8; 10][..], &[1u8; 100][..]] {
            assert!(ours.receive(garbage).is_err());
        }
        for cut in 0..20 {
            assert!(Message::decode(&[1u8; 40][..cut]).is_err());
        }
    }
}
