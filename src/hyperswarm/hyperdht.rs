//! HyperDHT's peer discovery on top of [`super::dht_rpc`]: LOOKUP,
//! ANNOUNCE and FIND_PEER, compatible with npm `hyperdht` 6.
//!
//! - **Records.** A peer record is `publicKey (32) + relayAddresses`
//!   (compact IPv4 array): the peer's Noise static key and up to three DHT
//!   nodes that can relay a handshake to it.
//! - **LOOKUP** (command 3) walks towards a 32-byte topic; each node answers
//!   with the records it holds for it (`peers` array, then an optional
//!   `bump`) and a token for a later ANNOUNCE.
//! - **ANNOUNCE** (command 4) stores our record at the closest nodes. Its
//!   value is `flags, peer?, refresh?, signature?, bump?`; the signature is
//!   Ed25519 over `NS_ANNOUNCE ‖ BLAKE2b-256(topic ‖ node id ‖ token ‖
//!   record ‖ refresh)`, so a record is bound to the node, the topic and
//!   the token that node handed to our address. `NS_ANNOUNCE` is
//!   `hypercore-crypto`'s `namespace("hyperswarm/dht", [4])`.
//! - **FIND_PEER** (command 2) asks for the record a server announced
//!   under `BLAKE2b-256(publicKey)`.
//!
//! Records from the network are decoded defensively: a malformed one is
//! skipped, never a panic.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blake2::{Blake2b256, Digest as _};
use tokio::sync::mpsc;

use super::blind_relay;
use super::dht_rpc::{
    DhtError, DhtNode, Message, Reader, Request, Response, Writer, PING, PING_NAT,
};
use super::holepunch::{
    error, random_bytes, Firewall, HolepunchHop, HolepunchInfo, HolepunchPayload, RelayInfo,
    SecurePayload, MAX_PAYLOAD_ADDRESSES, PEER_HOLEPUNCH,
};
use super::namespace;
use super::noise::{Handshake, KeyPair, Pattern};
use super::punch::{PunchStart, Puncher, RandomPunches};
use super::secret_stream::SecretStream;
use super::udx::UdxStream;

/// HyperDHT command: relay a Noise handshake to a server.
pub const PEER_HANDSHAKE: u64 = 0;
/// HyperDHT command: the record a server announced for its own key.
pub const FIND_PEER: u64 = 2;
/// HyperDHT command: records announced under a topic.
pub const LOOKUP: u64 = 3;
/// HyperDHT command: store a record under a topic.
pub const ANNOUNCE: u64 = 4;
/// Relays a record lists at most.
pub const MAX_RELAYS: usize = 3;

/// How often announcements are renewed by default: HyperDHT nodes drop a
/// record about 20 minutes after it was stored.
pub const DEFAULT_REANNOUNCE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// `PEER_HANDSHAKE` modes: who sent this hop.
const FROM_CLIENT: u64 = 0;
const FROM_SERVER: u64 = 1;
const FROM_RELAY: u64 = 2;
const REPLY: u64 = 4;

/// The hop-by-hop envelope of `PEER_HANDSHAKE`: flags (1 peer address,
/// 2 relay address), mode, the Noise message, the addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeHop {
    /// Who sent this hop (client, server, relay, reply).
    pub mode: u64,
    /// The Noise IK message.
    pub noise: Vec<u8>,
    /// The other end's address, as the relay saw it.
    pub peer_address: Option<SocketAddrV4>,
    /// A second relay's address.
    pub relay_address: Option<SocketAddrV4>,
}

impl HandshakeHop {
    /// Its compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.uint(
            u64::from(self.peer_address.is_some()) | u64::from(self.relay_address.is_some()) << 1,
        );
        w.uint(self.mode);
        w.buffer(&self.noise);
        for address in [self.peer_address, self.relay_address]
            .into_iter()
            .flatten()
        {
            w.ipv4(address);
        }
        w.bytes
    }

    /// Decodes a hop.
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(bytes);
        let flags = r.uint()?;
        let mode = r.uint()?;
        let noise = r.buffer()?;
        let peer_address = if flags & 1 != 0 {
            Some(r.ipv4()?)
        } else {
            None
        };
        let relay_address = if flags & 2 != 0 {
            Some(r.ipv4()?)
        } else {
            None
        };
        Ok(Self {
            mode,
            noise,
            peer_address,
            relay_address,
        })
    }
}

/// What travels inside the Noise handshake of `PEER_HANDSHAKE`: how to
/// reach the peer and which UDX stream id to talk to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NoisePayload {
    /// Payload version (1).
    pub version: u64,
    /// Error code (0 = none).
    pub error: u64,
    /// Firewall kind (0 unknown, 1 open, 2 consistent, 3 random).
    pub firewall: u64,
    /// A server that must be holepunched: its handle for this handshake
    /// and the relays that reach it.
    pub holepunch: Option<HolepunchInfo>,
    /// IPv4 addresses the peer can be reached at.
    pub addresses4: Vec<SocketAddrV4>,
    /// The peer's UDX stream id, if it offers a stream.
    pub udx_id: Option<u64>,
    /// Whether a secret-stream runs on the UDX stream.
    pub secret_stream: bool,
    /// The blind relay the sender wants to use if holepunching fails, and
    /// the pairing token.
    pub relay_through: Option<RelayThrough>,
}

/// A blind relay both peers can pair through (`relayThrough`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayThrough {
    /// The relay's public key.
    pub public_key: [u8; 32],
    /// The pairing token.
    pub token: [u8; 32],
}

impl NoisePayload {
    /// What this side sends: how it can be reached, and a UDX stream
    /// with a secret-stream on it.
    fn offering_stream(stream_id: u32, reachability: &Reachability) -> Self {
        Self {
            version: 1,
            error: 0,
            firewall: reachability.firewall().code(),
            holepunch: None,
            addresses4: reachability.public.into_iter().collect(),
            udx_id: Some(u64::from(stream_id)),
            secret_stream: true,
            relay_through: None,
        }
    }

    /// Our encoding (no IPv6 or relay-address sections).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let flags = u64::from(self.holepunch.is_some())
            | u64::from(!self.addresses4.is_empty()) << 1
            | u64::from(self.udx_id.is_some()) << 3
            | u64::from(self.secret_stream) << 4
            | u64::from(self.relay_through.is_some()) << 5;
        w.uint(1);
        w.uint(flags);
        w.uint(self.error);
        w.uint(self.firewall);
        if let Some(holepunch) = &self.holepunch {
            holepunch.write(&mut w);
        }
        if !self.addresses4.is_empty() {
            w.ipv4_array(&self.addresses4);
        }
        if let Some(id) = self.udx_id {
            w.uint(1); // version
            w.uint(0); // features
            w.uint(id);
            w.uint(0); // seq
        }
        if self.secret_stream {
            w.uint(1);
        }
        if let Some(relay) = &self.relay_through {
            w.uint(1); // version
            w.uint(0); // flags
            w.bytes.extend_from_slice(&relay.public_key);
            w.bytes.extend_from_slice(&relay.token);
        }
        w.bytes
    }

    /// Decodes a peer's payload, skipping the sections this side does not
    /// use (IPv6 addresses, relay addresses).
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(bytes);
        let version = r.uint()?;
        if version != 1 {
            return Ok(Self {
                version,
                ..Self::default()
            });
        }
        let flags = r.uint()?;
        let mut payload = Self {
            version,
            error: r.uint()?,
            firewall: r.uint()?,
            ..Self::default()
        };
        if flags & 1 != 0 {
            payload.holepunch = Some(HolepunchInfo::read(&mut r)?);
        }
        if flags & 2 != 0 {
            payload.addresses4 = r.ipv4_array()?;
            payload.addresses4.truncate(MAX_PAYLOAD_ADDRESSES);
        }
        if flags & 4 != 0 {
            let count = usize::try_from(r.uint()?).map_err(|_| DhtError::TooLong)?;
            r.take(count.checked_mul(18).ok_or(DhtError::TooLong)?)?;
        }
        if flags & 8 != 0 {
            r.uint()?; // version
            r.uint()?; // features
            payload.udx_id = Some(r.uint()?);
            r.uint()?; // seq
        }
        if flags & 16 != 0 {
            r.uint()?; // version
            payload.secret_stream = true;
        }
        if flags & 32 != 0 {
            r.uint()?; // version
            r.uint()?; // flags
            payload.relay_through = Some(RelayThrough {
                public_key: r.fixed32()?,
                token: r.fixed32()?,
            });
        }
        Ok(payload)
    }
}

/// What a peer announces: its public key and relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's Noise static public key.
    pub public_key: [u8; 32],
    /// DHT nodes that relay handshakes to it.
    pub relay_addresses: Vec<SocketAddrV4>,
}

impl PeerRecord {
    /// Its compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes.extend_from_slice(&self.public_key);
        w.ipv4_array(&self.relay_addresses);
        w.bytes
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DhtError> {
        Ok(Self {
            public_key: r.fixed32()?,
            relay_addresses: r.ipv4_array()?,
        })
    }

