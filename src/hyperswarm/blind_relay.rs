//! Blind relays, wire-compatible with npm `blind-relay` 1.x over
//! `protomux`: when two peers cannot holepunch (both behind randomizing
//! NATs), each connects to a relay both can reach and asks it to join
//! their UDX streams. The relay forwards UDX datagrams between them
//! without reading them: the peers' secret-stream runs end to end.
//!
//! - **Framing** ([`MuxFrame`]): the subset of `protomux` the protocol
//!   needs, one frame per secret-stream message. A frame starts with the
//!   sender's channel id; channel 0 is control: `1` opens a channel
//!   (`local id, protocol, optional id`), `2` rejects one, `3` closes one,
//!   `0` is a batch of frames. On another channel, a message type and its
//!   body follow.
//! - **Protocol** (channel `"blind-relay"`, its id the client's public
//!   key): message `0` [`Pair`] `{flags: isInitiator, token (32 bytes),
//!   stream id, seq}`, message `1` [`Unpair`] `{flags, token}`. Both
//!   peers send `pair` with the same token (one as initiator, as agreed in
//!   their HyperDHT handshake: `relayThrough`) and their own UDX stream
//!   id; once both have, the relay answers each with the id of a stream
//!   it allocated for them. Each peer then connects its UDX stream to that
//!   id at the relay's address, and the relay forwards
//!   ([`super::udx::UdxSocket::relay`]).
//! - **Client** ([`pair`], [`keep_open`]); **server** ([`BlindRelay`]),
//!   which bounds what anyone who connects can hold: channels, pairings
//!   per connection and in all, how long a pairing waits, how long a
//!   connection may hold nothing, how long a link may idle.
//!
//! Decoders never panic and never allocate from a claimed count; the
//! network fuzz target runs them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::dht_rpc::{DhtError, Reader, Writer};
use super::hyperdht::HyperDht;
use super::noise::KeyPair;
use super::secret_stream::SecretStream;
use super::udx::{RelayEnd, RelayLink, UdxSocket, UdxStream};

/// The protomux protocol name.
pub const PROTOCOL: &str = "blind-relay";
/// Message type of [`Pair`].
pub const PAIR: u64 = 0;
/// Message type of [`Unpair`].
pub const UNPAIR: u64 = 1;
/// Frames one batch may hold.
pub const MAX_BATCH_FRAMES: usize = 256;
/// Pairings (waiting or joined) one connection to a relay may hold.
pub const MAX_PAIRINGS_PER_CONNECTION: usize = 16;
/// Pairings waiting for their other peer, over all connections.
pub const MAX_WAITING_PAIRINGS: usize = 4096;
/// Joined pairs a relay forwards for at once.
pub const MAX_LINKS: usize = 4096;
/// Channel opens a connection may make (a client needs one); past it the
/// connection is closed rather than answered again.
pub const MAX_OPENS_PER_CONNECTION: usize = 8;
/// Connections a relay serves at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a pairing waits for its other peer: a peer may first spend a
/// holepunch (up to a minute) before it falls back to the relay.
pub const PAIRING_WAIT: Duration = Duration::from_secs(75);
/// A connection to the relay that holds no pairing this long is closed.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(90);
/// How often the relay drops expired pairings and finished links (so a
/// pairing may wait up to this much longer than [`PAIRING_WAIT`]).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// A joined pair that forwarded nothing this long is dropped.
pub const IDLE_LINK: Duration = Duration::from_secs(5 * 60);
/// How often a peer's connection to its relay sends a keep-alive (the
/// NAT in front of it keeps the mapping the relayed stream also uses).
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// One `protomux` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxFrame {
    /// Opens the sender's channel `local_id` for `protocol` (and `id`);
    /// `handshake` is whatever follows (blind-relay sends none).
    Open {
        /// The sender's channel id (1 or more).
        local_id: u64,
        /// The protocol name.
        protocol: String,
        /// The channel's id within the protocol.
        id: Option<Vec<u8>>,
        /// The open handshake's bytes.
        handshake: Vec<u8>,
    },
    /// Refuses the receiver's channel `remote_id`.
    Reject {
        /// The channel id the receiver opened.
        remote_id: u64,
    },
    /// Closes the sender's channel `local_id`.
    Close {
        /// The sender's channel id.
        local_id: u64,
    },
    /// A message on the sender's channel `channel`.
    Message {
        /// The sender's channel id.
        channel: u64,
        /// The message type within the protocol.
        kind: u64,
        /// The encoded message.
        body: Vec<u8>,
    },
}

