//! HyperDHT holepunching, compatible with npm `hyperdht` 6: the messages
//! of `PEER_HOLEPUNCH`, the sealed payload they carry, and the NAT
//! classification each side runs before punching. The rounds themselves
//! (who sends what when) live in [`super::hyperdht`]; the probing in
//! [`super::punch`].
//!
//! - **Envelope.** A `PEER_HOLEPUNCH` request's value is `flags (1 peer
//!   address), mode, id, payload, peerAddress?`. The client sends it
//!   `FROM_CLIENT` to a DHT node, which relays it `FROM_RELAY` to the
//!   server's address; the server answers `FROM_SERVER` through the relay,
//!   which replies to the client (`REPLY`) with the server's address as it
//!   saw it.
//! - **Payload.** `flags, error, firewall, round, addresses?,
//!   remoteAddress?, token?, remoteToken?`, sealed with XSalsa20-Poly1305
//!   (`nonce ‖ tag ‖ ciphertext`) under `BLAKE2b-256(NS_PEER_HOLEPUNCH)`
//!   keyed with the Noise handshake hash, so relays learn nothing and
//!   cannot forge a round.
//! - **Tokens.** Each side hands out `BLAKE2b-256(host)` keyed with a
//!   secret of its own for the address it sees the other at; a token
//!   echoed back proves the peer really receives at that host, so probes
//!   (and the birthday burst for random NATs) only go to verified hosts.
//! - **NAT classes.** [`NatSampler`] collects the address several DHT
//!   nodes saw a socket at: the same port from three nodes is a
//!   *consistent* NAT (punchable by probing each other), different ports
//!   every time a *random* one.

use std::net::{Ipv4Addr, SocketAddrV4};

use blake2::digest::{KeyInit as _, Mac as _};
use blake2::Blake2bMac;
use crypto_secretbox::aead::AeadInPlace as _;
use crypto_secretbox::{KeyInit as _, XSalsa20Poly1305};

use super::dht_rpc::{DhtError, Reader, Writer};
use super::namespace;

/// HyperDHT command: a holepunch round relayed between client and server.
pub const PEER_HOLEPUNCH: u64 = 1;

/// Envelope modes (shared with `PEER_HANDSHAKE`): who sent this hop.
pub const FROM_CLIENT: u64 = 0;
/// Sent by the server, back through the relay.
pub const FROM_SERVER: u64 = 1;
/// Sent by the relay, towards the server.
pub const FROM_RELAY: u64 = 2;
/// The relay's reply to the client.
pub const REPLY: u64 = 4;

/// Holepunch payload error codes (`ERROR` in `hyperdht/lib/constants`).
pub mod error {
    /// No error.
    pub const NONE: u64 = 0;
    /// The sender gave up on this connection.
    pub const ABORTED: u64 = 1;
    /// The sender is busy punching random NATs; retry later.
    pub const TRY_LATER: u64 = 3;
}

/// What a socket's NAT looks like from the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Firewall {
    /// Not known (yet).
    Unknown = 0,
    /// Reachable at the address others see, unsolicited.
    Open = 1,
    /// Behind a NAT that keeps one public port per socket.
    Consistent = 2,
    /// Behind a NAT that picks a new public port per destination.
    Random = 3,
}

impl Firewall {
    /// Its wire number.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// From a wire number; unknown numbers are [`Firewall::Unknown`].
    pub fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::Consistent,
            3 => Self::Random,
            _ => Self::Unknown,
        }
    }

    /// Open counts as consistent for punching (`coerceFirewall`).
    pub fn coerced(self) -> Self {
        if self == Self::Open {
            Self::Consistent
        } else {
            self
        }
    }
}

/// A relay a server can be reached through: the DHT node, and the
/// server's address as that node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayInfo {
    /// The DHT node.
    pub relay_address: SocketAddrV4,
    /// The server's address as the node sees it.
    pub peer_address: SocketAddrV4,
}

/// The holepunch section of a server's Noise payload: the id of this
/// handshake at the server and the relays to punch through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HolepunchInfo {
    /// The server's handle for this handshake.
    pub id: u64,
    /// Relays that reach the server.
    pub relays: Vec<RelayInfo>,
}

/// Relays a holepunch section lists at most when decoded (hyperdht
/// announces to 20 nodes at most).
pub const MAX_RELAY_INFOS: usize = 32;