    /// Decodes a record (trailing bytes ignored).
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        Self::read(&mut Reader::new(bytes))
    }
}

/// The records in a LOOKUP reply.
pub fn decode_lookup_reply(bytes: &[u8]) -> Result<Vec<PeerRecord>, DhtError> {
    let mut r = Reader::new(bytes);
    let count = usize::try_from(r.uint()?).map_err(|_| DhtError::TooLong)?;
    if count > bytes.len() / 33 {
        return Err(DhtError::Truncated);
    }
    (0..count).map(|_| PeerRecord::read(&mut r)).collect()
}

/// The bytes an announcer signs for one node.
pub fn announce_signable(
    topic: &[u8; 32],
    node_id: &[u8; 32],
    token: &[u8; 32],
    record: &PeerRecord,
    refresh: Option<&[u8; 32]>,
) -> [u8; 64] {
    let mut hasher = Blake2b256::new();
    hasher.update(topic);
    hasher.update(node_id);
    hasher.update(token);
    hasher.update(record.encode());
    if let Some(refresh) = refresh {
        hasher.update(refresh);
    }
    let mut signable = [0u8; 64];
    signable[..32].copy_from_slice(&namespace("hyperswarm/dht", ANNOUNCE as u8));
    signable[32..].copy_from_slice(&hasher.finalize());
    signable
}

/// An ANNOUNCE request's value: a signed record.
pub fn encode_announce(record: &PeerRecord, signature: &[u8; 64]) -> Vec<u8> {
    let mut w = Writer::default();
    w.uint(1 | 4); // peer, signature
    w.bytes.extend_from_slice(&record.encode());
    w.bytes.extend_from_slice(signature);
    w.bytes
}

/// How this node can be reached, decided once per [`HyperDht`] (see
/// [`HyperDht::reachability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reachability {
    /// Reachable unsolicited at `public` (no NAT or firewall in the way).
    pub open: bool,
    /// The address DHT nodes see this node's socket at, when it is open.
    pub public: Option<SocketAddrV4>,
}

impl Reachability {
    /// What the Noise payload says about this node.
    pub fn firewall(&self) -> Firewall {
        if self.open {
            Firewall::Open
        } else {
            Firewall::Unknown
        }
    }
}

