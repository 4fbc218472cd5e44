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
//!   1 HELLO  version vector, u8 count,         "this is what I have"
//!            count × ([16] peer, u64 vector digest, [16] actor, u64 seq)
//!                                              (resume hints, see below)
//!   2 DELTA  [16] to, u32 delta id, u32 chunk, u32 chunks,
//!            version vector (the sender's, when it computed the delta),
//!            u32 count, operations             "what you lack", in chunks
//!   3 LIVE   u32 count, operations             newly committed writes
//!   4 ACK    [16] to, version vector           "I now have this"
//!   5 ASK    [16] to, version vector           "this is what I have; send me what I lack"
//! ```
//!
//! ASK is HELLO addressed to one peer: a replica that answers a HELLO and
//! sees that the peer has writes it lacks asks that peer alone, instead of
//! greeting everyone again.
//!
//! Deltas go in dot order (by writer, then sequence number), but for the
//! last chunk of one sent chunk by chunk, which holds the versions that
//! superseded planned ones while it was read (whatever their dots). A delta cut
//! off (a disconnect) can resume: the receiver's next HELLO carries, per
//! peer whose delta it holds a prefix of (chunks `0..=k` committed), a hint
//! `(peer, digest of that delta's vector, last dot of chunk k)`. A peer
//! whose vector still has that digest leaves out what its delta would
//! carry up to that dot: the receiver committed exactly that already.
//!
//! A replayed or duplicated envelope (one whose nonce was already opened,
//! among the last [`REMEMBERED_NONCES`]) is dropped before any work. The
//! engine also answers at most one delta per peer connection and vector,
//! so a recorded HELLO replayed costs nothing.
//!
//! Operations use the record encoding (`CrdtOperation::encode`). A delta is
//! complete when every chunk index of its id, `0..chunks`, was received once
//! and applied (committed) here, in any order; only then does the receiver
//! adopt the sender's version vector. A repeated chunk is dropped before any
//! work, and a chunk whose commit failed keeps its delta from ever
//! completing (the next HELLO asks again).

use std::collections::{HashMap, VecDeque};

use super::crypto::{envelope_nonce, CryptoError, SyncCipher};
use crate::codec::{Reader, Writer};
use crate::crdt::{ActorId, CrdtOperation, Dot, VersionVector};
use crate::error::DecodeError;

/// Version byte of protocol messages (2: keys and topics of
/// [`super::crypto`] version 2, JOIN with a join key).
pub const PROTOCOL_VERSION: u8 = 2;
/// Nonces of opened envelopes remembered to drop replays.
pub const REMEMBERED_NONCES: usize = 8192;
/// Plaintext size at which deltas and live batches are split.
pub const CHUNK_BYTES: usize = 256 * 1024;

const HELLO: u8 = 1;
const DELTA: u8 = 2;
const LIVE: u8 = 3;
const ACK: u8 = 4;
const ASK: u8 = 5;

/// The most chunks one delta may have (at [`CHUNK_BYTES`] each, 16 GiB):
/// a larger count is a malformed message.
pub const MAX_DELTA_CHUNKS: u32 = 1 << 16;
/// Deltas being received at once; past this the oldest is forgotten (it
/// then never completes, and a later HELLO asks again).
const MAX_PARTIAL_DELTAS: usize = 64;
/// Resume hints a HELLO carries at most.
pub const MAX_RESUME_HINTS: usize = 8;
/// Watchdog periods without a chunk after which a delta being received
/// counts as stalled (see [`SyncProtocol::tick`]).
pub const STALL_TICKS: u32 = 3;
/// Hellos sent again for one stalled delta before it is forgotten.
const MAX_REHELLOS: u32 = 3;

/// A stable 64-bit digest of a version vector (BLAKE2b), the same on every
/// platform and build: what resume hints name a delta's vector by.
pub fn vector_digest(vector: &VersionVector) -> u64 {
    use blake2::Digest;
    let hash = blake2::Blake2b256::digest(vector.to_bytes());
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// What identifies an envelope among those remembered: the first 8 bytes
/// of its random nonce.
fn nonce_key(envelope: &[u8]) -> Option<u64> {
    let nonce = envelope_nonce(envelope)?;
    Some(u64::from_le_bytes(nonce[..8].try_into().expect("8 bytes")))
}

/// Sorts operations by dot (writer, then sequence number): the order of
/// deltas and of the offline queue. Dots are unique, so the order is too.
pub fn sort_by_dot(ops: &mut [CrdtOperation]) {
    ops.sort_unstable_by_key(|op| op.version.dot());
}

/// "I hold a prefix of your delta computed at the vector with this digest,
/// up to this dot": carried in HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeHint {
    /// The peer whose delta was cut off.
    pub peer: PeerId,
    /// [`vector_digest`] of the vector that delta carried.
    pub vector_digest: u64,
    /// The last dot of the committed prefix.
    pub after: Dot,
}