impl MuxFrame {
    /// The frame as one secret-stream message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Open {
                local_id,
                protocol,
                id,
                handshake,
            } => {
                w.uint(0);
                w.uint(1);
                w.uint(*local_id);
                w.buffer(protocol.as_bytes());
                w.buffer(id.as_deref().unwrap_or_default());
                w.bytes.extend_from_slice(handshake);
            }
            Self::Reject { remote_id } => {
                w.uint(0);
                w.uint(2);
                w.uint(*remote_id);
            }
            Self::Close { local_id } => {
                w.uint(0);
                w.uint(3);
                w.uint(*local_id);
            }
            Self::Message {
                channel,
                kind,
                body,
            } => {
                w.uint(*channel);
                w.uint(*kind);
                w.bytes.extend_from_slice(body);
            }
        }
        w.bytes
    }

    /// The frames in one secret-stream message: one, or a batch's (an
    /// empty message is a keep-alive and holds none).
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<Self>, DhtError> {
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        let mut r = Reader::new(bytes);
        let channel = r.uint()?;
        let kind = r.uint()?;
        if channel != 0 || kind != 0 {
            return Ok(vec![Self::decode_one(channel, kind, &mut r)?]);
        }
        // A batch: the first channel, then `length, frame` pairs; a zero
        // length switches to the channel that follows.
        let mut frames = Vec::new();
        let mut channel = r.uint()?;
        while r.remaining() > 0 {
            let len = usize::try_from(r.uint()?).map_err(|_| DhtError::TooLong)?;
            if len == 0 {
                channel = r.uint()?;
                continue;
            }
            if frames.len() == MAX_BATCH_FRAMES {
                return Err(DhtError::TooLong);
            }
            let mut inner = Reader::new(r.take(len)?);
            let kind = inner.uint()?;
            frames.push(Self::decode_one(channel, kind, &mut inner)?);
        }
        Ok(frames)
    }

    fn decode_one(channel: u64, kind: u64, r: &mut Reader<'_>) -> Result<Self, DhtError> {
        if channel != 0 {
            return Ok(Self::Message {
                channel,
                kind,
                body: r.take(r.remaining())?.to_vec(),
            });
        }
        match kind {
            1 => {
                let local_id = r.uint()?;
                let protocol = String::from_utf8(r.buffer()?).map_err(|_| DhtError::TooLong)?;
                let id = r.buffer()?;
                Ok(Self::Open {
                    local_id,
                    protocol,
                    id: (!id.is_empty()).then_some(id),
                    handshake: r.take(r.remaining())?.to_vec(),
                })
            }
            2 => Ok(Self::Reject {
                remote_id: r.uint()?,
            }),
            3 => Ok(Self::Close {
                local_id: r.uint()?,
            }),
            // Nested batches and unknown control frames.
            _ => Err(DhtError::UnknownType(kind.min(255) as u8)),
        }
    }
}

/// `compact-encoding-bitfield` of up to 7 bits: one byte (longer forms,
/// led by 0xfd–0xff, are read and their extra bits ignored).
fn read_flags(r: &mut Reader<'_>) -> Result<u8, DhtError> {
    let first = r.u8()?;
    let extra = match first {
        0..=0xfc => return Ok(first),
        0xfd => 2,
        0xfe => 4,
        0xff => 8,
    };
    Ok(r.take(extra)?[0])
}

/// `pair`: join the stream `stream_id` of the sender under `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Which side of the pairing the sender is.
    pub is_initiator: bool,
    /// The token both peers agreed on.
    pub token: [u8; 32],
    /// The sender's UDX stream id (from the relay: the relay's stream).
    pub stream_id: u64,
    /// The stream's first sequence number (0).
    pub seq: u64,
}

