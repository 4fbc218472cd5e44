//! The `dht-rpc` layer of HyperDHT: its UDP message format and the
//! Kademlia queries built on it, compatible with npm `dht-rpc` 6.
//!
//! A message is one datagram. The first byte is `0x03` for a request or
//! `0x13` for a response (type in the high nibble, version 3 in the low).
//! Then, in `compact-encoding`:
//! - request: flags (varint; 1 id, 2 token, 4 internal, 8 target,
//!   16 value), transaction id (`u16` LE), the address it was sent to
//!   (IPv4 + `u16` LE port), `id`? (32), `token`? (32), command (varint),
//!   `target`? (32), `value`? (varint length + bytes);
//! - response: flags (1 id, 2 token, 4 closer nodes, 8 error, 16 value),
//!   transaction id, the requester's address as seen by the responder,
//!   `id`?, `token`?, closer nodes? (varint count × 6-byte IPv4 addresses),
//!   error? (varint), `value`?.
//!
//! A node's id is `BLAKE2b-256` of its 6-byte address, so it cannot be
//! chosen; a node that sends an id which does not match its address is
//! treated as having sent none. Nodes that send no id are *ephemeral*
//! (clients): they are answered but not added to routing tables. This
//! module runs an ephemeral node: it answers PING and FIND_NODE, and its
//! iterative [`DhtNode::find_node`] query (α = 3, k = 20) walks towards a
//! target. Decoders never panic; unknown trailing bytes are ignored.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blake2::{Blake2b256, Digest as _};
use tokio::sync::{mpsc, oneshot};

use super::udx::{stream_id_of, Datagram, UdxSocket, HOLEPUNCH_PROBE};

/// First byte of a request.
pub const REQUEST_ID: u8 = 0x03;
/// First byte of a response.
pub const RESPONSE_ID: u8 = 0x13;
/// Internal command: liveness check.
pub const PING: u64 = 0;
/// Internal command: reachability check of another port.
pub const PING_NAT: u64 = 1;
/// Internal command: the nodes closest to a target.
pub const FIND_NODE: u64 = 2;
/// Internal command: a hint that a node is down.
pub const DOWN_HINT: u64 = 3;
/// Nodes a query keeps (Kademlia's k).
pub const K: usize = 20;
/// Queries in flight at once per lookup (Kademlia's α).
pub const ALPHA: usize = 3;
/// How long a request waits for its response, per attempt.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Attempts per request.
pub const REQUEST_ATTEMPTS: u32 = 3;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The message ended early.
    #[error("dht-rpc message ended early")]
    Truncated,
    /// The first byte is not a known type/version.
    #[error("not a dht-rpc v3 message (first byte {0:#04x})")]
    UnknownType(u8),
    /// A length is impossible for a datagram.
    #[error("dht-rpc field too long")]
    TooLong,
    /// The request timed out after every attempt.
    #[error("dht-rpc request to {0} timed out")]
    Timeout(SocketAddr),
    /// The socket failed.
    #[error("dht-rpc socket: {0}")]
    Io(String),
    /// A query found no node to ask.
    #[error("no DHT node answered (check the bootstrap addresses)")]
    NoNodes,
    /// No node knows the server being connected to.
    #[error("no DHT node knows the peer (it is not listening, or its announcement expired)")]
    PeerNotFound,
    /// Connecting to a peer failed after it was found.
    #[error("connecting to the peer failed: {0}")]
    Connect(String),
    /// Both peers are behind NATs that pick a new port per destination,
    /// which holepunching cannot get through (a blind relay can).
    #[error("connecting to the peer failed: both peers are behind randomizing NATs, which cannot be holepunched")]
    DoubleRandomNat,
    /// Connecting through a blind relay failed.
    #[error("connecting through the blind relay failed: {0}")]
    Relay(String),
}