impl ResumeHint {
    /// `u8 count, count × ([16] peer, u64 digest, [16] actor, u64 seq)`.
    pub fn encode_list(hints: &[ResumeHint], writer: &mut Writer) {
        writer.u8(hints.len().min(MAX_RESUME_HINTS) as u8);
        for hint in hints.iter().take(MAX_RESUME_HINTS) {
            writer
                .raw(hint.peer.as_bytes())
                .u64(hint.vector_digest)
                .raw(hint.after.actor.as_bytes())
                .u64(hint.after.seq);
        }
    }

    /// Decodes what [`encode_list`](Self::encode_list) wrote.
    pub fn decode_list(reader: &mut Reader<'_>) -> Result<Vec<ResumeHint>, DecodeError> {
        let count = usize::from(reader.u8()?);
        if count > MAX_RESUME_HINTS {
            return Err(DecodeError::Invalid(format!(
                "{count} resume hints (at most {MAX_RESUME_HINTS})"
            )));
        }
        let mut hints = Vec::with_capacity(count);
        for _ in 0..count {
            let peer = ActorId::decode(reader)?;
            let vector_digest = reader.u64()?;
            let actor = ActorId::decode(reader)?;
            let seq = reader.u64()?;
            if seq == 0 || seq > crate::crdt::MAX_COUNTER {
                return Err(DecodeError::Invalid(format!(
                    "resume hint at sequence number {seq}"
                )));
            }
            hints.push(ResumeHint {
                peer,
                vector_digest,
                after: Dot { actor, seq },
            });
        }
        Ok(hints)
    }

    /// The list as bytes, for the metadata store.
    pub fn list_to_bytes(hints: &[ResumeHint]) -> Vec<u8> {
        let mut writer = Writer::new();
        Self::encode_list(hints, &mut writer);
        writer.finish()
    }