impl HolepunchInfo {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.uint(self.id);
        w.uint(self.relays.len() as u64);
        for relay in &self.relays {
            w.ipv4(relay.relay_address);
            w.ipv4(relay.peer_address);
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DhtError> {
        let id = r.uint()?;
        let count = usize::try_from(r.uint()?).map_err(|_| DhtError::TooLong)?;
        if count > MAX_RELAY_INFOS {
            return Err(DhtError::TooLong);
        }
        let relays = (0..count)
            .map(|_| {
                Ok(RelayInfo {
                    relay_address: r.ipv4()?,
                    peer_address: r.ipv4()?,
                })
            })
            .collect::<Result<_, DhtError>>()?;
        Ok(Self { id, relays })
    }
}

/// One hop of `PEER_HOLEPUNCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolepunchHop {
    /// Who sent this hop.
    pub mode: u64,
    /// The server's handshake id (0 on the way back).
    pub id: u64,
    /// The sealed [`HolepunchPayload`].
    pub payload: Vec<u8>,
    /// Client → relay: the server's address; relay → server: the client's;
    /// server → relay: the client's; relay → client: the server's.
    pub peer_address: Option<SocketAddrV4>,
}

impl HolepunchHop {
    /// Its compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.uint(u64::from(self.peer_address.is_some()));
        w.uint(self.mode);
        w.uint(self.id);
        w.buffer(&self.payload);
        if let Some(address) = self.peer_address {
            w.ipv4(address);
        }
        w.bytes
    }

    /// Decodes a hop; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(bytes);
        let flags = r.uint()?;
        let mode = r.uint()?;
        let id = r.uint()?;
        let payload = r.buffer()?;
        let peer_address = if flags & 1 != 0 {
            Some(r.ipv4()?)
        } else {
            None
        };
        Ok(Self {
            mode,
            id,
            payload,
            peer_address,
        })
    }
}

/// What the two sides tell each other in each holepunch round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HolepunchPayload {
    /// An [`error`] code.
    pub error: u64,
    /// The sender's [`Firewall`] code.
    pub firewall: u64,
    /// The round number (rises with every message).
    pub round: u64,
    /// The sender already has a connection.
    pub connected: bool,
    /// The sender is punching (or ready to).
    pub punching: bool,
    /// Where the sender can be probed.
    pub addresses: Option<Vec<SocketAddrV4>>,
    /// Where the sender already sent a probe to (the server's address).
    pub remote_address: Option<SocketAddrV4>,
    /// The sender's token for the address it sees the receiver at.
    pub token: Option<[u8; 32]>,
    /// The receiver's token, echoed.
    pub remote_token: Option<[u8; 32]>,
}

/// Addresses a payload lists at most when decoded.
pub const MAX_PAYLOAD_ADDRESSES: usize = 16;

impl HolepunchPayload {
    /// Its compact encoding (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let flags = u64::from(self.connected)
            | u64::from(self.punching) << 1
            | u64::from(self.addresses.is_some()) << 2
            | u64::from(self.remote_address.is_some()) << 3
            | u64::from(self.token.is_some()) << 4
            | u64::from(self.remote_token.is_some()) << 5;
        w.uint(flags);
        w.uint(self.error);
        w.uint(self.firewall);
        w.uint(self.round);
        if let Some(addresses) = &self.addresses {
            w.ipv4_array(addresses);
        }
        if let Some(address) = self.remote_address {
            w.ipv4(address);
        }
        for token in [self.token, self.remote_token].into_iter().flatten() {
            w.bytes.extend_from_slice(&token);
        }
        w.bytes
    }

    /// Decodes a payload; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DhtError> {
        let mut r = Reader::new(bytes);
        let flags = r.uint()?;
        let mut payload = Self {
            error: r.uint()?,
            firewall: r.uint()?,
            round: r.uint()?,
            connected: flags & 1 != 0,
            punching: flags & 2 != 0,
            ..Self::default()
        };
        if flags & 4 != 0 {
            let addresses = r.ipv4_array()?;
            if addresses.len() > MAX_PAYLOAD_ADDRESSES {
                return Err(DhtError::TooLong);
            }
            payload.addresses = Some(addresses);
        }
        if flags & 8 != 0 {
            payload.remote_address = Some(r.ipv4()?);
        }
        if flags & 16 != 0 {
            payload.token = Some(r.fixed32()?);
        }
        if flags & 32 != 0 {
            payload.remote_token = Some(r.fixed32()?);
        }
        Ok(payload)
    }
}

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Seals and opens holepunch payloads for one connection, and hands out
/// this side's address tokens (`SecurePayload` in hyperdht).
#[derive(Clone)]
pub struct SecurePayload {
    cipher: XSalsa20Poly1305,
    local_secret: [u8; 32],
}

