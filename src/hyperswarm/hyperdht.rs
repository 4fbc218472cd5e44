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

use std::collections::HashSet;
use std::net::SocketAddrV4;

use blake2::{Blake2b256, Digest as _};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::dht_rpc::{DhtError, DhtNode, Message, Reader, Request, Response, Writer};
use super::namespace;
use super::noise::{Handshake, KeyPair, Pattern};
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
/// Noise payload firewall value: reachable at the address it was seen at.
const FIREWALL_OPEN: u64 = 1;

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
    /// IPv4 addresses the peer can be reached at.
    pub addresses4: Vec<SocketAddrV4>,
    /// The peer's UDX stream id, if it offers a stream.
    pub udx_id: Option<u64>,
    /// Whether a secret-stream runs on the UDX stream.
    pub secret_stream: bool,
}

impl NoisePayload {
    /// What this side sends: reachable where seen, a UDX stream with a
    /// secret-stream on it.
    fn offering_stream(stream_id: u32) -> Self {
        Self {
            version: 1,
            error: 0,
            firewall: FIREWALL_OPEN,
            addresses4: Vec::new(),
            udx_id: Some(u64::from(stream_id)),
            secret_stream: true,
        }
    }

    /// Our encoding (no holepunch, IPv6 or relay-through sections).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let flags = u64::from(!self.addresses4.is_empty()) << 1
            | u64::from(self.udx_id.is_some()) << 3
            | u64::from(self.secret_stream) << 4;
        w.uint(1);
        w.uint(flags);
        w.uint(self.error);
        w.uint(self.firewall);
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
        w.bytes
    }

    /// Decodes a peer's payload, skipping the sections this side does not
    /// use (holepunch relays, IPv6 addresses, relay-through, relays).
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
            r.uint()?; // holepunch id
            let relays = usize::try_from(r.uint()?).map_err(|_| DhtError::TooLong)?;
            r.take(relays.checked_mul(12).ok_or(DhtError::TooLong)?)?;
        }
        if flags & 2 != 0 {
            payload.addresses4 = r.ipv4_array()?;
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
        payload.secret_stream = flags & 16 != 0;
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

/// Discovery over a [`DhtNode`], bootstrapped from known nodes. Clones
/// share the node.
#[derive(Debug, Clone)]
pub struct HyperDht {
    node: Arc<DhtNode>,
    bootstrap: Vec<SocketAddrV4>,
    reannounce: Duration,
}

impl HyperDht {
    /// Binds a node at `address` that bootstraps from `bootstrap`.
    pub async fn bind(
        address: SocketAddrV4,
        bootstrap: Vec<SocketAddrV4>,
    ) -> Result<Self, DhtError> {
        Ok(Self {
            node: Arc::new(DhtNode::bind(address).await?),
            bootstrap,
            reannounce: DEFAULT_REANNOUNCE_INTERVAL,
        })
    }

    /// How often [`listen`](Self::listen) and [`keep_announced`](Self::keep_announced)
    /// renew their announcements (default [`DEFAULT_REANNOUNCE_INTERVAL`]).
    pub fn with_reannounce_interval(mut self, interval: Duration) -> Self {
        self.reannounce = interval.max(Duration::from_millis(100));
        self
    }

    /// Announces `key_pair` under `topic` now and then every re-announce
    /// interval, until the returned guard is dropped.
    pub async fn keep_announced(
        &self,
        topic: [u8; 32],
        key_pair: KeyPair,
    ) -> Result<AnnouncementGuard, DhtError> {
        self.announce(topic, &key_pair).await?;
        let dht = self.clone();
        let task = tokio::spawn(async move {
            let mut renew = tokio::time::interval(dht.reannounce);
            renew.tick().await; // the first tick is now: just announced
            loop {
                renew.tick().await;
                if let Err(error) = dht.announce(topic, &key_pair).await {
                    tracing::debug!(%error, "hyperdht: renewing an announcement failed");
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
        let answers = self
            .node
            .query(topic, &self.bootstrap, false, LOOKUP, None)
            .await?;
        let holders: Vec<_> = answers
            .into_iter()
            .filter_map(|(peer, response)| response.token.map(|token| (peer, token)))
            .collect();
        let record = PeerRecord {
            public_key: key_pair.public_key(),
            relay_addresses: holders
                .iter()
                .take(MAX_RELAYS)
                .map(|(peer, _)| peer.address)
                .collect(),
        };
        let requests = holders.iter().map(|(peer, token)| {
            let signature =
                key_pair.sign(&announce_signable(&topic, &peer.id, token, &record, None));
            let value = encode_announce(&record, &signature);
            self.node.request(
                peer.address,
                false,
                ANNOUNCE,
                Some(topic),
                Some(*token),
                Some(value),
            )
        });
        let stored = futures::future::join_all(requests)
            .await
            .into_iter()
            .filter(|result| matches!(result, Ok(response) if response.error == 0))
            .count();
        if stored == 0 {
            return Err(DhtError::NoNodes);
        }
        Ok(stored)
    }

    /// Runs a HyperDHT server for `key_pair`: announces it under
    /// `BLAKE2b-256(publicKey)` (so clients' FIND_PEER finds the relays)
    /// and renews that every re-announce interval, answers relayed
    /// `PEER_HANDSHAKE`s with the IK handshake, and yields each client's
    /// secret-stream over a UDX stream on this node's socket. The server
    /// stops when the returned receiver is dropped.
    pub async fn listen(
        &self,
        key_pair: KeyPair,
    ) -> Result<mpsc::Receiver<SecretStream<UdxStream>>, DhtError> {
        let target: [u8; 32] = Blake2b256::digest(key_pair.public_key()).into();
        let mut requests = self.node.serve_requests();
        let announced = self.keep_announced(target, key_pair.clone()).await?;
        let (connections, accepted) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _announced = announced;
            let mut server = Server {
                node,
                key_pair,
                target,
                connections,
                answered: HashMap::new(),
            };
            loop {
                let request = tokio::select! {
                    request = requests.recv() => request,
                    // Nobody takes connections any more: stop serving,
                    // which also lets go of the node.
                    () = server.connections.closed() => None,
                };
                let Some((request, from)) = request else {
                    break;
                };
                if request.command == PEER_HANDSHAKE && request.target == Some(target) {
                    server.on_peer_handshake(request, from).await;
                }
            }
        });
        Ok(accepted)
    }

    /// Connects to the HyperDHT server `server_public_key` as `key_pair`:
    /// finds its relays (FIND_PEER), runs the IK handshake through one of
    /// them, and opens the secret-stream over a UDX stream from this
    /// node's socket to the server's.
    pub async fn connect(
        &self,
        key_pair: &KeyPair,
        server_public_key: [u8; 32],
    ) -> Result<SecretStream<UdxStream>, DhtError> {
        let target: [u8; 32] = Blake2b256::digest(server_public_key).into();
        let (_, relays) = self
            .find_peer_with_holders(&server_public_key)
            .await?
            .ok_or(DhtError::PeerNotFound)?;
        let fail = |why: &str| DhtError::Connect(why.to_owned());
        let mut noise = peer_handshake(key_pair.clone(), Some(server_public_key))
            .map_err(|error| fail(&error.to_string()))?;
        let local_stream = random_stream_id();
        let ours = NoisePayload::offering_stream(local_stream);
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
                    last_error = error;
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
            let server_address = answer.peer_address.unwrap_or(*relay);
            let stream = self
                .node
                .udx()
                .connect(local_stream, server_stream, SocketAddr::V4(server_address))
                .map_err(|error| DhtError::Io(error.to_string()))?;
            return SecretStream::from_established(stream, true, established)
                .await
                .map_err(|error| fail(&error.to_string()));
        }
        Err(last_error)
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

/// The server side of `PEER_HANDSHAKE`.
struct Server {
    node: Arc<DhtNode>,
    key_pair: KeyPair,
    target: [u8; 32],
    connections: mpsc::Sender<SecretStream<UdxStream>>,
    /// Replies already sent, by (sender, transaction): a retried request
    /// gets the same answer instead of a second handshake.
    answered: HashMap<(SocketAddrV4, u16), Message>,
}

impl Server {
    async fn on_peer_handshake(&mut self, request: Request, from: SocketAddrV4) {
        if let Some(reply) = self.answered.get(&(from, request.tid)) {
            let _ = self.node.send_message(reply, from).await;
            return;
        }
        let Some(hop) = request
            .value
            .as_deref()
            .and_then(|value| HandshakeHop::decode(value).ok())
        else {
            return;
        };
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
        let ours = NoisePayload::offering_stream(local_stream);
        let Ok(answer) = noise.send(&ours.encode()) else {
            return;
        };
        let Some(established) = noise.established().cloned() else {
            return;
        };
        let reply = if hop.mode == FROM_RELAY {
            // Back through the relay, which answers the client.
            Message::Request(Request {
                tid: request.tid,
                to: from,
                id: None,
                token: None,
                internal: false,
                command: PEER_HANDSHAKE,
                target: Some(self.target),
                value: Some(
                    HandshakeHop {
                        mode: FROM_SERVER,
                        noise: answer,
                        peer_address: Some(client_address),
                        relay_address: None,
                    }
                    .encode(),
                ),
            })
        } else {
            Message::Response(Response {
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
            })
        };
        if self.answered.len() > 1024 {
            self.answered.clear();
        }
        self.answered.insert((from, request.tid), reply.clone());
        let _ = self.node.send_message(&reply, from).await;
        let Ok(stream) =
            self.node
                .udx()
                .connect(local_stream, client_stream, SocketAddr::V4(client_address))
        else {
            return;
        };
        let connections = self.connections.clone();
        tokio::spawn(async move {
            match SecretStream::from_established(stream, false, established).await {
                Ok(secret) => {
                    let _ = connections.send(secret).await;
                }
                Err(error) => tracing::debug!(%error, "a HyperDHT client's stream failed to start"),
            }
        });
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
    let mut bytes = [0u8; 4];
    // The operating system's generator failing is not recoverable.
    getrandom::getrandom(&mut bytes).expect("the OS random number generator failed");
    u32::from_le_bytes(bytes) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

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
            firewall: FIREWALL_OPEN,
            addresses4: vec!["10.0.0.2:7000".parse().unwrap()],
            udx_id: Some(70_000),
            secret_stream: true,
        };
        assert_eq!(NoisePayload::decode(&payload.encode()).unwrap(), payload);
        // A future payload version is reported, not misread.
        assert_eq!(NoisePayload::decode(&[2, 0xff]).unwrap().version, 2);
        // Sections this side skips are length-checked.
        assert_eq!(
            NoisePayload::decode(&[1, 1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0x7f]),
            Err(DhtError::Truncated)
        );
    }
}