    /// A list from [`list_to_bytes`](Self::list_to_bytes).
    pub fn list_from_bytes(bytes: &[u8]) -> Result<Vec<ResumeHint>, DecodeError> {
        let mut reader = Reader::new(bytes);
        let hints = Self::decode_list(&mut reader)?;
        reader.finish()?;
        Ok(hints)
    }
}

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
        /// Deltas the sender holds a prefix of.
        resume: Vec<ResumeHint>,
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
    /// A hello for `to` alone: it answers with a delta.
    Ask {
        /// The addressee.
        to: PeerId,
        /// What the sender has.
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
            Message::Hello { vector, resume } => {
                writer.u8(HELLO);
                vector.encode(&mut writer);
                ResumeHint::encode_list(resume, &mut writer);
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
            Message::Ask { to, vector } => {
                writer.u8(ASK).raw(to.as_bytes());
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
                resume: ResumeHint::decode_list(&mut reader)?,
            },
            DELTA => {
                let to = ActorId::decode(&mut reader)?;
                let (delta, chunk, chunks) = (reader.u32()?, reader.u32()?, reader.u32()?);
                if chunks == 0 || chunk >= chunks || chunks > MAX_DELTA_CHUNKS {
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
            ASK => Message::Ask {
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
    /// A peer announced itself (or asked this instance alone): answer with
    /// [`SyncProtocol::delta`] for `changes_since(vector)`.
    Hello {
        /// The peer.
        from: PeerId,
        /// What it has.
        vector: VersionVector,
        /// An ASK: answer with the delta only, never with an ASK back.
        asked: bool,
        /// The peer holds a prefix of a delta from this instance: (digest
        /// of that delta's vector, last dot held). When this instance's
        /// vector still has that digest, pass the dot to
        /// [`SyncProtocol::delta`].
        resume: Option<(u64, Dot)>,
    },
    /// Merge `ops`; when `complete` is set they finish a delta from a peer
    /// holding that vector, which the database may then adopt. For a delta
    /// chunk (`chunk` set), report the outcome of committing it with
    /// [`SyncProtocol::chunk_applied`].
    Apply {
        /// The peer.
        from: PeerId,
        /// The operations.
        ops: Vec<CrdtOperation>,
        /// Set on the chunk that completes a delta.
        complete: Option<VersionVector>,
        /// Which delta chunk this is (`None` for live operations).
        chunk: Option<ChunkId>,
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

/// One chunk of one peer's delta, as [`Incoming::Apply`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkId {
    /// The sender's delta id.
    pub delta: u32,
    /// The chunk's index.
    pub chunk: u32,
}

/// What arrived of one delta.
#[derive(Debug)]
struct DeltaProgress {
    chunks: u32,
    /// [`vector_digest`] of the vector the delta carries.
    vector_digest: u64,
    /// Chunk indices received and committed, sorted.
    applied: Vec<u32>,
    /// The largest dot of each chunk received (committed or not), sorted
    /// by chunk index.
    last_dots: Vec<(u32, Dot)>,
    /// A chunk arrived whose commit failed: this delta never completes.
    failed: bool,
    /// [`tick`](SyncProtocol::tick)s since a chunk of it last arrived.
    idle_ticks: u32,
    /// Hellos sent again for it without a chunk arriving since.
    rehellos: u32,
    /// Order of arrival among partial deltas, for eviction.
    started: u64,
}

/// The protocol state of one instance on one transport.
#[derive(Debug)]
pub struct SyncProtocol {
    me: PeerId,
    cipher: SyncCipher,
    /// The id of the next delta sent. Starts at a random value, so the
    /// deltas of one replica's successive sessions (each a new protocol
    /// instance) do not share ids: a late chunk of an earlier session's
    /// delta must not be taken for a chunk of the current one.
    next_delta: u32,
    /// Deltas being received, per (peer, delta id).
    partial: HashMap<(PeerId, u32), DeltaProgress>,
    started: u64,
    rejected: u64,
    replayed: u64,
    /// Resume hints of an earlier instance.
    inherited: Vec<ResumeHint>,
    /// The first 8 bytes of the nonces of authenticated envelopes, newest
    /// last (random, so two collide with odds of 2^-64; a scan of 8,192
    /// words is a few microseconds).
    seen: VecDeque<u64>,
}

impl SyncProtocol {
    /// The protocol for instance `me`, sealing with `cipher`.
    pub fn new(me: PeerId, cipher: SyncCipher) -> Self {
        let mut first_delta = [0u8; 4];
        crate::platform::fill_random(&mut first_delta);
        Self {
            me,
            cipher,
            next_delta: u32::from_le_bytes(first_delta),
            partial: HashMap::new(),
            started: 0,
            rejected: 0,
            replayed: 0,
            inherited: Vec::new(),
            seen: VecDeque::new(),
        }
    }

    /// Envelopes dropped as replays or duplicates so far.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Forgets that `envelope` was received, so that it counts again when
    /// it arrives again: for an envelope whose changes could not be
    /// committed.
    pub fn forget(&mut self, envelope: &[u8]) {
        if let Some(nonce) = nonce_key(envelope) {
            self.seen.retain(|n| *n != nonce);
        }
    }

    fn remember(&mut self, nonce: u64) {
        if self.seen.len() >= REMEMBERED_NONCES {
            self.seen.pop_front();
        }
        self.seen.push_back(nonce);
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

    /// The HELLO envelope, with [`resume_hints`](Self::resume_hints).
    pub fn hello(&self, vector: &VersionVector) -> Vec<u8> {
        self.seal(&Message::Hello {
            vector: vector.clone(),
            resume: self.resume_hints(),
        })
    }

    /// Resume hints for the deltas this instance holds a committed prefix
    /// of (the newest per peer), then inherited ones
    /// ([`inherit_hints`](Self::inherit_hints)) for other peers; at most
    /// [`MAX_RESUME_HINTS`].
    pub fn resume_hints(&self) -> Vec<ResumeHint> {
        // Per peer, the newest partial delta with a committed prefix.
        let mut newest: Vec<(u64, ResumeHint)> = Vec::new();
        for ((peer, _), progress) in &self.partial {
            if progress.failed {
                continue;
            }
            // The committed prefix 0..=k, and its largest dot.
            let mut after = None;
            for (index, chunk) in progress.applied.iter().enumerate() {
                if *chunk as usize != index {
                    break;
                }
                if let Ok(at) = progress.last_dots.binary_search_by_key(chunk, |(c, _)| *c) {
                    let dot = progress.last_dots[at].1;
                    after = Some(after.map_or(dot, |a: Dot| a.max(dot)));
                }
            }
            let Some(after) = after else { continue };
            let hint = ResumeHint {
                peer: *peer,
                vector_digest: progress.vector_digest,
                after,
            };
            match newest.iter_mut().find(|(_, h)| h.peer == *peer) {
                Some(entry) if entry.0 < progress.started => *entry = (progress.started, hint),
                Some(_) => {}
                None => newest.push((progress.started, hint)),
            }
        }
        let mut resume: Vec<ResumeHint> = Vec::new();
        while resume.len() < MAX_RESUME_HINTS {
            let Some(at) = (0..newest.len()).max_by_key(|i| newest[*i].0) else {
                break;
            };
            resume.push(newest.swap_remove(at).1);
        }
        for hint in &self.inherited {
            if resume.len() < MAX_RESUME_HINTS && !resume.iter().any(|h| h.peer == hint.peer) {
                resume.push(*hint);
            }
        }
        resume
    }

    /// Hints an earlier instance of this replica computed (kept in its
    /// metadata), so that a restarted sync resumes deltas too.
    pub fn inherit_hints(&mut self, hints: Vec<ResumeHint>) {
        self.inherited = hints;
        self.inherited.truncate(MAX_RESUME_HINTS);
    }

    /// The ASK envelope for `to`: a hello only `to` answers.
    pub fn ask(&self, to: PeerId, vector: &VersionVector) -> Vec<u8> {
        self.seal(&Message::Ask {
            to,
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

    /// LIVE envelopes carrying `ops`, split at [`CHUNK_BYTES`]; none for no
    /// operations.
    pub fn live(&self, ops: &[CrdtOperation]) -> Vec<Vec<u8>> {
        if ops.is_empty() {
            return Vec::new();
        }
        chunk_ops(ops.iter().cloned())
            .into_iter()
            .map(|ops| self.seal(&Message::Live { ops }))
            .collect()
    }

    /// Splits `ops` the way [`live`](Self::live) does: groups of at most
    /// [`CHUNK_BYTES`] encoded bytes, in order; none for no operations.
    pub fn live_groups(ops: Vec<CrdtOperation>) -> Vec<Vec<CrdtOperation>> {
        if ops.is_empty() {
            return Vec::new();
        }
        chunk_ops(ops)
    }

    /// The LIVE envelope of one group of operations.
    pub fn seal_live(&self, ops: Vec<CrdtOperation>) -> Vec<u8> {
        self.seal(&Message::Live { ops })
    }

    /// DELTA envelopes answering `to`'s hello with `ops` (what it lacks),
    /// computed when this instance had `vector`, in dot order; with
    /// `resume_after` (from the hello's hint, when `vector` still has its
    /// digest), without the operations up to that dot, which the peer
    /// holds. Always at least one chunk, so an empty delta still tells the
    /// peer it is up to date.
    pub fn delta(
        &mut self,
        to: PeerId,
        ops: &[CrdtOperation],
        vector: &VersionVector,
        resume_after: Option<Dot>,
    ) -> Vec<Vec<u8>> {
        let delta = self.next_delta_id();
        let mut ops: Vec<CrdtOperation> = ops
            .iter()
            .filter(|op| resume_after.is_none_or(|after| op.version.dot() > after))
            .cloned()
            .collect();
        sort_by_dot(&mut ops);
        let chunks = chunk_ops(ops);
        let count = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(index, ops)| self.seal_delta_chunk(to, delta, index, count, vector, ops))
            .collect()
    }

    /// A new delta id, for a delta sent chunk by chunk
    /// ([`seal_delta_chunk`](Self::seal_delta_chunk)).
    pub fn next_delta_id(&mut self) -> u32 {
        let delta = self.next_delta;
        self.next_delta = self.next_delta.wrapping_add(1);
        delta
    }

    /// The DELTA envelope of chunk `chunk` of `chunks` of delta `delta` to
    /// `to`: `ops` (in dot order, the chunk's span of dots), bringing the
    /// peer to `vector` once every chunk is applied. A delta sealed chunk
    /// by chunk never holds more than one chunk in memory.
    pub fn seal_delta_chunk(
        &self,
        to: PeerId,
        delta: u32,
        chunk: usize,
        chunks: usize,
        vector: &VersionVector,
        ops: Vec<CrdtOperation>,
    ) -> Vec<u8> {
        self.seal(&Message::Delta {
            to,
            delta,
            chunk: crate::codec::len_u32(chunk),
            chunks: crate::codec::len_u32(chunks),
            vector: vector.clone(),
            ops,
        })
    }

    /// Opens and interprets an envelope from the transport. A replay of an
    /// envelope received before is [`Incoming::Ignore`], before any
    /// decryption.
    pub fn receive(&mut self, envelope: &[u8]) -> Result<Incoming, SyncError> {
        let nonce = nonce_key(envelope);
        if nonce.is_some_and(|nonce| self.seen.contains(&nonce)) {
            self.replayed += 1;
            return Ok(Incoming::Ignore);
        }
        let plaintext = match self.cipher.open(envelope) {
            Ok(plaintext) => plaintext,
            Err(error) => {
                self.rejected += 1;
                return Err(error.into());
            }
        };
        // Only authenticated envelopes are remembered: junk cannot push
        // real nonces out.
        if let Some(nonce) = nonce {
            self.remember(nonce);
        }
        let (from, message) = Message::decode(&plaintext)?;
        if from == self.me {
            return Ok(Incoming::Ignore);
        }
        Ok(match message {
            Message::Hello { vector, resume } => Incoming::Hello {
                from,
                vector,
                asked: false,
                resume: resume
                    .iter()
                    .find(|hint| hint.peer == self.me)
                    .map(|hint| (hint.vector_digest, hint.after)),
            },
            Message::Ask { to, vector } if to == self.me => Incoming::Hello {
                from,
                vector,
                asked: true,
                resume: None,
            },
            Message::Live { ops } => Incoming::Apply {
                from,
                ops,
                complete: None,
                chunk: None,
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
                // Which chunk indices arrived, not how many chunks: a lost
                // chunk and a repeated one must not add up to a whole delta.
                let key = (from, delta);
                if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL_DELTAS {
                    let oldest = self
                        .partial
                        .iter()
                        .min_by_key(|(_, progress)| progress.started)
                        .map(|(key, _)| *key);
                    if let Some(oldest) = oldest {
                        self.partial.remove(&oldest);
                    }
                }
                self.started += 1;
                let started = self.started;
                let digest = vector_digest(&vector);
                let progress = self.partial.entry(key).or_insert_with(|| DeltaProgress {
                    chunks,
                    vector_digest: digest,
                    applied: Default::default(),
                    last_dots: Vec::new(),
                    failed: false,
                    idle_ticks: 0,
                    rehellos: 0,
                    started,
                });
                if progress.chunks != chunks
                    || progress.vector_digest != digest
                    || progress.applied.binary_search(&chunk).is_ok()
                {
                    // A repeat, or a chunk of another delta under this id.
                    return Ok(Incoming::Ignore);
                }
                progress.idle_ticks = 0;
                progress.rehellos = 0;
                if let Some(last) = ops.iter().map(|op| op.version.dot()).max() {
                    match progress.last_dots.binary_search_by_key(&chunk, |(c, _)| *c) {
                        Ok(at) => progress.last_dots[at].1 = last,
                        Err(at) => progress.last_dots.insert(at, (chunk, last)),
                    }
                }
                let complete =
                    !progress.failed && progress.applied.len() as u64 + 1 == u64::from(chunks);
                Incoming::Apply {
                    from,
                    ops,
                    complete: complete.then_some(vector),
                    chunk: Some(ChunkId { delta, chunk }),
                }
            }
            Message::Ack { .. } | Message::Delta { .. } | Message::Ask { .. } => Incoming::Ignore,
        })
    }
}

impl SyncProtocol {
    /// Marks the passing of one watchdog period (the sync engine calls it
    /// every few seconds). Returns true when a delta being received has had
    /// no chunk for [`STALL_TICKS`] periods: a chunk was lost on the way
    /// (the relay only forwards deltas, it does not keep them), and only a
    /// new HELLO (with its resume hints) brings the rest. A delta that
    /// stays silent through [`MAX_REHELLOS`] such hellos (its sender left)
    /// is forgotten at its next stall.
    pub fn tick(&mut self) -> bool {
        let mut stalled = false;
        self.partial.retain(|_, progress| {
            if progress.failed {
                return true;
            }
            progress.idle_ticks += 1;
            if progress.idle_ticks < STALL_TICKS {
                return true;
            }
            progress.idle_ticks = 0;
            if progress.rehellos >= MAX_REHELLOS {
                return false;
            }
            progress.rehellos += 1;
            stalled = true;
            true
        });
        stalled
    }

    /// Reports whether the delta chunk `chunk` from `from` (returned by
    /// [`receive`](Self::receive)) was committed. Only committed chunks count
    /// towards completing their delta; a failed one keeps it incomplete.
    pub fn chunk_applied(&mut self, from: PeerId, chunk: ChunkId, committed: bool) {
        let key = (from, chunk.delta);
        let Some(progress) = self.partial.get_mut(&key) else {
            return;
        };
        if !committed {
            progress.failed = true;
            return;
        }
        if let Err(position) = progress.applied.binary_search(&chunk.chunk) {
            progress.applied.insert(position, chunk.chunk);
        }
        if progress.applied.len() as u64 == u64::from(progress.chunks) {
            // Complete: this and every older delta from the peer are done
            // with (the peer's vector is adopted).
            self.partial.retain(|(peer, _), _| *peer != from);
            self.inherited.retain(|hint| hint.peer != from);
        }
    }
}

/// Splits operations into groups of at most [`CHUNK_BYTES`] encoded bytes
/// (an operation larger than that travels alone). At least one group.
fn chunk_ops(ops: impl IntoIterator<Item = CrdtOperation>) -> Vec<Vec<CrdtOperation>> {
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for op in ops {
        let op_size = op.to_bytes().len();
        if size + op_size > CHUNK_BYTES && !chunks.last().expect("non-empty").is_empty() {
            chunks.push(Vec::new());
            size = 0;
        }
        size += op_size;
        chunks.last_mut().expect("non-empty").push(op);
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
        let Incoming::Hello { from, vector, .. } = pa.receive(&hello).unwrap() else {
            panic!("expected a hello");
        };
        assert_eq!(from, b.actor());
        let ops = a.changes_since(&vector);
        let chunks = pa.delta(from, &ops, &a.version_vector().clone(), None);
        assert!(chunks.len() > 1, "an 800 KB delta is chunked");
        for (index, chunk) in chunks.iter().enumerate() {
            // Own messages and other peers' deltas are ignored by A.
            assert_eq!(pa.receive(chunk).unwrap(), Incoming::Ignore);
            let Incoming::Apply {
                ops,
                complete,
                chunk,
                from,
            } = pb.receive(chunk).unwrap()
            else {
                panic!("expected operations");
            };
            assert_eq!(complete.is_some(), index + 1 == chunks.len());
            pb.chunk_applied(from, chunk.expect("a delta chunk"), true);
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

    /// A delta of at least three chunks from A to B.
    fn three_chunk_delta() -> (SyncProtocol, SyncProtocol, Vec<Vec<u8>>) {
        let identity = SyncIdentity::generate();
        let mut pa = SyncProtocol::new(ActorId::from_bytes([1; 16]), identity.cipher());
        let pb = SyncProtocol::new(ActorId::from_bytes([2; 16]), identity.cipher());
        let mut a = CrdtStore::new(pa.me());
        for i in 0..3 {
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
            None,
        );
        assert_eq!(chunks.len(), 3);
        (pa, pb, chunks)
    }

    /// Feeds `order` of `chunks` to `pb`, committing each (or failing the
    /// ones in `failing`); returns at which step a delta completed.
    fn feed(
        pb: &mut SyncProtocol,
        chunks: &[Vec<u8>],
        order: &[usize],
        failing: &[usize],
    ) -> Vec<usize> {
        let mut completed = Vec::new();
        for (step, index) in order.iter().enumerate() {
            match pb.receive(&chunks[*index]).unwrap() {
                Incoming::Apply {
                    from,
                    complete,
                    chunk,
                    ..
                } => {
                    let committed = !failing.contains(index);
                    if complete.is_some() && committed {
                        completed.push(step);
                    }
                    pb.chunk_applied(from, chunk.unwrap(), committed);
                }
                Incoming::Ignore => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        completed
    }

    #[test]
    fn a_missing_chunk_means_the_vector_is_not_adopted() {
        let (_, mut pb, chunks) = three_chunk_delta();
        assert!(feed(&mut pb, &chunks, &[0, 2], &[]).is_empty());
    }

    #[test]
    fn a_lost_chunk_and_a_repeated_one_do_not_complete_a_delta() {
        // Issue #20, bug 4: chunk 1 dropped, chunk 2 delivered twice.
        let (_, mut pb, chunks) = three_chunk_delta();
        assert!(feed(&mut pb, &chunks, &[0, 2, 2], &[]).is_empty());
        // The missing chunk arriving late completes it, out of order.
        let (_, mut pb, chunks) = three_chunk_delta();
        assert_eq!(feed(&mut pb, &chunks, &[2, 0, 0, 1], &[]), vec![3]);
    }

    #[test]
    fn a_chunk_whose_commit_failed_never_completes_its_delta() {
        // Issue #20, bug 4: a chunk counted although its commit failed.
        let (_, mut pb, chunks) = three_chunk_delta();
        assert!(feed(&mut pb, &chunks, &[0, 1, 2], &[1]).is_empty());
        let (_, mut pb, chunks) = three_chunk_delta();
        assert!(
            feed(&mut pb, &chunks, &[0, 1, 1, 2], &[1]).is_empty(),
            "nor does a repeat of the failed chunk"
        );
    }

    /// A (six keys of 100 KB, each written twice) and an empty B. The
    /// versions A sends have dots 7..=12, so B's vector cannot advance on
    /// its own (1..=6 never arrive) and only a resume hint can tell A what
    /// B holds.
    fn six_keys_written_twice() -> (SyncIdentity, CrdtStore, CrdtStore) {
        let mut a = CrdtStore::new(ActorId::from_bytes([1; 16]));
        for round in 0..2 {
            for i in 0..6 {
                a.put(
                    &format!("k{i}"),
                    Document::from_value(&json!(format!("{round}{}", "y".repeat(100_000))))
                        .unwrap(),
                    1,
                );
            }
        }
        let b = CrdtStore::new(ActorId::from_bytes([2; 16]));
        (SyncIdentity::generate(), a, b)
    }

    #[test]
    fn a_delta_cut_off_resumes_after_the_prefix_the_receiver_holds() {
        // Issue #21: a first sync cut off halfway started over.
        let (identity, a, mut b) = six_keys_written_twice();
        let mut pa = SyncProtocol::new(a.actor(), identity.cipher());
        let mut pb = SyncProtocol::new(b.actor(), identity.cipher());
        let vector = a.version_vector().clone();
        let chunks = pa.delta(
            b.actor(),
            &a.changes_since(b.version_vector()),
            &vector,
            None,
        );
        assert_eq!(chunks.len(), 3);
        // B commits chunks 0 and 1, then the connection drops.
        for chunk in &chunks[..2] {
            let Incoming::Apply {
                from, ops, chunk, ..
            } = pb.receive(chunk).unwrap()
            else {
                panic!("expected operations");
            };
            for op in ops {
                b.apply(op, 2);
            }
            pb.chunk_applied(from, chunk.unwrap(), true);
        }
        assert!(b.version_vector().is_empty(), "nothing contiguous yet");
        assert_eq!(a.changes_since(b.version_vector()).len(), 6);
        // B's next hello names A's delta and the last dot it holds.
        let Incoming::Hello { resume, .. } = pa.receive(&pb.hello(b.version_vector())).unwrap()
        else {
            panic!("expected a hello");
        };
        let (digest, after) = resume.expect("a resume hint for A");
        assert_eq!(digest, vector_digest(&vector));
        let rest = pa.delta(
            b.actor(),
            &a.changes_since(b.version_vector()),
            &vector,
            Some(after),
        );
        assert_eq!(rest.len(), 1, "only the last third is sent again");
        let Incoming::Apply { ops, complete, .. } = pb.receive(&rest[0]).unwrap() else {
            panic!("expected operations");
        };
        assert_eq!(ops.len(), 2);
        b.apply_delta(ops, &complete.expect("the resumed delta completes"), 3);
        assert_eq!(a.state_bytes(), b.state_bytes());
    }

    #[test]
    fn a_late_chunk_of_an_earlier_session_does_not_block_the_resumed_delta() {
        // Found by CI (sync_relay, a_delta_cut_off_halfway_resumes_where_it_stopped):
        // both syncs restart while the relay still forwards chunks of the
        // first delta. Each new session's protocol numbered its deltas from
        // 0 again, so a late chunk of the old delta claimed the id, and the
        // resumed delta (another chunk count) was dropped as "another delta
        // under this id": B stayed behind until its next reconnect.
        let (identity, a, mut b) = six_keys_written_twice();
        let vector = a.version_vector().clone();
        let mut first_a = SyncProtocol::new(a.actor(), identity.cipher());
        let mut first_b = SyncProtocol::new(b.actor(), identity.cipher());
        let old = first_a.delta(
            b.actor(),
            &a.changes_since(b.version_vector()),
            &vector,
            None,
        );
        assert_eq!(old.len(), 3);
        let Incoming::Apply {
            from, ops, chunk, ..
        } = first_b.receive(&old[0]).unwrap()
        else {
            panic!("expected operations");
        };
        for op in ops {
            b.apply(op, 2);
        }
        first_b.chunk_applied(from, chunk.unwrap(), true);
        // Both syncs restart: new protocol instances, B's hints inherited.
        let mut second_a = SyncProtocol::new(a.actor(), identity.cipher());
        let mut second_b = SyncProtocol::new(b.actor(), identity.cipher());
        second_b.inherit_hints(first_b.resume_hints());
        let Incoming::Hello { resume, .. } = second_a
            .receive(&second_b.hello(b.version_vector()))
            .unwrap()
        else {
            panic!("expected a hello");
        };
        let (_, after) = resume.expect("a resume hint for A");
        let rest = second_a.delta(
            b.actor(),
            &a.changes_since(b.version_vector()),
            &vector,
            Some(after),
        );
        assert_eq!(rest.len(), 2, "the last two thirds");
        // The relay still forwards the old delta's last chunk: it arrives
        // first, then the resumed delta.
        let mut completed = None;
        for envelope in std::iter::once(&old[2]).chain(&rest) {
            let Incoming::Apply {
                from,
                ops,
                complete,
                chunk,
            } = second_b.receive(envelope).unwrap()
            else {
                panic!("every chunk is for B and carries operations");
            };
            match complete {
                Some(vector) => {
                    b.apply_delta(ops, &vector, 3);
                    completed = Some(vector);
                }
                None => {
                    for op in ops {
                        b.apply(op, 3);
                    }
                }
            }
            second_b.chunk_applied(from, chunk.unwrap(), true);
        }
        assert_eq!(completed, Some(vector), "the resumed delta completes");
        assert_eq!(a.state_bytes(), b.state_bytes());
    }

    #[test]
    fn a_silent_delta_stalls_after_three_ticks_and_is_forgotten_after_three_hellos() {
        let (_, mut pb, chunks) = three_chunk_delta();
        assert!(!pb.tick(), "nothing being received");
        // Chunk 0 arrives, chunk 1 is lost.
        assert!(feed(&mut pb, &chunks, &[0], &[]).is_empty());
        assert!(!pb.tick());
        assert!(!pb.tick());
        assert!(pb.tick(), "three silent periods: stalled");
        assert!(!pb.tick(), "once per three periods");
        assert!(!pb.tick());
        // A new chunk restarts the count.
        assert!(feed(&mut pb, &chunks, &[2], &[]).is_empty());
        assert!(!pb.tick());
        assert!(!pb.tick());
        assert!(pb.tick());
        assert_eq!(pb.resume_hints().len(), 1, "still resumable");
        // Two more hellos go unanswered; the next stall forgets the delta.
        let hellos = (0..6).filter(|_| pb.tick()).count();
        assert_eq!(hellos, 2);
        assert_eq!(pb.resume_hints().len(), 1);
        assert!(!pb.tick() && !pb.tick() && !pb.tick());
        assert!(pb.resume_hints().is_empty(), "forgotten");
        for _ in 0..6 {
            assert!(!pb.tick(), "a forgotten delta asks no more");
        }
        // A repeated chunk is no progress; a completed delta asks nothing.
        let (_, mut pb, chunks) = three_chunk_delta();
        feed(&mut pb, &chunks, &[0], &[]);
        pb.tick();
        pb.tick();
        feed(&mut pb, &chunks, &[0], &[]);
        assert!(pb.tick(), "a repeat does not reset the count");
        assert_eq!(feed(&mut pb, &chunks, &[1, 2], &[]), vec![1]);
        for _ in 0..6 {
            assert!(!pb.tick());
        }
    }

    #[test]
    fn an_ask_is_a_hello_for_its_addressee_alone() {
        let identity = SyncIdentity::generate();
        let asker = SyncProtocol::new(ActorId::from_bytes([1; 16]), identity.cipher());
        let mut addressee = SyncProtocol::new(ActorId::from_bytes([2; 16]), identity.cipher());
        let mut bystander = SyncProtocol::new(ActorId::from_bytes([3; 16]), identity.cipher());
        let vector: VersionVector = {
            let mut v = VersionVector::new();
            v.raise(asker.me(), 3);
            v
        };
        let ask = asker.ask(addressee.me(), &vector);
        assert_eq!(
            addressee.receive(&ask).unwrap(),
            Incoming::Hello {
                from: asker.me(),
                vector,
                asked: true,
                resume: None,
            }
        );
        assert_eq!(bystander.receive(&ask).unwrap(), Incoming::Ignore);
    }

    #[test]
    fn no_operations_make_no_live_envelope() {
        // Issue #20, bug 8: every connect published an empty LIVE envelope.
        let protocol = SyncProtocol::new(
            ActorId::from_bytes([1; 16]),
            SyncIdentity::generate().cipher(),
        );
        assert!(protocol.live(&[]).is_empty());
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