impl std::fmt::Debug for SecurePayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurePayload").finish_non_exhaustive()
    }
}

/// `BLAKE2b-256(NS_PEER_HOLEPUNCH)` keyed with the Noise handshake hash:
/// the key both sides seal holepunch payloads with.
pub fn holepunch_secret(handshake_hash: &[u8]) -> [u8; 32] {
    let mut mac = <Blake2bMac<blake2::digest::consts::U32>>::new_from_slice(handshake_hash)
        .expect("a Noise handshake hash (64 bytes) is a valid BLAKE2b key");
    mac.update(&namespace("hyperswarm/dht", PEER_HOLEPUNCH as u8));
    mac.finalize().into_bytes().into()
}

impl SecurePayload {
    /// For the connection whose Noise handshake ended with `handshake_hash`.
    pub fn new(handshake_hash: &[u8]) -> Self {
        let key = holepunch_secret(handshake_hash);
        Self {
            cipher: XSalsa20Poly1305::new((&key).into()),
            local_secret: random_bytes(),
        }
    }

    /// `nonce ‖ tag ‖ ciphertext` of the payload.
    pub fn seal(&self, payload: &HolepunchPayload) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let mut body = payload.encode();
        let tag = self
            .cipher
            .encrypt_in_place_detached((&nonce).into(), &[], &mut body)
            .expect("XSalsa20-Poly1305 seals any payload shorter than 256 GiB");
        let mut sealed = Vec::with_capacity(NONCE_LEN + TAG_LEN + body.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&tag);
        sealed.extend_from_slice(&body);
        sealed
    }

    /// The payload, or `None` if it was not sealed for this connection or
    /// does not decode.
    pub fn open(&self, sealed: &[u8]) -> Option<HolepunchPayload> {
        if sealed.len() <= NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (tag, body) = rest.split_at(TAG_LEN);
        let mut body = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(nonce.into(), &[], &mut body, tag.into())
            .ok()?;
        HolepunchPayload::decode(&body).ok()
    }

    /// This side's token for `host`: `BLAKE2b-256(host as dotted text)`
    /// keyed with a secret that never leaves this side.
    pub fn token(&self, host: Ipv4Addr) -> [u8; 32] {
        let mut mac = <Blake2bMac<blake2::digest::consts::U32>>::new_from_slice(&self.local_secret)
            .expect("32 bytes is a valid BLAKE2b key");
        mac.update(host.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Fresh random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The operating system's generator failing is not recoverable.
    getrandom::getrandom(&mut bytes).expect("the OS random number generator failed");
    bytes
}

/// Samples a [`NatSampler`] wants before it decides.
pub const MIN_SAMPLES: usize = 4;

/// Classifies a socket's NAT from the addresses DHT nodes saw it at
/// (`lib/nat.js`): one sample per node.
#[derive(Debug, Clone)]
pub struct NatSampler {
    /// Distinct hosts seen, most hits first.
    hosts: Vec<(Ipv4Addr, u32)>,
    /// Distinct host:port pairs seen, most hits first.
    full: Vec<(SocketAddrV4, u32)>,
    /// Nodes that gave a sample.
    visited: Vec<SocketAddrV4>,
    sampled: usize,
    open: bool,
    frozen: bool,
    firewall: Firewall,
    addresses: Option<Vec<SocketAddrV4>>,
}

/// Nodes a sampler keeps a sample from at most: later samples are ignored.
const MAX_SAMPLES: usize = 32;

impl NatSampler {
    /// A sampler for a socket of a node that is `open` (reachable
    /// unsolicited: then the socket is [`Firewall::Open`] outright).
    pub fn new(open: bool) -> Self {
        Self {
            hosts: Vec::new(),
            full: Vec::new(),
            visited: Vec::new(),
            sampled: 0,
            open,
            frozen: false,
            firewall: if open {
                Firewall::Open
            } else {
                Firewall::Unknown
            },
            addresses: None,
        }
    }

    /// How many nodes gave a sample.
    pub fn sampled(&self) -> usize {
        self.sampled
    }

    /// The classification so far.
    pub fn firewall(&self) -> Firewall {
        self.firewall
    }

    /// Where the socket can be probed: the common address of a consistent
    /// NAT (and a runner-up), the host of a random one.
    pub fn addresses(&self) -> Option<Vec<SocketAddrV4>> {
        self.addresses.clone()
    }

    /// Whether enough is known to stop waiting for samples.
    pub fn settled(&self) -> bool {
        matches!(self.firewall, Firewall::Open | Firewall::Consistent)
            || self.sampled >= MIN_SAMPLES
    }

    /// Stops reclassifying (once the result was told to the peer).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// `to`: the address node `from` saw this socket at.
    pub fn add(&mut self, to: SocketAddrV4, from: SocketAddrV4) {
        if self.visited.contains(&from) || self.visited.len() >= MAX_SAMPLES {
            return;
        }
        self.visited.push(from);
        add_sample(&mut self.hosts, *to.ip());
        add_sample(&mut self.full, to);
        self.sampled += 1;
        if (self.sampled >= 3 || self.open) && !self.frozen {
            self.update_firewall();
            self.update_addresses();
        }
    }

    fn update_firewall(&mut self) {
        if self.open {
            self.firewall = Firewall::Open;
            return;
        }
        if self.sampled < 3 {
            return;
        }
        let most = self.full[0].1;
        self.firewall = if most >= 3 {
            Firewall::Consistent
        } else if most == 1 {
            Firewall::Random
        } else if self.hosts.len() == 1 && self.sampled > 3 {
            // Two hits on one host and two misses: random.
            Firewall::Random
        } else if self.hosts.len() > 1 && self.full.get(1).is_some_and(|(_, hits)| *hits > 1) {
            // Two double hits on two hosts (multi-homed): consistent.
            Firewall::Consistent
        } else if self.sampled > 4 {
            Firewall::Random
        } else {
            self.firewall
        };
    }

    fn update_addresses(&mut self) {
        self.addresses = match self.firewall {
            Firewall::Unknown => None,
            Firewall::Random => Some(vec![SocketAddrV4::new(self.hosts[0].0, 0)]),
            Firewall::Consistent | Firewall::Open => {
                let mut addresses = Vec::new();
                for (address, hits) in &self.full {
                    if *hits >= 2 || addresses.len() < 2 {
                        addresses.push(*address);
                    }
                }
                Some(addresses)
            }
        };
    }
}

/// Counts one more hit for `key`, keeping the list sorted by hits.
fn add_sample<T: PartialEq + Copy>(samples: &mut Vec<(T, u32)>, key: T) {
    if let Some(mut i) = samples.iter().position(|(known, _)| *known == key) {
        samples[i].1 += 1;
        while i > 0 && samples[i - 1].1 < samples[i].1 {
            samples.swap(i - 1, i);
            i -= 1;
        }
    } else {
        samples.push((key, 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    #[test]
    fn hops_and_payloads_round_trip() {
        let hop = HolepunchHop {
            mode: FROM_RELAY,
            id: 300,
            payload: vec![7; 90],
            peer_address: Some(address("10.0.0.1:4000")),
        };
        assert_eq!(HolepunchHop::decode(&hop.encode()).unwrap(), hop);
        let payload = HolepunchPayload {
            error: error::NONE,
            firewall: Firewall::Consistent.code(),
            round: 2,
            connected: false,
            punching: true,
            addresses: Some(vec![address("1.2.3.4:5"), address("1.2.3.4:6")]),
            remote_address: Some(address("5.6.7.8:9")),
            token: Some([1; 32]),
            remote_token: None,
        };
        assert_eq!(
            HolepunchPayload::decode(&payload.encode()).unwrap(),
            payload
        );
        let info = HolepunchInfo {
            id: 3,
            relays: vec![RelayInfo {
                relay_address: address("9.9.9.9:49737"),
                peer_address: address("8.8.8.8:1234"),
            }],
        };
        let mut w = Writer::default();
        info.write(&mut w);
        assert_eq!(
            HolepunchInfo::read(&mut Reader::new(&w.bytes)).unwrap(),
            info
        );
    }

    #[test]
    fn hostile_lengths_are_refused_not_allocated() {
        // A relay count far past the cap, then nothing.
        assert_eq!(
            HolepunchInfo::read(&mut Reader::new(&[1, 0xfe, 0xff, 0xff, 0xff, 0x7f])),
            Err(DhtError::TooLong)
        );
        // A payload claiming 4 billion bytes.
        assert_eq!(
            HolepunchHop::decode(&[0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0xff]),
            Err(DhtError::Truncated)
        );
        // Every prefix of a valid payload fails cleanly.
        let full = HolepunchPayload {
            addresses: Some(vec![address("1.2.3.4:5")]),
            remote_address: Some(address("5.6.7.8:9")),
            token: Some([1; 32]),
            remote_token: Some([2; 32]),
            ..HolepunchPayload::default()
        }
        .encode();
        for end in 0..full.len() {
            assert!(
                HolepunchPayload::decode(&full[..end]).is_err(),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn sealed_payloads_open_only_with_the_same_handshake() {
        let hash = [9u8; 64];
        let ours = SecurePayload::new(&hash);
        let theirs = SecurePayload::new(&hash);
        let payload = HolepunchPayload {
            round: 1,
            token: Some(ours.token(Ipv4Addr::new(1, 2, 3, 4))),
            ..HolepunchPayload::default()
        };
        let sealed = ours.seal(&payload);
        assert_eq!(theirs.open(&sealed), Some(payload));
        // Another handshake, a flipped bit, or a stub are refused.
        assert_eq!(SecurePayload::new(&[8u8; 64]).open(&sealed), None);
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(theirs.open(&flipped), None);
        assert_eq!(theirs.open(&sealed[..40]), None);
        // Tokens are per side and per host.
        let host = Ipv4Addr::new(1, 2, 3, 4);
        assert_eq!(ours.token(host), ours.token(host));
        assert_ne!(ours.token(host), theirs.token(host));
        assert_ne!(ours.token(host), ours.token(Ipv4Addr::new(1, 2, 3, 5)));
    }

    #[test]
    fn nat_classes_follow_hyperdht() {
        let nodes = [
            "9.0.0.1:1",
            "9.0.0.2:1",
            "9.0.0.3:1",
            "9.0.0.4:1",
            "9.0.0.5:1",
        ];
        // The same public port for everyone: consistent after three.
        let mut nat = NatSampler::new(false);
        for node in &nodes[..2] {
            nat.add(address("7.7.7.7:5000"), address(node));
        }
        assert_eq!(nat.firewall(), Firewall::Unknown);
        assert!(!nat.settled());
        nat.add(address("7.7.7.7:5000"), address(nodes[2]));
        assert_eq!(nat.firewall(), Firewall::Consistent);
        assert_eq!(nat.addresses(), Some(vec![address("7.7.7.7:5000")]));
        assert!(nat.settled());
        // A node counts once.
        nat.add(address("7.7.7.7:6000"), address(nodes[2]));
        assert_eq!(nat.sampled(), 3);

        // A new port per node: random, probed by host.
        let mut nat = NatSampler::new(false);
        for (i, node) in nodes[..4].iter().enumerate() {
            nat.add(
                SocketAddrV4::new(Ipv4Addr::new(7, 7, 7, 7), 6000 + i as u16),
                address(node),
            );
        }
        assert_eq!(nat.firewall(), Firewall::Random);
        assert_eq!(nat.addresses(), Some(vec![address("7.7.7.7:0")]));

        // Two hits and two misses on one host: random.
        let mut nat = NatSampler::new(false);
        for (port, node) in [(1, nodes[0]), (1, nodes[1]), (2, nodes[2]), (3, nodes[3])] {
            nat.add(
                SocketAddrV4::new(Ipv4Addr::new(7, 7, 7, 7), port),
                address(node),
            );
        }
        assert_eq!(nat.firewall(), Firewall::Random);

        // An open node is open from its first sample, and freezing holds.
        let mut nat = NatSampler::new(true);
        nat.add(address("7.7.7.7:5000"), address(nodes[0]));
        assert_eq!(nat.firewall(), Firewall::Open);
        let mut nat = NatSampler::new(false);
        nat.freeze();
        for node in &nodes[..3] {
            nat.add(address("7.7.7.7:5000"), address(node));
        }
        assert_eq!(nat.firewall(), Firewall::Unknown);
    }
}