/// Handshake answers a server remembers (for retries through the same or
/// another relay); the memory is cleared when full.
const MAX_ANSWERED_HANDSHAKES: usize = 1024;
/// Holepunch sessions a server runs at once; more handshakes that need one
/// are answered without a holepunch offer (the client fails cleanly).
pub const MAX_PUNCH_SESSIONS: usize = 64;
/// Holepunch sessions not yet connected that one client host may hold
/// (and blind-relay pairings under way).
pub const MAX_PUNCH_SESSIONS_PER_HOST: usize = 4;
/// Blind-relay pairings a server runs for its clients at once; a client
/// beyond it gets no relay (its holepunch, if any, still runs).
pub const MAX_RELAY_ATTEMPTS: usize = 64;
/// A holepunch session that has not started punching this long after its
/// handshake is dropped (hyperdht's `HANDSHAKE_INITIAL_TIMEOUT`).
const PUNCH_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a punch may take once both sides punch (random NATs probe for
/// about 35 s).
const PUNCH_TIMEOUT: Duration = Duration::from_secs(45);
/// How often a server pings its relays so its NAT keeps their mappings
/// (hyperdht's announcer pings every 3 s; UDP mappings last 30 s or more).
const RELAY_KEEPALIVE: Duration = Duration::from_secs(10);
/// How long a server still answers a client's rounds after the punch
/// connected (hyperdht's `handshakeClearWait`).
const SESSION_LINGER: Duration = Duration::from_secs(10);
/// Tries of one second for a holepunch round through a relay.
const HOLEPUNCH_ROUND_ATTEMPTS: u32 = 5;
/// How long a client waits for its blind relay to pair it: the server
/// pairs as soon as its side of the holepunch is over.
const CLIENT_RELAY_WAIT: Duration = Duration::from_secs(20);
/// How long a server waits for its blind relay to pair it with a client
/// that may still be punching.
const SERVER_RELAY_WAIT: Duration = Duration::from_secs(60);
/// How long the reachability check waits for `PING_NAT` answers.
const REACHABILITY_WAIT: Duration = Duration::from_millis(1500);
/// Nodes the reachability check asks.
const REACHABILITY_NODES: usize = 5;

/// How this node's connections were made (hyperdht's `stats.punches`;
/// connections to a blind relay itself are not counted).
#[derive(Debug, Default)]
pub struct ConnectStats {
    /// Directly: one side was reachable.
    pub open: AtomicU64,
    /// Holepunched between two consistent NATs.
    pub consistent: AtomicU64,
    /// Holepunched with a random NAT on one side.
    pub random: AtomicU64,
    /// Through a blind relay.
    pub relayed: AtomicU64,
}

impl ConnectStats {
    fn count_punch(&self, local: Firewall, remote: Firewall) {
        let counter = if local >= Firewall::Random || remote >= Firewall::Random {
            &self.random
        } else {
            &self.consistent
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Discovery over a [`DhtNode`], bootstrapped from known nodes. Clones
/// share the node.
#[derive(Debug, Clone)]
pub struct HyperDht {
    node: Arc<DhtNode>,
    bootstrap: Vec<SocketAddrV4>,
    reannounce: Duration,
    firewalled: bool,
    reachability: Arc<tokio::sync::OnceCell<Reachability>>,
    stats: Arc<ConnectStats>,
    random_punches: RandomPunches,
    relay_through: Option<[u8; 32]>,
    holepunching: bool,
}

impl HyperDht {
    /// Binds a node at `address` that bootstraps from `bootstrap`, and
    /// starts checking in the background whether it is reachable (see
    /// [`reachability`](Self::reachability)), so the first connection
    /// does not wait for it.
    pub async fn bind(
        address: SocketAddrV4,
        bootstrap: Vec<SocketAddrV4>,
    ) -> Result<Self, DhtError> {
        let dht = Self {
            node: Arc::new(DhtNode::bind(address).await?),
            bootstrap,
            reannounce: DEFAULT_REANNOUNCE_INTERVAL,
            firewalled: false,
            reachability: Arc::default(),
            stats: Arc::default(),
            random_punches: RandomPunches::default(),
            relay_through: None,
            holepunching: true,
        };
        let background = dht.clone();
        tokio::spawn(async move {
            background.reachability().await;
        });
        Ok(dht)
    }

    /// How this node's connections (as client and as server) were made.
    pub fn stats(&self) -> &ConnectStats {
        &self.stats
    }

    /// How often [`listen`](Self::listen) and [`keep_announced`](Self::keep_announced)
    /// renew their announcements (default [`DEFAULT_REANNOUNCE_INTERVAL`]).
    pub fn with_reannounce_interval(mut self, interval: Duration) -> Self {
        self.reannounce = interval.max(Duration::from_millis(100));
        self
    }

    /// Treats this node as firewalled whatever the reachability check
    /// would say, so connections holepunch even where the peer could be
    /// reached directly (loopback tests of the holepunch path, as
    /// hyperdht's own tests force it).
    pub fn with_holepunching_forced(mut self) -> Self {
        self.firewalled = true;
        self
    }

    /// Names the blind relay (its public key, see
    /// [`super::blind_relay::BlindRelay`]) this node's connections fall
    /// back to when holepunching fails, as a client and as a server (stock
    /// hyperdht's `relayThrough`). A peer that names one is used by both
    /// sides whether or not the other names one too.
    pub fn with_relay_through(mut self, relay: [u8; 32]) -> Self {
        self.relay_through = Some(relay);
        self
    }

    /// Never holepunches: connects directly when a side is reachable,
    /// else through a blind relay if one is agreed. As a client it tells
    /// the server at once that it will not punch (stock hyperdht's
    /// `holepunch: () => false`); as a server it goes straight to the
    /// relay, and still offers a holepunch in its handshake (without a
    /// session behind it, so a client's rounds go unanswered) because a
    /// stock client offered none would dial the server directly instead of
    /// waiting for the relay.
    pub fn without_holepunching(mut self) -> Self {
        self.holepunching = false;
        self
    }

    /// Whether this node is reachable unsolicited, checked once as
    /// `dht-rpc` does: DHT nodes are asked (`PING_NAT`) to answer on a
    /// fresh socket that never sent anything, which no NAT or stateful
    /// firewall lets through, and the node's own socket must be seen at
    /// its local port. Behind a NAT this takes 1.5 s (no answers come).
    pub async fn reachability(&self) -> Reachability {
        if self.firewalled {
            return Reachability::default();
        }
        *self
            .reachability
            .get_or_init(|| check_reachability(&self.node, &self.bootstrap))
            .await
    }

    /// Nodes to ping when sampling a socket's NAT: those this node met,
    /// then the bootstrap nodes.
    fn sampling_candidates(&self) -> Vec<SocketAddrV4> {
        let mut candidates: Vec<SocketAddrV4> = self
            .node
            .closest_known(&random_bytes())
            .into_iter()
            .map(|peer| peer.address)
            .collect();
        for address in &self.bootstrap {
            if !candidates.contains(address) {
                candidates.push(*address);
            }
        }
        candidates
    }

    /// The host punch sockets bind to: the node's own.
    fn bind_host(&self) -> Ipv4Addr {
        match self.node.local_addr() {
            Ok(SocketAddr::V4(address)) => *address.ip(),
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// Announces `key_pair` under `topic` now and then every re-announce
    /// interval, until the returned guard is dropped.
    pub async fn keep_announced(
        &self,
        topic: [u8; 32],
        key_pair: KeyPair,
    ) -> Result<AnnouncementGuard, DhtError> {
        self.keep_announced_with_relays(topic, key_pair, Arc::default())
            .await
    }

    /// As [`keep_announced`](Self::keep_announced), keeping `relays` up
    /// to date with the nodes that stored the record and the address each
    /// saw this node at.
    async fn keep_announced_with_relays(
        &self,
        topic: [u8; 32],
        key_pair: KeyPair,
        relays: Arc<Mutex<Vec<RelayInfo>>>,
    ) -> Result<AnnouncementGuard, DhtError> {
        let first = self.announce_with_relays(topic, &key_pair).await?;
        if let Ok(mut known) = relays.lock() {
            *known = first;
        }
        let dht = self.clone();
        let task = tokio::spawn(async move {
            let mut renew = tokio::time::interval(dht.reannounce);
            renew.tick().await; // the first tick is now: just announced
            loop {
                renew.tick().await;
                match dht.announce_with_relays(topic, &key_pair).await {
                    Ok(stored) => {
                        if let Ok(mut known) = relays.lock() {
                            *known = stored;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "hyperdht: renewing an announcement failed");
                    }
                }
            }
        });
        Ok(AnnouncementGuard { task })
    }

    /// The underlying RPC node.
    pub fn rpc(&self) -> &DhtNode {
        &self.node
    }

    /// Every record announced under `topic` at the nodes closest to it.
    pub async fn lookup(&self, topic: [u8; 32]) -> Result<Vec<PeerRecord>, DhtError> {
        let answers = self
            .node
            .query(topic, &self.bootstrap, false, LOOKUP, None)
            .await?;
        let mut seen = HashSet::new();
        let mut records = Vec::new();
        for (_, response) in answers {
            let Some(value) = response.value else {
                continue;
            };
            let Ok(found) = decode_lookup_reply(&value) else {
                continue;
            };
            for record in found {
                if seen.insert(record.public_key) {
                    records.push(record);
                }
            }
        }
        Ok(records)
    }

    /// Announces `key_pair`'s public key under `topic` at the closest nodes
    /// (each with the token it gave us), listing up to three of them as
    /// relays. Returns how many nodes stored it.
    pub async fn announce(&self, topic: [u8; 32], key_pair: &KeyPair) -> Result<usize, DhtError> {
        Ok(self.announce_with_relays(topic, key_pair).await?.len())
    }

    /// As [`announce`](Self::announce); returns the nodes that stored the
    /// record, each with the address it saw this node at.
    async fn announce_with_relays(
        &self,
        topic: [u8; 32],
        key_pair: &KeyPair,
    ) -> Result<Vec<RelayInfo>, DhtError> {
        let answers = self
            .node
            .query(topic, &self.bootstrap, false, LOOKUP, None)
            .await?;
        let holders: Vec<_> = answers
            .into_iter()
            .filter_map(|(peer, response)| response.token.map(|token| (peer, token, response.to)))
            .collect();
        let record = PeerRecord {
            public_key: key_pair.public_key(),
            relay_addresses: holders
                .iter()
                .take(MAX_RELAYS)
                .map(|(peer, _, _)| peer.address)
                .collect(),
        };
        let requests = holders.iter().map(|(peer, token, seen_at)| {
            let signature =
                key_pair.sign(&announce_signable(&topic, &peer.id, token, &record, None));
            let value = encode_announce(&record, &signature);
            async move {
                let stored = self
                    .node
                    .request(
                        peer.address,
                        false,
                        ANNOUNCE,
                        Some(topic),
                        Some(*token),
                        Some(value),
                    )
                    .await;
                matches!(stored, Ok(response) if response.error == 0).then_some(RelayInfo {
                    relay_address: peer.address,
                    peer_address: *seen_at,
                })
            }
        });
        let stored: Vec<RelayInfo> = futures::future::join_all(requests)
            .await
            .into_iter()
            .flatten()
            .collect();
        if stored.is_empty() {
            return Err(DhtError::NoNodes);
        }
        Ok(stored)
    }

    /// Runs a HyperDHT server for `key_pair`: announces it under
    /// `BLAKE2b-256(publicKey)` (so clients' FIND_PEER finds the relays)
    /// and renews that every re-announce interval, answers relayed
    /// `PEER_HANDSHAKE`s with the IK handshake, holepunches through both
    /// NATs when neither side is reachable (`PEER_HOLEPUNCH`), and yields
    /// each client's secret-stream over a UDX stream. The server stops
    /// when the returned receiver is dropped.
    pub async fn listen(
        &self,
        key_pair: KeyPair,
    ) -> Result<mpsc::Receiver<SecretStream<UdxStream>>, DhtError> {
        let target: [u8; 32] = Blake2b256::digest(key_pair.public_key()).into();
        let reachability = self.reachability().await;
        let mut requests = self.node.serve_requests();
        let relays: Arc<Mutex<Vec<RelayInfo>>> = Arc::default();
        let announced = self
            .keep_announced_with_relays(target, key_pair.clone(), relays.clone())
            .await?;
        let (connections, accepted) = mpsc::channel(16);
        let (punch_requests, mut punch_inbox) = mpsc::channel(64);
        let (sessions_over, mut finished) = mpsc::channel(MAX_PUNCH_SESSIONS);
        let dht = self.clone();
        tokio::spawn(async move {
            let _announced = announced;
            let mut server = Server {
                dht,
                key_pair,
                target,
                reachability,
                relays,
                connections,
                answered: HashMap::new(),
                sessions: (0..MAX_PUNCH_SESSIONS).map(|_| None).collect(),
                punch_requests,
                sessions_over,
                relay_attempts: RelayAttempts::default(),
            };
            let mut keepalive = tokio::time::interval(RELAY_KEEPALIVE);
            keepalive.tick().await;
            loop {
                tokio::select! {
                    request = requests.recv() => {
                        let Some((request, from)) = request else { break };
                        server.on_request(request, from, None).await;
                    }
                    request = punch_inbox.recv() => {
                        let Some((request, from, session)) = request else { break };
                        server.on_request(request, from, Some(session)).await;
                    }
                    over = finished.recv() => {
                        let Some((id, session)) = over else { break };
                        server.end_session(id, &session);
                    }
                    _ = keepalive.tick() => server.ping_relays(),
                    // Nobody takes connections any more: stop serving,
                    // which also lets go of the node.
                    () = server.connections.closed() => break,
                }
            }
        });
        Ok(accepted)
    }

    /// Connects to the HyperDHT server `server_public_key` as `key_pair`:
    /// finds its relays (FIND_PEER), runs the IK handshake through one of
    /// them, then opens the secret-stream over a UDX stream: directly when
    /// either side is reachable, else through a holepunch (both sides
    /// probe each other from fresh sockets until both NATs let the other's
    /// packets in), and if that fails, through the blind relay either side
    /// named ([`with_relay_through`](Self::with_relay_through)).
    pub async fn connect(
        &self,
        key_pair: &KeyPair,
        server_public_key: [u8; 32],
    ) -> Result<SecretStream<UdxStream>, DhtError> {
        Ok(self.open(key_pair, server_public_key, true).await?.0)
    }

    /// As [`connect`](Self::connect) (without a blind relay unless
    /// `may_relay`); also where the stream went when it went directly from
    /// this node's socket.
    async fn open(
        &self,
        key_pair: &KeyPair,
        server_public_key: [u8; 32],
        may_relay: bool,
    ) -> Result<(SecretStream<UdxStream>, Option<SocketAddr>), DhtError> {
        let target: [u8; 32] = Blake2b256::digest(server_public_key).into();
        let reachability = self.reachability().await;
        let (_, relays) = self
            .find_peer_with_holders(&server_public_key)
            .await?
            .ok_or(DhtError::PeerNotFound)?;
        let mut noise = peer_handshake(key_pair.clone(), Some(server_public_key))
            .map_err(|error| fail(&error.to_string()))?;
        let local_stream = random_stream_id();
        let mut ours = NoisePayload::offering_stream(local_stream, &reachability);
        ours.relay_through =
            self.relay_through
                .filter(|_| may_relay)
                .map(|public_key| RelayThrough {
                    public_key,
                    token: random_bytes(),
                });
        let first = noise
            .send(&ours.encode())
            .map_err(|error| fail(&error.to_string()))?;
        let hop = HandshakeHop {
            mode: FROM_CLIENT,
            noise: first,
            peer_address: None,
            relay_address: None,
        }
        .encode();
        let mut last_error = fail("no relay forwarded the handshake");
        for relay in &relays {
            let reply = match self
                .node
                .request(
                    *relay,
                    false,
                    PEER_HANDSHAKE,
                    Some(target),
                    None,
                    Some(hop.clone()),
                )
                .await
            {
                Ok(reply) => reply,
                Err(error) => {
                    last_error = fail(&format!("the handshake through {relay} failed: {error}"));
                    continue;
                }
            };
            let Some(answer) = reply
                .value
                .as_deref()
                .and_then(|value| HandshakeHop::decode(value).ok())
            else {
                last_error = fail("the relay did not forward the handshake");
                continue;
            };
            if answer.mode != REPLY {
                last_error = fail("unexpected PEER_HANDSHAKE reply");
                continue;
            }
            let payload = noise
                .recv(&answer.noise)
                .map_err(|error| fail(&error.to_string()))?;
            let server = NoisePayload::decode(&payload)?;
            if server.version != 1 || server.error != 0 {
                return Err(fail("the server refused the connection"));
            }
            let server_stream = server
                .udx_id
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| fail("the server offered no UDX stream"))?;
            let established = noise
                .established()
                .cloned()
                .ok_or_else(|| fail("handshake unfinished"))?;
            let relayed = answer.peer_address.is_some();
            let server_address = answer.peer_address.unwrap_or(*relay);
            let holepunch = server
                .holepunch
                .clone()
                .filter(|holepunch| !holepunch.relays.is_empty());
            let direct = if Firewall::from_code(server.firewall) == Firewall::Open
                || (relayed && holepunch.is_none())
            {
                // The server is reachable: at the first public address it
                // gave, else where the relay saw it.
                Some(
                    server
                        .addresses4
                        .iter()
                        .copied()
                        .find(|address| is_public(*address.ip()))
                        .unwrap_or(server_address),
                )
            } else if reachability.open {
                // We are reachable: the server opens the stream to us, and
                // ours follows its first packet.
                Some(server_address)
            } else {
                None
            };
            if let Some(address) = direct {
                // (A connection to a blind relay is not one of ours to count.)
                if may_relay {
                    self.stats.open.fetch_add(1, Ordering::Relaxed);
                }
                let address = SocketAddr::V4(address);
                let stream = self
                    .node
                    .udx()
                    .connect(local_stream, server_stream, address)
                    .map_err(|error| DhtError::Io(error.to_string()))?;
                let secret = SecretStream::from_established(stream, true, established)
                    .await
                    .map_err(|error| fail(&error.to_string()))?;
                return Ok((secret, Some(address)));
            }
            // The server's relay if it named one, else ours.
            let relay_through = match (server.relay_through, ours.relay_through) {
                _ if !may_relay => None,
                (Some(theirs), _) => Some((theirs, false)),
                (None, Some(own)) => Some((own, true)),
                (None, None) => None,
            };
            let punched = match holepunch {
                Some(holepunch) => {
                    let punch = ClientPunch {
                        target,
                        relay: *relay,
                        server_address,
                        holepunch,
                        secure: SecurePayload::new(&established.hash),
                        local_stream,
                        server_stream,
                        open: reachability.open,
                    };
                    if self.holepunching {
                        self.holepunch(punch).await
                    } else {
                        // Tell the server at once, so it turns to the relay.
                        let server_relay = punch.holepunch.relays[0];
                        abort_punch(self.node.clone(), &punch, server_relay, 0);
                        Err(fail("holepunching is turned off on this node"))
                    }
                }
                None => Err(fail(
                    "neither side is reachable and the server offered no holepunch",
                )),
            };
            let stream = match (punched, relay_through) {
                (Ok(stream), _) => stream,
                (Err(punch_error), Some((through, is_initiator))) => {
                    tracing::debug!(%punch_error, "hyperdht: holepunch failed, trying the blind relay");
                    let relayed = self
                        .relayed_stream(through, is_initiator, local_stream, CLIENT_RELAY_WAIT)
                        .await
                        .map_err(|relay_error| {
                            let why = match relay_error {
                                DhtError::Relay(why) => why,
                                other => other.to_string(),
                            };
                            DhtError::Relay(format!(
                                "{why} (holepunching failed first: {punch_error})"
                            ))
                        })?;
                    self.stats.relayed.fetch_add(1, Ordering::Relaxed);
                    relayed
                }
                (Err(punch_error), None) => return Err(punch_error),
            };
            let secret = SecretStream::from_established(stream, true, established)
                .await
                .map_err(|error| fail(&error.to_string()))?;
            return Ok((secret, None));
        }
        Err(last_error)
    }

    /// Opens the UDX stream `local_stream` to a peer through the blind
    /// relay `through`: connects to the relay (directly: a relay must be
    /// reachable), pairs under the agreed token, and connects the stream
    /// to the relay's stream for us. The connection to the relay stays
    /// open for as long as the stream runs.
    async fn relayed_stream(
        &self,
        through: RelayThrough,
        is_initiator: bool,
        local_stream: u32,
        wait: Duration,
    ) -> Result<UdxStream, DhtError> {
        let key_pair = KeyPair::generate();
        let (mut connection, address) =
            Box::pin(self.open(&key_pair, through.public_key, false)).await?;
        let address = address.ok_or_else(|| {
            DhtError::Relay(
                "the relay is not reachable directly (it must be on an open address)".into(),
            )
        })?;
        let relay_stream = blind_relay::pair(
            &mut connection,
            key_pair.public_key(),
            is_initiator,
            through.token,
            local_stream,
            wait,
        )
        .await?;
        let guard = blind_relay::keep_open(connection);
        self.node
            .udx()
            .connect_guarded(local_stream, relay_stream, address, Some(Box::new(guard)))
            .map_err(|error| DhtError::Io(error.to_string()))
    }

    /// The client's side of a holepunch (hyperdht's `probeRound` and
    /// `roundPunch`): learn both NATs through the relays, agree to punch,
    /// probe, and open the UDX stream on the socket the first probe from
    /// the server reached.
    async fn holepunch(&self, punch: ClientPunch) -> Result<UdxStream, DhtError> {
        let puncher = Arc::new(
            Puncher::bind(self.bind_host(), punch.open, self.random_punches.clone()).await?,
        );
        // Whatever gets through first wins, even before the rounds end (on
        // a LAN or loopback the first low-TTL probe already arrives).
        let connecting = puncher.connect_on_first_probe(
            true,
            punch.local_stream,
            punch.server_stream,
            PUNCH_START_TIMEOUT + PUNCH_TIMEOUT,
        );
        tokio::pin!(connecting);
        let stream = tokio::select! {
            stream = &mut connecting => stream?,
            rounds = self.punch_rounds(&puncher, &punch) => {
                rounds?;
                tokio::time::timeout(PUNCH_TIMEOUT, connecting)
                    .await
                    .map_err(|_| fail("no holepunch probe arrived in time"))??
            }
        };
        self.stats
            .count_punch(puncher.firewall(), puncher.remote().firewall);
        Ok(stream)
    }

    /// The two rounds of a client's holepunch, up to the start of punching.
    async fn punch_rounds(
        &self,
        puncher: &Arc<Puncher>,
        punch: &ClientPunch,
    ) -> Result<(), DhtError> {
        let candidates = self.sampling_candidates();
        let server_relay = punch
            .holepunch
            .relays
            .iter()
            .find(|relay| relay.relay_address == punch.relay)
            .copied()
            .unwrap_or(punch.holepunch.relays[0]);
        let mut round = 0u64;
        let mut server_address = punch.server_address;
        // Round one: tell the server our NAT (as far as known), learn its
        // NAT and token. A low-TTL probe first opens our NAT towards it.
        puncher.probe(server_address, true).await;
        let sampling = puncher.analyze(&candidates);
        tokio::pin!(sampling);
        let mut sampled = false;
        let (reply, peer_address) = loop {
            let payload = HolepunchPayload {
                firewall: puncher.firewall().code(),
                round,
                addresses: puncher.addresses(),
                remote_address: Some(server_address),
                ..HolepunchPayload::default()
            };
            round += 1;
            let (reply, seen_at, peer_address) = client_round(
                puncher.node(),
                punch,
                server_relay.peer_address,
                server_relay.relay_address,
                &payload,
            )
            .await
            .map_err(|error| fail(&format!("holepunch round {round}: {error}")))?;
            if reply.error != error::NONE {
                return Err(fail(&format!(
                    "the server aborted the holepunch (error {})",
                    reply.error
                )));
            }
            puncher.update_remote(
                Firewall::from_code(reply.firewall),
                reply.addresses.as_deref(),
                reply.punching,
                None,
            );
            puncher.add_sample(seen_at, server_relay.relay_address);
            if Firewall::from_code(reply.firewall) == Firewall::Unknown {
                // Give the server a moment to classify its NAT.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !sampled {
                (&mut sampling).await;
                sampled = true;
            }
            let retry =
                Firewall::from_code(reply.firewall) == Firewall::Unknown || reply.token.is_none();
            if !retry || round >= 2 {
                break (reply, peer_address);
            }
        };
        let remote_firewall = Firewall::from_code(reply.firewall);
        let local_firewall = puncher.firewall();
        tracing::debug!(
            ?local_firewall,
            ?remote_firewall,
            local = ?puncher.addresses(),
            remote = ?reply.addresses,
            "holepunch: first round done"
        );
        if remote_firewall == Firewall::Unknown || local_firewall == Firewall::Unknown {
            abort_punch(puncher.node().clone(), punch, server_relay, round);
            return Err(fail(
                "holepunch probe timed out: a NAT could not be classified",
            ));
        }
        if remote_firewall >= Firewall::Random && local_firewall >= Firewall::Random {
            abort_punch(puncher.node().clone(), punch, server_relay, round);
            return Err(DhtError::DoubleRandomNat);
        }
        let Some(server_token) = reply.token else {
            abort_punch(puncher.node().clone(), punch, server_relay, round);
            return Err(fail("the server sent no holepunch token"));
        };
        // The server may have answered from another socket than the one
        // the handshake relay saw; if we share the relay, probe that one.
        if server_relay.relay_address == punch.relay && server_address != peer_address {
            server_address = peer_address;
            puncher.probe(server_address, true).await;
        }
        // Round two: both commit to punching, with tokens that verify the
        // hosts each side will probe.
        puncher.freeze();
        let our_token = punch.secure.token(*server_address.ip());
        let payload = HolepunchPayload {
            firewall: puncher.firewall().code(),
            round,
            punching: true,
            addresses: puncher.addresses(),
            token: Some(our_token),
            remote_token: Some(server_token),
            ..HolepunchPayload::default()
        };
        let (reply, _, _) =
            client_round(puncher.node(), punch, server_address, punch.relay, &payload)
                .await
                .map_err(|error| fail(&format!("the punching round: {error}")))?;
        if reply.error == error::TRY_LATER {
            return Err(fail(
                "the server is busy punching random NATs; try again later",
            ));
        }
        if reply.error != error::NONE {
            return Err(fail(&format!(
                "the server aborted the holepunch (error {})",
                reply.error
            )));
        }
        let echoed = reply.remote_token == Some(our_token);
        puncher.update_remote(
            Firewall::from_code(reply.firewall),
            reply.addresses.as_deref(),
            reply.punching,
            echoed.then_some(*server_address.ip()),
        );
        if !reply.punching {
            return Err(fail("the server is not holepunching"));
        }
        match puncher.punch(true).await {
            PunchStart::Started => {}
            PunchStart::NotPunchable => {
                return Err(fail("the server's NAT cannot be holepunched from ours"))
            }
            PunchStart::Busy => {
                return Err(fail(
                    "this node is already punching random NATs; try again later",
                ))
            }
        }
        tracing::debug!(remote = ?puncher.remote(), "holepunch: client punching");
        Ok(())
    }

    /// The record a server announced for `public_key`, if a node has it.
    pub async fn find_peer(&self, public_key: &[u8; 32]) -> Result<Option<PeerRecord>, DhtError> {
        Ok(self
            .find_peer_with_holders(public_key)
            .await?
            .map(|(record, _)| record))
    }

    /// The server's record and the nodes that hold it: those nodes relay
    /// handshakes to the server (they keep its route), as do the relays
    /// the record lists.
    async fn find_peer_with_holders(
        &self,
        public_key: &[u8; 32],
    ) -> Result<Option<(PeerRecord, Vec<SocketAddrV4>)>, DhtError> {
        let target: [u8; 32] = Blake2b256::digest(public_key).into();
        let answers = self
            .node
            .query(target, &self.bootstrap, false, FIND_PEER, None)
            .await?;
        let mut found: Option<(PeerRecord, Vec<SocketAddrV4>)> = None;
        for (peer, response) in answers {
            let Some(record) = response
                .value
                .and_then(|value| PeerRecord::decode(&value).ok())
                .filter(|record| record.public_key == *public_key)
            else {
                continue;
            };
            found
                .get_or_insert_with(|| (record, Vec::new()))
                .1
                .push(peer.address);
        }
        if let Some((record, holders)) = &mut found {
            for relay in &record.relay_addresses {
                if !holders.contains(relay) {
                    holders.push(*relay);
                }
            }
        }
        Ok(found)
    }
}

fn fail(why: &str) -> DhtError {
    DhtError::Connect(why.to_owned())
}

/// Whether an address is worth dialling from elsewhere (not private,
/// loopback, link-local or unspecified).
fn is_public(ip: Ipv4Addr) -> bool {
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast())
}

/// The reachability check (see [`HyperDht::reachability`]).
async fn check_reachability(node: &DhtNode, bootstrap: &[SocketAddrV4]) -> Reachability {
    let mut nodes: Vec<SocketAddrV4> = node
        .closest_known(&random_bytes())
        .into_iter()
        .map(|peer| peer.address)
        .collect();
    for address in bootstrap {
        if !nodes.contains(address) {
            nodes.push(*address);
        }
    }
    nodes.truncate(REACHABILITY_NODES);
    let Ok(SocketAddr::V4(local)) = node.local_addr() else {
        return Reachability::default();
    };
    let Ok(fresh) = tokio::net::UdpSocket::bind(SocketAddrV4::new(*local.ip(), 0)).await else {
        return Reachability::default();
    };
    let Ok(fresh_port) = fresh.local_addr().map(|address| address.port()) else {
        return Reachability::default();
    };
    // Ask every node to answer on the fresh socket; meanwhile, learn where
    // they see this node's own socket.
    let tids: Vec<u16> = nodes
        .iter()
        .map(|_| u16::from_le_bytes(random_bytes()))
        .collect();
    for (address, tid) in nodes.iter().zip(&tids) {
        let request = Message::Request(Request {
            tid: *tid,
            to: *address,
            id: None,
            token: None,
            internal: true,
            command: PING_NAT,
            target: None,
            value: Some(fresh_port.to_le_bytes().to_vec()),
        });
        let _ = node.send_message(&request, *address).await;
    }
    let seen_at = futures::future::join_all(
        nodes
            .iter()
            .map(|&address| node.request(address, true, PING, None, None, None)),
    )
    .await;
    let mut answered = HashSet::new();
    let deadline = tokio::time::Instant::now() + REACHABILITY_WAIT;
    let mut buffer = [0u8; 2048];
    while answered.len() < nodes.len() {
        let Ok(Ok((len, SocketAddr::V4(from)))) =
            tokio::time::timeout_at(deadline, fresh.recv_from(&mut buffer)).await
        else {
            break;
        };
        if let Ok(Message::Response(response)) = Message::decode(&buffer[..len]) {
            if nodes.contains(&from) && tids.contains(&response.tid) {
                answered.insert(from);
            }
        }
    }
    let public: Vec<SocketAddrV4> = seen_at
        .into_iter()
        .filter_map(|reply| reply.ok().map(|reply| reply.to))
        .collect();
    let needed = nodes.len().min(3);
    let consistent = public.first().is_some_and(|first| {
        first.port() == local.port() && public.iter().all(|seen| seen == first)
    });
    if needed > 0 && answered.len() >= needed && consistent {
        Reachability {
            open: true,
            public: public.first().copied(),
        }
    } else {
        Reachability::default()
    }
}

/// What a client's holepunch knows from the handshake.
#[derive(Clone)]
struct ClientPunch {
    target: [u8; 32],
    /// The relay the handshake went through.
    relay: SocketAddrV4,
    /// The server's address as that relay saw it.
    server_address: SocketAddrV4,
    holepunch: HolepunchInfo,
    secure: SecurePayload,
    local_stream: u32,
    server_stream: u32,
    open: bool,
}

/// One client holepunch round through `relay` to `peer_address`: the
/// server's payload, the address the relay saw us at, and the server's
/// address as the relay saw it.
async fn client_round(
    node: &DhtNode,
    punch: &ClientPunch,
    peer_address: SocketAddrV4,
    relay: SocketAddrV4,
    payload: &HolepunchPayload,
) -> Result<(HolepunchPayload, SocketAddrV4, SocketAddrV4), DhtError> {
    let hop = HolepunchHop {
        mode: FROM_CLIENT,
        id: punch.holepunch.id,
        payload: punch.secure.seal(payload),
        peer_address: Some(peer_address),
    };
    // The server may classify its NAT before it answers (about two
    // seconds at most): more tries than a plain request.
    let response = node
        .request_with_attempts(
            relay,
            false,
            PEER_HOLEPUNCH,
            Some(punch.target),
            None,
            Some(hop.encode()),
            HOLEPUNCH_ROUND_ATTEMPTS,
        )
        .await?;
    let answer = response
        .value
        .as_deref()
        .and_then(|value| HolepunchHop::decode(value).ok())
        .filter(|answer| answer.mode == REPLY)
        .ok_or_else(|| fail("the relay sent a bad PEER_HOLEPUNCH reply"))?;
    let reply = punch
        .secure
        .open(&answer.payload)
        .ok_or_else(|| fail("the server's holepunch payload does not open"))?;
    Ok((reply, response.to, answer.peer_address.unwrap_or(relay)))
}

/// Starts the secret-stream on a server's stream to a client and hands it
/// to the server's user.
async fn hand_over_stream(
    connections: mpsc::Sender<SecretStream<UdxStream>>,
    stream: UdxStream,
    established: super::noise::Established,
) {
    match SecretStream::from_established(stream, false, established).await {
        Ok(secret) => {
            let _ = connections.send(secret).await;
        }
        Err(error) => tracing::debug!(%error, "a HyperDHT client's stream failed to start"),
    }
}

/// Tells the server this client gives up its holepunch (so it frees the
/// session, and falls back to a blind relay if one was agreed), in the
/// background: the server does not answer an abort, so its retries would
/// only delay the relay.
fn abort_punch(node: Arc<DhtNode>, punch: &ClientPunch, server_relay: RelayInfo, round: u64) {
    let punch = punch.clone();
    tokio::spawn(async move {
        let payload = HolepunchPayload {
            error: error::ABORTED,
            round,
            ..HolepunchPayload::default()
        };
        let _ = client_round(
            &node,
            &punch,
            server_relay.peer_address,
            server_relay.relay_address,
            &payload,
        )
        .await;
    });
}

/// Keeps an announcement renewed until dropped (see
/// [`HyperDht::keep_announced`]).
#[derive(Debug)]
pub struct AnnouncementGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AnnouncementGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One handshake a server holepunches for.
struct PunchSession {
    /// The client's host as the relay saw it.
    client_host: Ipv4Addr,
    secure: SecurePayload,
    puncher: Arc<Puncher>,
    /// The highest round the client sent.
    round: Mutex<u64>,
    /// Replies already sent, by (relay, transaction).
    answered: Mutex<HashMap<(SocketAddrV4, u16), Message>>,
    /// The client sent an aborting round.
    client_gave_up: tokio::sync::Notify,
}

/// A request that reached a punch socket, with the session it belongs to.
type PunchRequest = (Request, SocketAddrV4, usize);

/// The server side of `PEER_HANDSHAKE` and `PEER_HOLEPUNCH`.
struct Server {
    dht: HyperDht,
    key_pair: KeyPair,
    target: [u8; 32],
    reachability: Reachability,
    relays: Arc<Mutex<Vec<RelayInfo>>>,
    connections: mpsc::Sender<SecretStream<UdxStream>>,
    /// Handshakes already answered, by the hash of the client's Noise
    /// message: our Noise answer and the holepunch session, if any.
    answered: HashMap<[u8; 32], (Vec<u8>, Option<usize>)>,
    /// Holepunch sessions by id (the index).
    sessions: Vec<Option<Arc<PunchSession>>>,
    punch_requests: mpsc::Sender<PunchRequest>,
    /// Sessions whose punch is over (connected, failed or expired).
    sessions_over: mpsc::Sender<(usize, Arc<PunchSession>)>,
    /// Blind-relay pairings under way for clients.
    relay_attempts: RelayAttempts,
}

/// Counts a server's blind-relay pairings under way, in all and per client
/// host: each costs a DHT lookup, a connection and up to a minute's wait,
/// and whoever knows the server's key can ask for one (naming any relay).
#[derive(Clone, Default)]
struct RelayAttempts(Arc<Mutex<(usize, HashMap<Ipv4Addr, usize>)>>);

/// One pairing counted by [`RelayAttempts`], until dropped.
struct RelayAttempt {
    attempts: RelayAttempts,
    host: Ipv4Addr,
}

impl RelayAttempts {
    fn try_start(&self, host: Ipv4Addr) -> Option<RelayAttempt> {
        let mut counts = self.0.lock().ok()?;
        let (total, per_host) = &mut *counts;
        let from_host = per_host.entry(host).or_default();
        if *total >= MAX_RELAY_ATTEMPTS || *from_host >= MAX_PUNCH_SESSIONS_PER_HOST {
            return None;
        }
        *total += 1;
        *from_host += 1;
        Some(RelayAttempt {
            attempts: self.clone(),
            host,
        })
    }
}

impl Drop for RelayAttempt {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.attempts.0.lock() {
            let (total, per_host) = &mut *counts;
            *total -= 1;
            if let Some(from_host) = per_host.get_mut(&self.host) {
                *from_host -= 1;
                if *from_host == 0 {
                    per_host.remove(&self.host);
                }
            }
        }
    }
}

impl Server {
    async fn on_request(&mut self, request: Request, from: SocketAddrV4, socket: Option<usize>) {
        if request.target != Some(self.target) {
            return;
        }
        match request.command {
            PEER_HANDSHAKE if socket.is_none() => self.on_peer_handshake(request, from).await,
            PEER_HOLEPUNCH => self.on_peer_holepunch(request, from, socket),
            _ => {}
        }
    }

    /// Pings the relays so the NAT in front of this server keeps the
    /// mappings they reach it through.
    fn ping_relays(&self) {
        let relays: Vec<SocketAddrV4> = self
            .relays
            .lock()
            .map(|relays| relays.iter().map(|relay| relay.relay_address).collect())
            .unwrap_or_default();
        if self.reachability.open || relays.is_empty() {
            return;
        }
        let node = self.dht.node.clone();
        tokio::spawn(async move {
            let pings = relays
                .iter()
                .map(|&relay| node.request(relay, true, PING, None, None, None));
            futures::future::join_all(pings).await;
        });
    }

    async fn on_peer_handshake(&mut self, request: Request, from: SocketAddrV4) {
        let Some(hop) = request
            .value
            .as_deref()
            .and_then(|value| HandshakeHop::decode(value).ok())
        else {
            return;
        };
        // The same Noise message again (a retry, or the client trying
        // several relays at once, as hyperdht does) gets the same answer,
        // not a second handshake and stream.
        let key: [u8; 32] = Blake2b256::digest(&hop.noise).into();
        if let Some((answer, session)) = self.answered.get(&key).cloned() {
            if let Some(reply) = handshake_reply(&request, from, &hop, answer, self.target) {
                let node = match session.and_then(|id| self.sessions[id].clone()) {
                    Some(session) => session.puncher.node().clone(),
                    None => self.dht.node.clone(),
                };
                let _ = node.send_message(&reply, from).await;
            }
            return;
        }
        let client_address = match (hop.mode, hop.peer_address) {
            (FROM_RELAY, Some(address)) => address,
            (FROM_CLIENT, _) => from,
            _ => return,
        };
        let Ok(mut noise) = peer_handshake(self.key_pair.clone(), None) else {
            return;
        };
        let Ok(payload) = noise.recv(&hop.noise) else {
            tracing::debug!(%from, "PEER_HANDSHAKE with a bad Noise message");
            return;
        };
        let Ok(client) = NoisePayload::decode(&payload) else {
            return;
        };
        if client.version != 1 || client.error != 0 {
            return;
        }
        let Some(client_stream) = client.udx_id.and_then(|id| u32::try_from(id).ok()) else {
            return;
        };
        let local_stream = random_stream_id();
        let direct = hop.mode == FROM_CLIENT
            || Firewall::from_code(client.firewall) == Firewall::Open
            || self.reachability.open;
        // Neither side reachable: offer a holepunch from a fresh socket,
        // if a session slot is free.
        let mut ours = NoisePayload::offering_stream(local_stream, &self.reachability);
        // A blind relay for when the holepunch fails: ours if we named
        // one (we pair as its initiator), else the client's.
        let relay_attempt =
            if direct || (self.dht.relay_through.is_none() && client.relay_through.is_none()) {
                None
            } else {
                let attempt = self.relay_attempts.try_start(*client_address.ip());
                if attempt.is_none() {
                    tracing::debug!(%client_address, "too many blind-relay pairings under way");
                }
                attempt
            };
        let relay_through = match (self.dht.relay_through, client.relay_through) {
            _ if relay_attempt.is_none() => None,
            (Some(public_key), _) => Some((
                RelayThrough {
                    public_key,
                    token: random_bytes(),
                },
                true,
            )),
            (None, Some(theirs)) => Some((theirs, false)),
            (None, None) => None,
        };
        if let Some((own, true)) = relay_through {
            ours.relay_through = Some(own);
        }
        let mut session = None;
        if !direct {
            let relays = self
                .relays
                .lock()
                .map(|relays| relays.clone())
                .unwrap_or_default();
            let free = self.sessions.iter().position(Option::is_none);
            // One host cannot take every slot (it still can with many);
            // sessions that connected and only linger do not count.
            let from_host = self
                .sessions
                .iter()
                .flatten()
                .filter(|session| {
                    session.client_host == *client_address.ip() && !session.puncher.is_connected()
                })
                .count();
            if !self.dht.holepunching {
                if relay_through.is_some() && !relays.is_empty() {
                    ours.holepunch = Some(HolepunchInfo {
                        id: MAX_PUNCH_SESSIONS as u64,
                        relays,
                    });
                }
            } else if from_host >= MAX_PUNCH_SESSIONS_PER_HOST {
                tracing::debug!(%client_address, "too many holepunch sessions for one host");
            } else if let (Some(id), false) = (free, relays.is_empty()) {
                match Puncher::bind(self.dht.bind_host(), false, self.dht.random_punches.clone())
                    .await
                {
                    Ok(puncher) => {
                        ours.holepunch = Some(HolepunchInfo {
                            id: id as u64,
                            relays,
                        });
                        session = Some((id, Arc::new(puncher)));
                    }
                    Err(error) => tracing::debug!(%error, "cannot open a holepunch socket"),
                }
            } else {
                tracing::debug!("no holepunch session free: the client cannot connect");
            }
        }
        let Ok(answer) = noise.send(&ours.encode()) else {
            return;
        };
        let Some(established) = noise.established().cloned() else {
            return;
        };
        let Some(reply) = handshake_reply(&request, from, &hop, answer.clone(), self.target) else {
            return;
        };
        if self.answered.len() >= MAX_ANSWERED_HANDSHAKES {
            self.answered.clear();
        }
        self.answered
            .insert(key, (answer, session.as_ref().map(|(id, _)| *id)));
        let Some((id, puncher)) = session else {
            let _ = self.dht.node.send_message(&reply, from).await;
            if let Some((through, is_initiator)) = relay_through {
                // No holepunch to try: straight to the relay.
                let relaying =
                    self.relay_to_client(through, is_initiator, local_stream, relay_attempt);
                let connections = self.connections.clone();
                tokio::spawn(async move {
                    if let Some(stream) = relaying.await {
                        hand_over_stream(connections, stream, established).await;
                    }
                });
                return;
            }
            let Ok(stream) = self.dht.node.udx().connect(
                local_stream,
                client_stream,
                SocketAddr::V4(client_address),
            ) else {
                return;
            };
            self.dht.stats.open.fetch_add(1, Ordering::Relaxed);
            self.hand_over(stream, established);
            return;
        };
        // The reply leaves from the punch socket, so the relay tells the
        // client where that socket is seen.
        let _ = puncher.node().send_message(&reply, from).await;
        let session = Arc::new(PunchSession {
            client_host: *client_address.ip(),
            secure: SecurePayload::new(&established.hash),
            puncher: puncher.clone(),
            round: Mutex::new(0),
            answered: Mutex::default(),
            client_gave_up: tokio::sync::Notify::new(),
        });
        self.sessions[id] = Some(session.clone());
        // Holepunch rounds may also arrive at the punch socket.
        let mut punch_socket_requests = puncher.node().serve_requests();
        let inbox = self.punch_requests.clone();
        let forward = tokio::spawn(async move {
            while let Some((request, from)) = punch_socket_requests.recv().await {
                if inbox.send((request, from, id)).await.is_err() {
                    break;
                }
            }
        });
        let candidates = self.dht.sampling_candidates();
        let sampler = puncher.clone();
        tokio::spawn(async move { sampler.analyze(&candidates).await });
        let connections = self.connections.clone();
        let over = self.sessions_over.clone();
        let stats = self.dht.stats.clone();
        // If the punch fails, the relay (started only then: a client
        // pairs once its own punch failed, and one path per connection
        // keeps both sides on the same one).
        let fallback = relay_through.map(|(through, is_initiator)| {
            self.relay_to_client(through, is_initiator, local_stream, relay_attempt)
        });
        tokio::spawn(async move {
            // The session ends when the first probe connects, when the
            // client never starts punching, or when punching runs out.
            let connecting = puncher.connect_on_first_probe(
                false,
                local_stream,
                client_stream,
                PUNCH_START_TIMEOUT + PUNCH_TIMEOUT,
            );
            let not_started = async {
                tokio::time::sleep(PUNCH_START_TIMEOUT).await;
                if !puncher.is_punching() {
                    return;
                }
                std::future::pending::<()>().await;
            };
            let connected = tokio::select! {
                connected = connecting => connected,
                () = not_started => Err(fail("the client never started punching")),
                () = session.client_gave_up.notified() => Err(fail("the client gave up the holepunch")),
            };
            if connected.is_ok() {
                stats.count_punch(puncher.firewall(), puncher.remote().firewall);
                // Late rounds from the client (it may not have heard our
                // probe yet) are still answered for a while, saying we are
                // connected.
                tokio::spawn(async move {
                    tokio::time::sleep(SESSION_LINGER).await;
                    forward.abort();
                    let _ = over.send((id, session)).await;
                });
            } else {
                forward.abort();
                let _ = over.send((id, session)).await;
            }
            drop(puncher);
            match (connected, fallback) {
                (Ok(stream), _) => hand_over_stream(connections, stream, established).await,
                (Err(error), Some(relaying)) => {
                    tracing::debug!(%error, "holepunch failed: pairing through the blind relay");
                    if let Some(stream) = relaying.await {
                        hand_over_stream(connections, stream, established).await;
                    }
                }
                (Err(error), None) => tracing::debug!(%error, "holepunch failed"),
            }
        });
    }

    /// Pairs with the client through a blind relay (when awaited),
    /// counted by `attempt` until it is over.
    fn relay_to_client(
        &self,
        through: RelayThrough,
        is_initiator: bool,
        local_stream: u32,
        attempt: Option<RelayAttempt>,
    ) -> impl std::future::Future<Output = Option<UdxStream>> + Send + 'static {
        let dht = self.dht.clone();
        async move {
            let _attempt = attempt;
            match dht
                .relayed_stream(through, is_initiator, local_stream, SERVER_RELAY_WAIT)
                .await
            {
                Ok(stream) => {
                    dht.stats.relayed.fetch_add(1, Ordering::Relaxed);
                    Some(stream)
                }
                Err(error) => {
                    tracing::debug!(%error, "the blind relay did not pair us with the client");
                    None
                }
            }
        }
    }

    /// Frees session `id` if it still holds `session`.
    fn end_session(&mut self, id: usize, session: &Arc<PunchSession>) {
        if let Some(slot) = self.sessions.get_mut(id) {
            if slot.as_ref().is_some_and(|held| Arc::ptr_eq(held, session)) {
                *slot = None;
            }
        }
    }

    fn hand_over(&self, stream: UdxStream, established: super::noise::Established) {
        tokio::spawn(hand_over_stream(
            self.connections.clone(),
            stream,
            established,
        ));
    }

    /// A holepunch round relayed from the client.
    fn on_peer_holepunch(&mut self, request: Request, from: SocketAddrV4, socket: Option<usize>) {
        let Some(hop) = request
            .value
            .as_deref()
            .and_then(|value| HolepunchHop::decode(value).ok())
        else {
            return;
        };
        let Ok(id) = usize::try_from(hop.id) else {
            return;
        };
        let Some(session) = self.sessions.get(id).cloned().flatten() else {
            return;
        };
        let (FROM_RELAY, Some(peer_address)) = (hop.mode, hop.peer_address) else {
            return;
        };
        // Only the client of this handshake can seal a round for it.
        let Some(remote) = session.secure.open(&hop.payload) else {
            return;
        };
        if let Some(reply) = session
            .answered
            .lock()
            .ok()
            .and_then(|answered| answered.get(&(from, request.tid)).cloned())
        {
            let node = session.puncher.node().clone();
            tokio::spawn(async move { node.send_message(&reply, from).await });
            return;
        }
        let is_server_relay = self
            .relays
            .lock()
            .map(|relays| relays.iter().any(|relay| relay.relay_address == from))
            .unwrap_or(false);
        if socket == Some(id) {
            session.puncher.add_sample(request.to, from);
        }
        if remote.error != error::NONE {
            // The client gave up.
            session.client_gave_up.notify_one();
            self.end_session(id, &session);
            return;
        }
        let candidates = self.dht.sampling_candidates();
        tokio::spawn(async move {
            let puncher = &session.puncher;
            let token = session.secure.token(*peer_address.ip());
            let echoed = is_server_relay && remote.remote_token == Some(token);
            let latest = session.round.lock().map(|mut round| {
                let latest = remote.round >= *round;
                if latest {
                    *round = remote.round;
                }
                latest
            });
            if latest.unwrap_or(false) {
                puncher.update_remote(
                    Firewall::from_code(remote.firewall),
                    remote.addresses.as_deref(),
                    remote.punching,
                    echoed.then_some(*peer_address.ip()),
                );
            }
            puncher.analyze(&candidates).await;
            let mut payload = HolepunchPayload {
                round: remote.round,
                token: is_server_relay.then_some(token),
                remote_token: remote.token,
                ..HolepunchPayload::default()
            };
            // A NAT that could not be classified ends the punch. Two random
            // NATs are reported as they are: the client then gives up with
            // the clear "double randomized NATs" error (stock hyperdht's
            // server aborts here instead, which its client reports as a
            // bare abort).
            if !remote.punching && puncher.firewall() == Firewall::Unknown {
                payload.error = error::ABORTED;
            } else {
                // Fast open: the client already probed the address we
                // are seen at; answer it right away.
                if puncher.firewall().coerced() == Firewall::Consistent
                    && remote.remote_address.is_some_and(|address| {
                        puncher
                            .addresses()
                            .is_some_and(|ours| ours.contains(&address))
                    })
                {
                    puncher.probe(peer_address, false).await;
                }
                if remote.punching {
                    match puncher.punch(false).await {
                        PunchStart::Started => {}
                        PunchStart::NotPunchable => payload.error = error::ABORTED,
                        // Stock clients wait and retry (through a blind
                        // relay) or give up; ours gives up with a clear error.
                        PunchStart::Busy => payload.error = error::TRY_LATER,
                    }
                }
                if puncher.firewall() != Firewall::Unknown {
                    puncher.freeze();
                }
            }
            tracing::debug!(
                round = remote.round,
                punching = puncher.is_punching(),
                local = ?puncher.firewall(),
                remote = ?puncher.remote(),
                error = payload.error,
                "holepunch: server answers a round"
            );
            if payload.error == error::NONE {
                payload.firewall = puncher.firewall().code();
                payload.connected = puncher.is_connected();
                payload.punching = puncher.is_punching();
                payload.addresses = puncher.addresses();
            } else {
                payload.token = None;
            }
            let reply = Message::Request(Request {
                tid: request.tid,
                to: from,
                id: None,
                token: None,
                internal: false,
                command: PEER_HOLEPUNCH,
                target: request.target,
                value: Some(
                    HolepunchHop {
                        mode: FROM_SERVER,
                        id: 0,
                        payload: session.secure.seal(&payload),
                        peer_address: Some(peer_address),
                    }
                    .encode(),
                ),
            });
            if let Ok(mut answered) = session.answered.lock() {
                if answered.len() < 64 {
                    answered.insert((from, request.tid), reply.clone());
                }
            }
            let _ = puncher.node().send_message(&reply, from).await;
        });
    }
}

/// The envelope of a handshake answer for `request` (from `from`):
/// back through the relay, or straight to a client that asked directly.
fn handshake_reply(
    request: &Request,
    from: SocketAddrV4,
    hop: &HandshakeHop,
    answer: Vec<u8>,
    target: [u8; 32],
) -> Option<Message> {
    match (hop.mode, hop.peer_address) {
        (FROM_RELAY, Some(client_address)) => Some(Message::Request(Request {
            tid: request.tid,
            to: from,
            id: None,
            token: None,
            internal: false,
            command: PEER_HANDSHAKE,
            target: Some(target),
            value: Some(
                HandshakeHop {
                    mode: FROM_SERVER,
                    noise: answer,
                    peer_address: Some(client_address),
                    relay_address: None,
                }
                .encode(),
            ),
        })),
        (FROM_CLIENT, _) => Some(Message::Response(Response {
            tid: request.tid,
            to: from,
            id: None,
            token: None,
            closer_nodes: Vec::new(),
            error: 0,
            value: Some(
                HandshakeHop {
                    mode: REPLY,
                    noise: answer,
                    peer_address: None,
                    relay_address: None,
                }
                .encode(),
            ),
        })),
        _ => None,
    }
}

/// The IK handshake of `PEER_HANDSHAKE` (prologue `NS_PEER_HANDSHAKE`):
/// the client knows the server's key, the server learns the client's.
fn peer_handshake(
    key_pair: KeyPair,
    server_public_key: Option<[u8; 32]>,
) -> Result<Handshake, super::HandshakeError> {
    Handshake::new(
        Pattern::IK,
        server_public_key.is_some(),
        key_pair,
        server_public_key,
        &namespace("hyperswarm/dht", PEER_HANDSHAKE as u8),
    )
}

/// A fresh UDX stream id (31 bits, as `udx-native` allocates small ones).
fn random_stream_id() -> u32 {
    u32::from_le_bytes(random_bytes()) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_pairings_are_capped_per_server_and_per_client_host() {
        let attempts = RelayAttempts::default();
        let host = |n: u8| Ipv4Addr::new(10, 0, 0, n);
        let from_one: Vec<_> = (0..MAX_PUNCH_SESSIONS_PER_HOST)
            .map(|_| attempts.try_start(host(1)).expect("under the per-host cap"))
            .collect();
        assert!(
            attempts.try_start(host(1)).is_none(),
            "a fifth from one host"
        );
        let mut others: Vec<_> = (0..MAX_RELAY_ATTEMPTS - MAX_PUNCH_SESSIONS_PER_HOST)
            .map(|n| {
                attempts
                    .try_start(host(n as u8 + 2))
                    .expect("under the total cap")
            })
            .collect();
        assert!(
            attempts.try_start(host(200)).is_none(),
            "over the total cap"
        );
        // Finished pairings give their places back.
        others.pop();
        assert!(attempts.try_start(host(200)).is_some());
        drop(from_one);
        assert!(attempts.try_start(host(1)).is_some());
    }

    #[test]
    fn records_round_trip_and_lies_are_refused() {
        let record = PeerRecord {
            public_key: [5; 32],
            relay_addresses: vec!["127.0.0.1:49737".parse().unwrap(); 2],
        };
        assert_eq!(PeerRecord::decode(&record.encode()).unwrap(), record);
        let mut reply = vec![2];
        reply.extend_from_slice(&record.encode());
        reply.extend_from_slice(&record.encode());
        reply.push(0); // bump
        assert_eq!(
            decode_lookup_reply(&reply).unwrap(),
            vec![record.clone(), record]
        );
        assert_eq!(decode_lookup_reply(&[200]), Err(DhtError::Truncated));
        assert_eq!(PeerRecord::decode(&[1; 10]), Err(DhtError::Truncated));
    }

    #[test]
    fn the_announce_namespace_matches_hyperdht() {
        // From node: require('hyperdht/lib/constants').NS.ANNOUNCE.toString('hex')
        let hex: String = namespace("hyperswarm/dht", 4)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, NS_ANNOUNCE_HEX);
    }

    const NS_ANNOUNCE_HEX: &str =
        "36386adddf9f6fd60db83a6f42fc159d1146aa8644037664230aaa1f0179d497";

    #[test]
    fn handshake_hops_and_noise_payloads_round_trip() {
        let hop = HandshakeHop {
            mode: FROM_RELAY,
            noise: vec![1, 2, 3],
            peer_address: Some("127.0.0.1:5000".parse().unwrap()),
            relay_address: None,
        };
        assert_eq!(HandshakeHop::decode(&hop.encode()).unwrap(), hop);
        let payload = NoisePayload {
            version: 1,
            error: 0,
            firewall: Firewall::Open.code(),
            holepunch: Some(HolepunchInfo {
                id: 3,
                relays: vec![RelayInfo {
                    relay_address: "9.9.9.9:49737".parse().unwrap(),
                    peer_address: "8.8.8.8:1000".parse().unwrap(),
                }],
            }),
            addresses4: vec!["10.0.0.2:7000".parse().unwrap()],
            udx_id: Some(70_000),
            secret_stream: true,
            relay_through: Some(RelayThrough {
                public_key: [6; 32],
                token: [7; 32],
            }),
        };
        assert_eq!(NoisePayload::decode(&payload.encode()).unwrap(), payload);
        // Stock hyperdht 6.34's encoding of a payload naming a blind relay
        // (with the relay addresses that follow it, which we skip).
        let stock = concat!(
            "017800000100fe70110100000101000606060606060606060606060606060606060606",
            "0606060606060606060606060707070707070707070707070707070707070707070707",
            "070707070707070707010909090949c2",
        );
        let stock: Vec<u8> = (0..stock.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&stock[at..at + 2], 16).unwrap())
            .collect();
        let decoded = NoisePayload::decode(&stock).unwrap();
        assert_eq!(decoded.udx_id, Some(70_000));
        assert!(decoded.secret_stream);
        assert_eq!(decoded.relay_through, payload.relay_through);
        // A future payload version is reported, not misread.
        assert_eq!(NoisePayload::decode(&[2, 0xff]).unwrap().version, 2);
        // A holepunch section claiming two billion relays is refused
        // before anything is read or allocated; a short one is truncated.
        assert_eq!(
            NoisePayload::decode(&[1, 1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0x7f]),
            Err(DhtError::TooLong)
        );
        assert_eq!(
            NoisePayload::decode(&[1, 1, 0, 0, 0, 2, 1, 2, 3]),
            Err(DhtError::Truncated)
        );
    }
}
