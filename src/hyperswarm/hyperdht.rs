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

use super::dht_rpc::{DhtError, DhtNode, Reader, Writer};
use super::namespace;
use super::noise::KeyPair;

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
        w.uint(self.relay_addresses.len() as u64);
        for address in &self.relay_addresses {
            w.ipv4(*address);
        }
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

/// Discovery over a [`DhtNode`], bootstrapped from known nodes.
#[derive(Debug)]
pub struct HyperDht {
    node: DhtNode,
    bootstrap: Vec<SocketAddrV4>,
}

impl HyperDht {
    /// Binds a node at `address` that bootstraps from `bootstrap`.
    pub async fn bind(
        address: SocketAddrV4,
        bootstrap: Vec<SocketAddrV4>,
    ) -> Result<Self, DhtError> {
        Ok(Self {
            node: DhtNode::bind(address).await?,
            bootstrap,
        })
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

    /// The record a server announced for `public_key`, if a node has it.
    pub async fn find_peer(&self, public_key: &[u8; 32]) -> Result<Option<PeerRecord>, DhtError> {
        let target: [u8; 32] = Blake2b256::digest(public_key).into();
        let answers = self
            .node
            .query(target, &self.bootstrap, false, FIND_PEER, None)
            .await?;
        Ok(answers
            .into_iter()
            .filter_map(|(_, response)| response.value)
            .filter_map(|value| PeerRecord::decode(&value).ok())
            .find(|record| record.public_key == *public_key))
    }
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
}