impl Pair {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes.push(u8::from(self.is_initiator));
        w.bytes.extend_from_slice(&self.token);
        w.uint(self.stream_id);
        w.uint(self.seq);
        w.bytes
    }

    /// Decodes a body.
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(bytes);
        Ok(Self {
            is_initiator: read_flags(&mut r)? & 1 != 0,
            token: r.fixed32()?,
            stream_id: r.uint()?,
            seq: r.uint()?,
        })
    }
}

/// `unpair`: drop the pairing under `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpair {
    /// The pairing's token.
    pub token: [u8; 32],
}

impl Unpair {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&self.token);
        bytes
    }

    /// Decodes a body.
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(bytes);
        read_flags(&mut r)?;
        Ok(Self {
            token: r.fixed32()?,
        })
    }
}

fn relay_error(why: impl std::fmt::Display) -> DhtError {
    DhtError::Relay(why.to_string())
}

/// Our channel id on a connection to a relay (the only one we open).
const OUR_CHANNEL: u64 = 1;

/// Asks the relay at the other end of `connection` to pair our UDX
/// stream `stream_id` under `token`, and waits up to `wait` for the other
/// peer: returns the relay's stream id to send to. `channel_id` is our
/// public key on the connection (the channel's id, as `blind-relay`'s
/// client uses).
pub async fn pair(
    connection: &mut SecretStream<UdxStream>,
    channel_id: [u8; 32],
    is_initiator: bool,
    token: [u8; 32],
    stream_id: u32,
    wait: Duration,
) -> Result<u32, DhtError> {
    let open = MuxFrame::Open {
        local_id: OUR_CHANNEL,
        protocol: PROTOCOL.to_owned(),
        id: Some(channel_id.to_vec()),
        handshake: Vec::new(),
    };
    let request = MuxFrame::Message {
        channel: OUR_CHANNEL,
        kind: PAIR,
        body: Pair {
            is_initiator,
            token,
            stream_id: u64::from(stream_id),
            seq: 0,
        }
        .encode(),
    };
    for frame in [open, request] {
        connection
            .send(&frame.encode())
            .await
            .map_err(|error| relay_error(format!("the relay connection failed: {error}")))?;
    }
    let answer = async {
        let mut relay_channel = None;
        loop {
            let message = connection
                .recv()
                .await
                .map_err(|error| relay_error(format!("the relay connection failed: {error}")))?
                .ok_or_else(|| relay_error("the relay closed the connection"))?;
            for frame in MuxFrame::decode_all(&message)? {
                match frame {
                    MuxFrame::Open {
                        local_id, protocol, ..
                    } if protocol == PROTOCOL => relay_channel = Some(local_id),
                    MuxFrame::Reject {
                        remote_id: OUR_CHANNEL,
                    } => return Err(relay_error("the peer is not a blind relay")),
                    MuxFrame::Close { local_id } if Some(local_id) == relay_channel => {
                        return Err(relay_error("the relay closed the channel"));
                    }
                    MuxFrame::Message {
                        channel,
                        kind: PAIR,
                        body,
                    } if Some(channel) == relay_channel => {
                        let Ok(reply) = Pair::decode(&body) else {
                            continue;
                        };
                        if reply.token == token && reply.is_initiator == is_initiator {
                            return u32::try_from(reply.stream_id)
                                .map_err(|_| relay_error("the relay sent a bad stream id"));
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(wait, answer)
        .await
        .map_err(|_| relay_error(format!("the other peer did not pair within {wait:?}")))?
}

/// Keeps a paired connection to a relay open (reading what comes, and
/// sending a keep-alive every [`KEEPALIVE`]) until the returned guard is
/// dropped: the relay drops the pairing when the connection closes.
pub fn keep_open(mut connection: SecretStream<UdxStream>) -> RelayConnectionGuard {
    let task = tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            tokio::select! {
                received = connection.recv() => {
                    if !matches!(received, Ok(Some(_))) {
                        return;
                    }
                }
                _ = keepalive.tick() => {
                    if connection.send(&[]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    RelayConnectionGuard { task }
}

/// Holds a connection to a relay open (see [`keep_open`]).
#[derive(Debug)]
pub struct RelayConnectionGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RelayConnectionGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a relay has done (cumulative).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Pairs joined.
    pub paired: AtomicU64,
    /// Requests refused by a limit.
    pub refused: AtomicU64,
}

/// One peer's side of a pairing.
struct Asker {
    /// The connection it asked on.
    connection: u64,
    /// Its UDX stream id.
    stream_id: u32,
    /// Where the answer goes.
    replies: mpsc::Sender<Vec<u8>>,
}

/// A pairing waiting for its other peer.
struct Waiting {
    since: Instant,
    /// By side (`is_initiator` as index).
    sides: [Option<Asker>; 2],
}

/// A joined pair.
struct Joined {
    connections: [u64; 2],
    link: RelayLink,
}

#[derive(Default)]
struct RelayState {
    waiting: HashMap<[u8; 32], Waiting>,
    joined: HashMap<[u8; 32], Joined>,
    connections: usize,
}

impl RelayState {
    fn held_by(&self, connection: u64) -> usize {
        let waiting = self
            .waiting
            .values()
            .filter(|w| {
                w.sides
                    .iter()
                    .flatten()
                    .any(|side| side.connection == connection)
            })
            .count();
        let joined = self
            .joined
            .values()
            .filter(|j| j.connections.contains(&connection))
            .count();
        waiting + joined
    }

    fn expire(&mut self) {
        self.waiting
            .retain(|_, waiting| waiting.since.elapsed() < PAIRING_WAIT);
        self.joined.retain(|_, joined| !joined.link.is_finished());
    }

    /// Drops everything `connection` held.
    fn forget(&mut self, connection: u64) {
        for waiting in self.waiting.values_mut() {
            for side in &mut waiting.sides {
                if side
                    .as_ref()
                    .is_some_and(|side| side.connection == connection)
                {
                    *side = None;
                }
            }
        }
        self.waiting
            .retain(|_, waiting| waiting.sides.iter().any(Option::is_some));
        self.joined
            .retain(|_, joined| !joined.connections.contains(&connection));
    }
}

/// A blind relay on a HyperDHT node: serves `blind-relay` to whoever
/// connects to its key pair, and forwards the pairs' UDX streams on the
/// node's socket. Stops when dropped.
#[derive(Debug)]
pub struct BlindRelay {
    public_key: [u8; 32],
    stats: Arc<RelayStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlindRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlindRelay {
    /// Starts relaying on `dht` as `key_pair` (the node should be
    /// reachable: both peers connect to it directly).
    pub async fn start(dht: &HyperDht, key_pair: KeyPair) -> Result<Self, DhtError> {
        let public_key = key_pair.public_key();
        let mut accepted = dht.listen(key_pair).await?;
        let socket = dht.rpc().udx().clone();
        let stats = Arc::new(RelayStats::default());
        let state = Arc::new(Mutex::new(RelayState::default()));
        let counters = stats.clone();
        let task = tokio::spawn(async move {
            let mut next_connection = 0u64;
            let mut sessions = tokio::task::JoinSet::new();
            // Expired pairings and finished links go in one sweep for the
            // whole relay, not in every connection's or request's work.
            let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = sweep.tick() => {
                        if let Ok(mut state) = state.lock() {
                            state.expire();
                        }
                    }
                    connection = accepted.recv() => {
                        let Some(connection) = connection else { break };
                        counters.connections.fetch_add(1, Ordering::Relaxed);
                        let admitted = state.lock().is_ok_and(|mut state| {
                            let room = state.connections < MAX_CONNECTIONS;
                            state.connections += usize::from(room);
                            room
                        });
                        if !admitted {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        next_connection += 1;
                        let session = Session {
                            id: next_connection,
                            state: state.clone(),
                            socket: socket.clone(),
                            stats: counters.clone(),
                        };
                        sessions.spawn(session.run(connection));
                    }
                    Some(_) = sessions.join_next() => {}
                }
            }
        });
        Ok(Self {
            public_key,
            stats,
            task,
        })
    }

    /// The key peers name in `relayThrough`.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// What the relay has done.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

/// One connection to the relay.
struct Session {
    id: u64,
    state: Arc<Mutex<RelayState>>,
    socket: UdxSocket,
    stats: Arc<RelayStats>,
}

/// Messages queued to one connection (pair answers).
const SESSION_QUEUE: usize = MAX_PAIRINGS_PER_CONNECTION * 2;

impl Session {
    async fn run(self, mut connection: SecretStream<UdxStream>) {
        let (replies, mut outbox) = mpsc::channel(SESSION_QUEUE);
        // The peer's channel id for blind-relay, once it opened one.
        let mut peer_channel = None;
        // Channel opens answered (an open or a reject each).
        let mut opens = 0;
        let mut idle_since = Instant::now();
        let mut check = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                received = connection.recv() => {
                    let Ok(Some(message)) = received else { break };
                    let Ok(frames) = MuxFrame::decode_all(&message) else { break };
                    let mut answers = Vec::new();
                    let keep = frames
                        .into_iter()
                        .all(|frame| self.on_frame(frame, &mut peer_channel, &replies, &mut answers));
                    // A client opens one channel: a connection that keeps
                    // opening more would get an answer for each.
                    opens += answers.len();
                    if opens > MAX_OPENS_PER_CONNECTION {
                        break;
                    }
                    for answer in answers {
                        if connection.send(&answer).await.is_err() {
                            break;
                        }
                    }
                    if !keep {
                        break;
                    }
                }
                Some(reply) = outbox.recv() => {
                    if connection.send(&reply).await.is_err() {
                        break;
                    }
                }
                _ = check.tick() => {
                    let held = self.state.lock().map(|state| state.held_by(self.id)).unwrap_or(0);
                    if held > 0 {
                        idle_since = Instant::now();
                    } else if idle_since.elapsed() >= IDLE_CONNECTION {
                        break;
                    }
                }
            }
        }
        if let Ok(mut state) = self.state.lock() {
            state.forget(self.id);
            state.connections -= 1;
        }
    }

    /// Handles one frame; `false` ends the connection.
    fn on_frame(
        &self,
        frame: MuxFrame,
        peer_channel: &mut Option<u64>,
        replies: &mpsc::Sender<Vec<u8>>,
        answers: &mut Vec<Vec<u8>>,
    ) -> bool {
        match frame {
            MuxFrame::Open {
                local_id,
                protocol,
                id,
                ..
            } => {
                if protocol != PROTOCOL || peer_channel.is_some() || local_id == 0 {
                    answers.push(
                        MuxFrame::Reject {
                            remote_id: local_id,
                        }
                        .encode(),
                    );
                    return true;
                }
                *peer_channel = Some(local_id);
                answers.push(
                    MuxFrame::Open {
                        local_id: OUR_CHANNEL,
                        protocol,
                        id,
                        handshake: Vec::new(),
                    }
                    .encode(),
                );
                true
            }
            MuxFrame::Close { local_id } => Some(local_id) != *peer_channel,
            MuxFrame::Reject { .. } => true,
            MuxFrame::Message {
                channel,
                kind,
                body,
            } if Some(channel) == *peer_channel => match kind {
                PAIR => match Pair::decode(&body) {
                    Ok(pair) => {
                        self.on_pair(pair, replies);
                        true
                    }
                    Err(_) => false,
                },
                UNPAIR => match Unpair::decode(&body) {
                    Ok(unpair) => {
                        self.on_unpair(unpair);
                        true
                    }
                    Err(_) => false,
                },
                _ => true,
            },
            MuxFrame::Message { .. } => true,
        }
    }

    fn on_pair(&self, pair: Pair, replies: &mpsc::Sender<Vec<u8>>) {
        let Ok(stream_id) = u32::try_from(pair.stream_id) else {
            return;
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let side = usize::from(pair.is_initiator);
        let refuse = state.held_by(self.id) >= MAX_PAIRINGS_PER_CONNECTION
            || state.joined.contains_key(&pair.token)
            || (!state.waiting.contains_key(&pair.token)
                && state.waiting.len() >= MAX_WAITING_PAIRINGS);
        if refuse {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let waiting = state.waiting.entry(pair.token).or_insert_with(|| Waiting {
            since: Instant::now(),
            sides: [None, None],
        });
        if waiting.sides[side].is_some() {
            return; // that side already asked (as blind-relay, ignored)
        }
        waiting.sides[side] = Some(Asker {
            connection: self.id,
            stream_id,
            replies: replies.clone(),
        });
        let [Some(_), Some(_)] = &waiting.sides else {
            return;
        };
        let Some(Waiting {
            sides: [Some(responder), Some(initiator)],
            ..
        }) = state.waiting.remove(&pair.token)
        else {
            return;
        };
        if state.joined.len() >= MAX_LINKS {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Two fresh stream ids on the relay's socket, one per peer.
        let link = (0..8).find_map(|_| {
            let ids = [random_id(), random_id()];
            (ids[0] != ids[1])
                .then(|| {
                    self.socket
                        .relay(
                            [
                                RelayEnd {
                                    local_id: ids[0],
                                    remote_id: responder.stream_id,
                                },
                                RelayEnd {
                                    local_id: ids[1],
                                    remote_id: initiator.stream_id,
                                },
                            ],
                            IDLE_LINK,
                        )
                        .ok()
                        .map(|link| (ids, link))
                })
                .flatten()
        });
        let Some((ids, link)) = link else {
            return;
        };
        for (asker, (is_initiator, relay_id)) in [&responder, &initiator]
            .into_iter()
            .zip([(false, ids[0]), (true, ids[1])])
        {
            let answer = MuxFrame::Message {
                channel: OUR_CHANNEL,
                kind: PAIR,
                body: Pair {
                    is_initiator,
                    token: pair.token,
                    stream_id: u64::from(relay_id),
                    seq: 0,
                }
                .encode(),
            };
            let _ = asker.replies.try_send(answer.encode());
        }
        state.joined.insert(
            pair.token,
            Joined {
                connections: [responder.connection, initiator.connection],
                link,
            },
        );
        self.stats.paired.fetch_add(1, Ordering::Relaxed);
    }

    fn on_unpair(&self, unpair: Unpair) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(waiting) = state.waiting.get_mut(&unpair.token) {
            for side in &mut waiting.sides {
                if side.as_ref().is_some_and(|side| side.connection == self.id) {
                    *side = None;
                }
            }
            if waiting.sides.iter().all(Option::is_none) {
                state.waiting.remove(&unpair.token);
            }
        }
        if state
            .joined
            .get(&unpair.token)
            .is_some_and(|joined| joined.connections.contains(&self.id))
        {
            state.joined.remove(&unpair.token);
        }
    }
}

fn random_id() -> u32 {
    u32::from_le_bytes(super::holepunch::random_bytes::<4>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(is_initiator: bool, token: u8, stream_id: u64) -> Pair {
        Pair {
            is_initiator,
            token: [token; 32],
            stream_id,
            seq: 0,
        }
    }

    /// The pair answer in a reply frame.
    fn answer(frame: Vec<u8>) -> Pair {
        match MuxFrame::decode_all(&frame).unwrap().remove(0) {
            MuxFrame::Message {
                channel: OUR_CHANNEL,
                kind: PAIR,
                body,
            } => Pair::decode(&body).unwrap(),
            other => panic!("not a pair answer: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_relay_joins_pairs_once_and_bounds_what_a_connection_holds() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let state = Arc::new(Mutex::new(RelayState::default()));
        let stats = Arc::new(RelayStats::default());
        let session = |id| Session {
            id,
            state: state.clone(),
            socket: socket.clone(),
            stats: stats.clone(),
        };
        let (first, second) = (session(1), session(2));
        let (to_first, mut first_inbox) = mpsc::channel(64);
        let (to_second, mut second_inbox) = mpsc::channel(64);
        first.on_pair(pair(true, 7, 11), &to_first);
        // Asking again for the same side changes nothing.
        first.on_pair(pair(true, 7, 12), &to_first);
        assert!(first_inbox.try_recv().is_err());
        second.on_pair(pair(false, 7, 22), &to_second);
        let (ours, theirs) = (
            answer(first_inbox.try_recv().unwrap()),
            answer(second_inbox.try_recv().unwrap()),
        );
        assert!(ours.is_initiator && !theirs.is_initiator);
        assert_eq!((ours.token, theirs.token), ([7; 32], [7; 32]));
        assert_ne!(ours.stream_id, theirs.stream_id);
        assert_eq!(stats.paired.load(Ordering::Relaxed), 1);
        // A joined token cannot be asked for again.
        second.on_pair(pair(false, 7, 23), &to_second);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        // One connection holds at most MAX_PAIRINGS_PER_CONNECTION.
        for token in 100..120 {
            first.on_pair(pair(true, token, 1), &to_first);
        }
        assert_eq!(
            state.lock().unwrap().held_by(1),
            MAX_PAIRINGS_PER_CONNECTION
        );
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1 + 5);
        // Unpairing frees the joined pair (and only its holder may).
        second.on_unpair(Unpair { token: [100; 32] });
        assert_eq!(state.lock().unwrap().held_by(1), 16);
        first.on_unpair(Unpair { token: [7; 32] });
        assert!(state.lock().unwrap().joined.is_empty());
        // Pairings wait PAIRING_WAIT at most.
        {
            let mut state = state.lock().unwrap();
            let waiting = state.waiting.get_mut(&[100; 32]).unwrap();
            waiting.since = Instant::now() - PAIRING_WAIT - Duration::from_secs(1);
            state.expire();
            assert_eq!(state.held_by(1), 14);
            // A connection that closes leaves nothing behind.
            state.forget(1);
            assert!(state.waiting.is_empty());
        }
    }

    #[tokio::test]
    async fn a_connection_may_open_one_blind_relay_channel_only() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let session = Session {
            id: 1,
            state: Arc::default(),
            socket,
            stats: Arc::default(),
        };
        let (replies, _inbox) = mpsc::channel(4);
        let mut channel = None;
        let mut answers = Vec::new();
        let open = |local_id, protocol: &str| MuxFrame::Open {
            local_id,
            protocol: protocol.into(),
            id: Some(vec![1; 32]),
            handshake: Vec::new(),
        };
        assert!(session.on_frame(open(1, PROTOCOL), &mut channel, &replies, &mut answers));
        assert!(session.on_frame(open(2, PROTOCOL), &mut channel, &replies, &mut answers));
        assert!(session.on_frame(open(3, "other"), &mut channel, &replies, &mut answers));
        let answers: Vec<MuxFrame> = answers
            .iter()
            .flat_map(|answer| MuxFrame::decode_all(answer).unwrap())
            .collect();
        assert_eq!(answers[0], open(OUR_CHANNEL, PROTOCOL));
        assert_eq!(
            answers[1..],
            [
                MuxFrame::Reject { remote_id: 2 },
                MuxFrame::Reject { remote_id: 3 }
            ]
        );
        // A malformed pair ends the connection; closing the channel too.
        let bad = MuxFrame::Message {
            channel: 1,
            kind: PAIR,
            body: vec![1, 2],
        };
        assert!(!session.on_frame(bad, &mut channel, &replies, &mut Vec::new()));
        assert!(!session.on_frame(
            MuxFrame::Close { local_id: 1 },
            &mut channel,
            &replies,
            &mut Vec::new()
        ));
    }

    #[tokio::test]
    async fn random_traffic_from_three_connections_keeps_the_relay_in_bounds() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let state = Arc::new(Mutex::new(RelayState::default()));
        let stats = Arc::new(RelayStats::default());
        let sessions: Vec<Session> = (1..=3)
            .map(|id| Session {
                id,
                state: state.clone(),
                socket: socket.clone(),
                stats: stats.clone(),
            })
            .collect();
        let mut inboxes = Vec::new();
        let mut replies = Vec::new();
        for _ in &sessions {
            let (sender, inbox) = mpsc::channel(SESSION_QUEUE);
            replies.push(sender);
            inboxes.push(inbox);
        }
        let mut channels = [None; 3];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let who = (next() % 3) as usize;
            let token = [(next() % 40) as u8; 32];
            // Mostly on the channel the connection opened, sometimes not.
            let channel = match channels[who] {
                Some(open) if next() % 8 != 0 => open,
                _ => next() % 3,
            };
            let frame = match next() % 64 {
                0 => MuxFrame::Close { local_id: channel },
                1..=4 => MuxFrame::Open {
                    local_id: channel,
                    protocol: if next() % 4 == 0 { "other" } else { PROTOCOL }.into(),
                    id: Some(vec![who as u8; 32]),
                    handshake: Vec::new(),
                },
                5..=8 => MuxFrame::Message {
                    channel,
                    kind: UNPAIR,
                    body: Unpair { token }.encode(),
                },
                9..=12 => MuxFrame::Message {
                    channel,
                    kind: next() % 5,
                    body: (0..next() % 50).map(|_| next() as u8).collect(),
                },
                _ => MuxFrame::Message {
                    channel,
                    kind: PAIR,
                    body: pair(next() % 2 == 0, token[0], next() % 100_000).encode(),
                },
            };
            if !sessions[who].on_frame(frame, &mut channels[who], &replies[who], &mut Vec::new()) {
                // The connection ends: what it held goes.
                state.lock().unwrap().forget(sessions[who].id);
                channels[who] = None;
            }
            for inbox in &mut inboxes {
                while inbox.try_recv().is_ok() {}
            }
            let state = state.lock().unwrap();
            for session in &sessions {
                assert!(state.held_by(session.id) <= MAX_PAIRINGS_PER_CONNECTION);
            }
            assert!(state.waiting.len() <= MAX_WAITING_PAIRINGS);
            assert!(state
                .waiting
                .values()
                .all(|waiting| waiting.sides.iter().any(Option::is_some)));
        }
        assert!(
            stats.paired.load(Ordering::Relaxed) > 0,
            "some pairs joined"
        );
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            MuxFrame::Open {
                local_id: 1,
                protocol: PROTOCOL.into(),
                id: Some(vec![7; 32]),
                handshake: Vec::new(),
            },
            MuxFrame::Reject { remote_id: 3 },
            MuxFrame::Close { local_id: 1 },
            MuxFrame::Message {
                channel: 1,
                kind: PAIR,
                body: Pair {
                    is_initiator: true,
                    token: [9; 32],
                    stream_id: 0xdead_beef,
                    seq: 0,
                }
                .encode(),
            },
        ];
        for frame in frames {
            assert_eq!(MuxFrame::decode_all(&frame.encode()).unwrap(), vec![frame]);
        }
        assert_eq!(MuxFrame::decode_all(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn a_batch_holds_frames_of_several_channels() {
        // protomux's batch: [0, 0, channel, len, frame, ..., 0, channel, ...]
        let pair = Pair {
            is_initiator: false,
            token: [1; 32],
            stream_id: 5,
            seq: 0,
        };
        let mut inner = vec![PAIR as u8];
        inner.extend_from_slice(&pair.encode());
        let mut batch = vec![0, 0, 1, inner.len() as u8];
        batch.extend_from_slice(&inner);
        batch.extend_from_slice(&[0, 2, 2, UNPAIR as u8, 0]);
        let frames = MuxFrame::decode_all(&batch).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[0],
            MuxFrame::Message {
                channel: 1,
                kind: PAIR,
                body: pair.encode()
            }
        );
        assert_eq!(
            frames[1],
            MuxFrame::Message {
                channel: 2,
                kind: UNPAIR,
                body: vec![0]
            }
        );
    }

    #[test]
    fn pair_matches_blind_relay_bytes() {
        // blind-relay 1.6: bitfield(7) flags (one byte), fixed32 token,
        // uint id, uint seq.
        let pair = Pair {
            is_initiator: true,
            token: [0xab; 32],
            stream_id: 300,
            seq: 0,
        };
        let mut expected = vec![1];
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[0xfd, 0x2c, 0x01, 0]);
        assert_eq!(pair.encode(), expected);
        assert_eq!(Pair::decode(&expected).unwrap(), pair);
        assert_eq!(
            Unpair::decode(&Unpair { token: [3; 32] }.encode()).unwrap(),
            Unpair { token: [3; 32] }
        );
        assert!(Pair::decode(&expected[..20]).is_err());
    }
}