/// `BLAKE2b-256` of the 6-byte compact address: a node's id.
pub fn node_id(address: SocketAddrV4) -> [u8; 32] {
    let mut compact = [0u8; 6];
    compact[..4].copy_from_slice(&address.ip().octets());
    compact[4..].copy_from_slice(&address.port().to_le_bytes());
    Blake2b256::digest(compact).into()
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Transaction id.
    pub tid: u16,
    /// The address the request was sent to.
    pub to: SocketAddrV4,
    /// The sender's id (non-ephemeral senders).
    pub id: Option<[u8; 32]>,
    /// A token the receiver handed out earlier (for writes).
    pub token: Option<[u8; 32]>,
    /// A `dht-rpc` command (true) or an application's (false).
    pub internal: bool,
    /// The command number.
    pub command: u64,
    /// The key the command is about.
    pub target: Option<[u8; 32]>,
    /// The command's argument.
    pub value: Option<Vec<u8>>,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Transaction id of the request.
    pub tid: u16,
    /// The requester's address as the responder saw it.
    pub to: SocketAddrV4,
    /// The responder's id (non-ephemeral responders).
    pub id: Option<[u8; 32]>,
    /// A token for later writes to this responder.
    pub token: Option<[u8; 32]>,
    /// Nodes closer to the target.
    pub closer_nodes: Vec<SocketAddrV4>,
    /// Error code (0 = none).
    pub error: u64,
    /// The result.
    pub value: Option<Vec<u8>>,
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// `compact-encoding` reader.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DhtError> {
        if self.bytes.len() < n {
            return Err(DhtError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DhtError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DhtError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// `c.uint`: one byte below 0xfd, else a marker and 2, 4 or 8 bytes.
    pub(crate) fn uint(&mut self) -> Result<u64, DhtError> {
        let first = self.u8()?;
        Ok(match first {
            0xfd => u64::from(self.u16()?),
            0xfe => {
                let b = self.take(4)?;
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            0xff => {
                let b = self.take(8)?;
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            small => u64::from(small),
        })
    }

    pub(crate) fn fixed32(&mut self) -> Result<[u8; 32], DhtError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(out)
    }

    pub(crate) fn ipv4(&mut self) -> Result<SocketAddrV4, DhtError> {
        let b = self.take(4)?;
        let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }

    pub(crate) fn buffer(&mut self) -> Result<Vec<u8>, DhtError> {
        let len = usize::try_from(self.uint()?).map_err(|_| DhtError::TooLong)?;
        Ok(self.take(len)?.to_vec())
    }

    pub(crate) fn ipv4_array(&mut self) -> Result<Vec<SocketAddrV4>, DhtError> {
        let count = usize::try_from(self.uint()?).map_err(|_| DhtError::TooLong)?;
        if count > self.bytes.len() / 6 {
            return Err(DhtError::Truncated);
        }
        (0..count).map(|_| self.ipv4()).collect()
    }
}

/// `compact-encoding` writer.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn uint(&mut self, value: u64) {
        match value {
            0..=0xfc => self.bytes.push(value as u8),
            0xfd..=0xffff => {
                self.bytes.push(0xfd);
                self.bytes.extend_from_slice(&(value as u16).to_le_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.bytes.push(0xfe);
                self.bytes.extend_from_slice(&(value as u32).to_le_bytes());
            }
            _ => {
                self.bytes.push(0xff);
                self.bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
    }

    pub(crate) fn ipv4(&mut self, address: SocketAddrV4) {
        self.bytes.extend_from_slice(&address.ip().octets());
        self.bytes.extend_from_slice(&address.port().to_le_bytes());
    }

    /// `c.array(ipv4)`: a count, then 6-byte addresses.
    pub(crate) fn ipv4_array(&mut self, addresses: &[SocketAddrV4]) {
        self.uint(addresses.len() as u64);
        for address in addresses {
            self.ipv4(*address);
        }
    }

    pub(crate) fn buffer(&mut self, value: &[u8]) {
        self.uint(value.len() as u64);
        self.bytes.extend_from_slice(value);
    }
}

impl Message {
    /// Decodes a datagram.
    pub fn decode(datagram: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(datagram);
        let kind = r.u8()?;
        if kind != REQUEST_ID && kind != RESPONSE_ID {
            return Err(DhtError::UnknownType(kind));
        }
        let flags = r.uint()?;
        let tid = r.u16()?;
        let to = r.ipv4()?;
        let id = if flags & 1 != 0 {
            Some(r.fixed32()?)
        } else {
            None
        };
        let token = if flags & 2 != 0 {
            Some(r.fixed32()?)
        } else {
            None
        };
        if kind == REQUEST_ID {
            let internal = flags & 4 != 0;
            let command = r.uint()?;
            let target = if flags & 8 != 0 {
                Some(r.fixed32()?)
            } else {
                None
            };
            let value = if flags & 16 != 0 {
                Some(r.buffer()?)
            } else {
                None
            };
            Ok(Message::Request(Request {
                tid,
                to,
                id,
                token,
                internal,
                command,
                target,
                value,
            }))
        } else {
            let closer_nodes = if flags & 4 != 0 {
                r.ipv4_array()?
            } else {
                Vec::new()
            };
            let error = if flags & 8 != 0 { r.uint()? } else { 0 };
            let value = if flags & 16 != 0 {
                Some(r.buffer()?)
            } else {
                None
            };
            Ok(Message::Response(Response {
                tid,
                to,
                id,
                token,
                closer_nodes,
                error,
                value,
            }))
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Message::Request(request) => {
                w.bytes.push(REQUEST_ID);
                let flags = u64::from(request.id.is_some())
                    | u64::from(request.token.is_some()) << 1
                    | u64::from(request.internal) << 2
                    | u64::from(request.target.is_some()) << 3
                    | u64::from(request.value.is_some()) << 4;
                w.uint(flags);
                w.bytes.extend_from_slice(&request.tid.to_le_bytes());
                w.ipv4(request.to);
                for field in [request.id, request.token].into_iter().flatten() {
                    w.bytes.extend_from_slice(&field);
                }
                w.uint(request.command);
                if let Some(target) = request.target {
                    w.bytes.extend_from_slice(&target);
                }
                if let Some(value) = &request.value {
                    w.buffer(value);
                }
            }
            Message::Response(response) => {
                w.bytes.push(RESPONSE_ID);
                let flags = u64::from(response.id.is_some())
                    | u64::from(response.token.is_some()) << 1
                    | u64::from(!response.closer_nodes.is_empty()) << 2
                    | u64::from(response.error > 0) << 3
                    | u64::from(response.value.is_some()) << 4;
                w.uint(flags);
                w.bytes.extend_from_slice(&response.tid.to_le_bytes());
                w.ipv4(response.to);
                for field in [response.id, response.token].into_iter().flatten() {
                    w.bytes.extend_from_slice(&field);
                }
                if !response.closer_nodes.is_empty() {
                    w.ipv4_array(&response.closer_nodes);
                }
                if response.error > 0 {
                    w.uint(response.error);
                }
                if let Some(value) = &response.value {
                    w.buffer(value);
                }
            }
        }
        w.bytes
    }
}

/// A node met on the network, with the token it gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its address.
    pub address: SocketAddrV4,
    /// Its id (derived from the address and confirmed by the node).
    pub id: [u8; 32],
    /// The token from its last response, for writes (ANNOUNCE).
    pub token: Option<[u8; 32]>,
}

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Response>>>>;
type Table = Arc<Mutex<Vec<Peer>>>;

/// An ephemeral `dht-rpc` node on a UDP socket.
pub struct DhtNode {
    socket: UdxSocket,
    pending: Pending,
    table: Table,
    application: Application,
    probes: Probes,
    next_tid: Mutex<u16>,
    receiver: tokio::task::JoinHandle<()>,
}

/// Where requests for commands other than `dht-rpc`'s own go (HyperDHT's).
type Application = Arc<Mutex<Option<mpsc::Sender<(Request, SocketAddrV4)>>>>;
/// Where holepunch probes (one-byte datagrams) and UDX packets for
/// streams not opened yet go, by sender.
type Probes = Arc<Mutex<Option<mpsc::Sender<(SocketAddrV4, Option<Vec<u8>>)>>>>;

impl Drop for DhtNode {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

impl std::fmt::Debug for DhtNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtNode")
            .field("local_addr", &self.socket.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn xor_distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = a[i] ^ b[i];
    }
    out
}

fn closest(peers: &[Peer], target: &[u8; 32], count: usize) -> Vec<Peer> {
    let mut sorted = peers.to_vec();
    sorted.sort_by_key(|peer| xor_distance(&peer.id, target));
    sorted.truncate(count);
    sorted
}

impl DhtNode {
    /// Binds a node (IPv4; port 0 for any) and starts answering. The
    /// socket also carries UDX streams ([`DhtNode::udx`]), as HyperDHT's
    /// does: peers open their streams to the address they know the node by.
    pub async fn bind(address: SocketAddrV4) -> Result<Self, DhtError> {
        let (socket, incoming) = UdxSocket::bind_shared(SocketAddr::V4(address))
            .await
            .map_err(|error| DhtError::Io(error.to_string()))?;
        let pending = Pending::default();
        let table = Table::default();
        let application = Application::default();
        let probes = Probes::default();
        let receiver = tokio::spawn(receive_loop(
            socket.clone(),
            incoming,
            pending.clone(),
            table.clone(),
            application.clone(),
            probes.clone(),
        ));
        Ok(Self {
            socket,
            pending,
            table,
            application,
            probes,
            next_tid: Mutex::new(1),
            receiver,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The UDX side of the node's socket.
    pub fn udx(&self) -> &UdxSocket {
        &self.socket
    }

    /// From now on, requests for non-internal commands (HyperDHT's) are
    /// delivered here with their sender instead of being ignored.
    pub fn serve_requests(&self) -> mpsc::Receiver<(Request, SocketAddrV4)> {
        let (sender, receiver) = mpsc::channel(256);
        if let Ok(mut application) = self.application.lock() {
            *application = Some(sender);
        }
        receiver
    }

    /// From now on, holepunch probes that reach this socket are delivered
    /// here by sender, as are UDX packets for streams not opened here yet
    /// (with the packet). A full queue drops them, as probes and UDX
    /// packets are sent again.
    pub fn holepunch_probes(&self) -> mpsc::Receiver<(SocketAddrV4, Option<Vec<u8>>)> {
        let (sender, receiver) = mpsc::channel(64);
        if let Ok(mut probes) = self.probes.lock() {
            *probes = Some(sender);
        }
        receiver
    }

    /// Sends one message as is (a reply, or a relayed request).
    pub async fn send_message(&self, message: &Message, to: SocketAddrV4) -> Result<(), DhtError> {
        self.socket
            .send_to(&message.encode(), SocketAddr::V4(to))
            .await
            .map(drop)
            .map_err(|error| DhtError::Io(error.to_string()))
    }

    /// Nodes known so far, closest to `target` first.
    pub fn closest_known(&self, target: &[u8; 32]) -> Vec<Peer> {
        let table = self
            .table
            .lock()
            .map(|table| table.clone())
            .unwrap_or_default();
        closest(&table, target, K)
    }

    /// Sends one request and waits for its response, retrying on timeout.
    /// A response carrying an error code is still a response (its closer
    /// nodes stay useful); check [`Response::error`].
    pub async fn request(
        &self,
        to: SocketAddrV4,
        internal: bool,
        command: u64,
        target: Option<[u8; 32]>,
        token: Option<[u8; 32]>,
        value: Option<Vec<u8>>,
    ) -> Result<Response, DhtError> {
        self.request_with_attempts(
            to,
            internal,
            command,
            target,
            token,
            value,
            REQUEST_ATTEMPTS,
        )
        .await
    }

    /// [`request`](Self::request) with `attempts` tries of
    /// [`REQUEST_TIMEOUT`] each (at least one).
    #[allow(clippy::too_many_arguments)]
    pub async fn request_with_attempts(
        &self,
        to: SocketAddrV4,
        internal: bool,
        command: u64,
        target: Option<[u8; 32]>,
        token: Option<[u8; 32]>,
        value: Option<Vec<u8>>,
        attempts: u32,
    ) -> Result<Response, DhtError> {
        let tid = {
            let mut next = self
                .next_tid
                .lock()
                .map_err(|_| DhtError::Io("poisoned".into()))?;
            *next = next.wrapping_add(1);
            *next
        };
        let datagram = Message::Request(Request {
            tid,
            to,
            id: None,
            token,
            internal,
            command,
            target,
            value,
        })
        .encode();
        let (sender, mut receiver) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(tid, sender);
        }
        let mut result = Err(DhtError::Timeout(SocketAddr::V4(to)));
        for _ in 0..attempts.max(1) {
            self.socket
                .send_to(&datagram, SocketAddr::V4(to))
                .await
                .map_err(|error| DhtError::Io(error.to_string()))?;
            match tokio::time::timeout(REQUEST_TIMEOUT, &mut receiver).await {
                Ok(Ok(response)) => {
                    result = Ok(response);
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&tid);
        }
        let response = result?;
        if let Some(id) = response.id {
            if id == node_id(to) {
                self.remember(Peer {
                    address: to,
                    id,
                    token: response.token,
                });
            }
        }
        Ok(response)
    }

    fn remember(&self, peer: Peer) {
        if let Ok(mut table) = self.table.lock() {
            match table.iter_mut().find(|known| known.address == peer.address) {
                Some(known) => *known = peer,
                None => table.push(peer),
            }
        }
    }

    /// Iterative Kademlia lookup: asks the closest known nodes (starting
    /// from `bootstrap` and the routing table) for nodes closer to
    /// `target` until no closer ones appear; returns the `K` closest that
    /// answered, each with its token. `command`/`value` let a caller run
    /// its own query along the way (HyperDHT's LOOKUP); FIND_NODE by default.
    pub async fn find_node(
        &self,
        target: [u8; 32],
        bootstrap: &[SocketAddrV4],
    ) -> Result<Vec<(Peer, Response)>, DhtError> {
        self.query(target, bootstrap, true, FIND_NODE, None).await
    }

    /// A query towards `target` that sends `command` to every node on the
    /// way and returns the answers of the closest nodes.
    pub async fn query(
        &self,
        target: [u8; 32],
        bootstrap: &[SocketAddrV4],
        internal: bool,
        command: u64,
        value: Option<Vec<u8>>,
    ) -> Result<Vec<(Peer, Response)>, DhtError> {
        let mut candidates: Vec<SocketAddrV4> = bootstrap.to_vec();
        candidates.extend(
            self.closest_known(&target)
                .into_iter()
                .map(|peer| peer.address),
        );
        let mut asked: HashSet<SocketAddrV4> = HashSet::new();
        let mut answered: Vec<(Peer, Response)> = Vec::new();
        loop {
            candidates.retain(|address| !asked.contains(address));
            candidates.sort_by_key(|address| xor_distance(&node_id(*address), &target));
            candidates.dedup();
            // Stop once the k closest answers are closer than every candidate.
            if answered.len() >= K {
                let worst = xor_distance(&answered[K - 1].0.id, &target);
                candidates.retain(|address| xor_distance(&node_id(*address), &target) < worst);
            }
            let batch: Vec<SocketAddrV4> = candidates.iter().take(ALPHA).copied().collect();
            if batch.is_empty() {
                break;
            }
            asked.extend(batch.iter().copied());
            let requests = batch.iter().map(|&address| {
                let value = value.clone();
                async move {
                    (
                        address,
                        self.request(address, internal, command, Some(target), None, value)
                            .await,
                    )
                }
            });
            for (address, result) in futures::future::join_all(requests).await {
                let Ok(response) = result else { continue };
                candidates.extend(response.closer_nodes.iter().copied());
                // Only nodes that proved their id and served the command
                // count as answers.
                if response.id == Some(node_id(address)) && response.error == 0 {
                    let peer = Peer {
                        address,
                        id: node_id(address),
                        token: response.token,
                    };
                    answered.push((peer, response));
                }
            }
            answered.sort_by_key(|(peer, _)| xor_distance(&peer.id, &target));
            answered.truncate(K);
        }
        if answered.is_empty() {
            return Err(DhtError::NoNodes);
        }
        Ok(answered)
    }
}

async fn receive_loop(
    socket: UdxSocket,
    mut incoming: mpsc::Receiver<Datagram>,
    pending: Pending,
    table: Table,
    application: Application,
    probes: Probes,
) {
    while let Some((datagram, from)) = incoming.recv().await {
        let SocketAddr::V4(from) = from else { continue };
        let probe = datagram == [HOLEPUNCH_PROBE];
        if probe || stream_id_of(&datagram).is_some() {
            let listener = probes.lock().ok().and_then(|probes| probes.clone());
            if let Some(listener) = listener {
                let _ = listener.try_send((from, (!probe).then_some(datagram)));
            }
            continue;
        }
        match Message::decode(&datagram) {
            Ok(Message::Response(response)) => {
                let waiter = pending
                    .lock()
                    .ok()
                    .and_then(|mut pending| pending.remove(&response.tid));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            Ok(Message::Request(request)) if !request.internal => {
                let handler = application.lock().ok().and_then(|handler| handler.clone());
                if let Some(handler) = handler {
                    // A full queue drops the request; the sender retries.
                    let _ = handler.try_send((request, from));
                }
            }
            Ok(Message::Request(request)) => {
                let Some(reply) = answer(&request, from, &table) else {
                    continue;
                };
                let _ = socket.send_to(&reply.encode(), SocketAddr::V4(from)).await;
            }
            Err(_) => {}
        }
    }
}

/// The reply to an internal request (PING and FIND_NODE); `None` for
/// commands this node does not serve.
fn answer(request: &Request, from: SocketAddrV4, table: &Table) -> Option<Message> {
    if !request.internal {
        return None;
    }
    let closer_nodes = match (request.command, request.target) {
        (PING, _) => Vec::new(),
        (FIND_NODE, Some(target)) => {
            let peers = table.lock().map(|table| table.clone()).unwrap_or_default();
            closest(&peers, &target, K)
                .into_iter()
                .map(|peer| peer.address)
                .collect()
        }
        _ => return None,
    };
    Some(Message::Response(Response {
        tid: request.tid,
        to: from,
        id: None,
        token: None,
        closer_nodes,
        error: 0,
        value: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let request = Message::Request(Request {
            tid: 513,
            to: "127.0.0.1:4000".parse().unwrap(),
            id: None,
            token: Some([7; 32]),
            internal: true,
            command: FIND_NODE,
            target: Some([9; 32]),
            value: Some(vec![1; 300]),
        });
        assert_eq!(Message::decode(&request.encode()).unwrap(), request);
        let response = Message::Response(Response {
            tid: 9,
            to: "10.0.0.1:65535".parse().unwrap(),
            id: Some([1; 32]),
            token: None,
            closer_nodes: vec!["127.0.0.1:1".parse().unwrap(); 3],
            error: 70_000,
            value: None,
        });
        let mut encoded = response.encode();
        assert_eq!(Message::decode(&encoded).unwrap(), response);
        // Unknown trailing fields are tolerated.
        encoded.extend_from_slice(b"future field");
        assert_eq!(Message::decode(&encoded).unwrap(), response);
        assert_eq!(Message::decode(&[]), Err(DhtError::Truncated));
        assert_eq!(
            Message::decode(&[0x42, 0]),
            Err(DhtError::UnknownType(0x42))
        );
        assert_eq!(Message::decode(&encoded[..20]), Err(DhtError::Truncated));
        // A closer-node count larger than the datagram is refused up front.
        let mut lying = vec![RESPONSE_ID, 4, 0, 0, 127, 0, 0, 1, 0, 1, 0xfe];
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Message::decode(&lying), Err(DhtError::Truncated));
    }

    #[test]
    fn node_ids_hash_the_compact_address() {
        // From node: require('dht-rpc/lib/peer').id('127.0.0.1', 49737)
        let id = node_id("127.0.0.1:49737".parse().unwrap());
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "d1dcf835b0d62b9230c41393cb96a34f5f8b9f814f421ca3382dfc1678022e0e"
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_datagrams_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let _ = Message::decode(&bytes);
            let mut request = vec![REQUEST_ID];
            request.extend_from_slice(&bytes);
            let _ = Message::decode(&request);
            let mut response = vec![RESPONSE_ID];
            response.extend_from_slice(&bytes);
            let _ = Message::decode(&response);
        }
    }
}
