//! A Hyperswarm-compatible transport (native, feature `hyperswarm`): the
//! layers the npm `hyperswarm` stack speaks, written on RustCrypto and
//! dalek primitives so a Rust peer and a Node peer can talk.
//!
//! - [`noise`]: the Noise XX / IK handshake over Ed25519 keys with
//!   ChaCha20-Poly1305 and BLAKE2b (`noise-handshake` + `noise-curve-ed`).
//! - [`secret_stream`]: the framed, encrypted duplex stream on top
//!   (`@hyperswarm/secret-stream`), over TCP or any reliable byte stream.
//! - [`udx`]: reliable streams over UDP (`libudx` / `udx-native`).
//! - [`dht_rpc`]: the Kademlia RPC layer of HyperDHT (`dht-rpc`): message
//!   codec, requests with retries, iterative FIND_NODE queries.
//! - [`hyperdht`]: peer discovery on it (LOOKUP, signed ANNOUNCE,
//!   FIND_PEER) and connecting through it (`PEER_HANDSHAKE`: a server
//!   accepts relayed handshakes, a client connects; `PEER_HOLEPUNCH` when
//!   neither side is reachable), yielding a secret-stream over UDX.
//! - [`holepunch`]: the holepunch messages, their sealed payload and the
//!   NAT classification; [`punch`]: the probing through both NATs.
//! - [`blind_relay`]: `protomux` framing and the `blind-relay` protocol:
//!   a peer's fallback when holepunching cannot work, and the relay.
//!
//! What exists and what does not yet (IPv6, among others) is listed in
//! `docs/ARCHITECTURE.md`, "Hyperswarm transport".

pub mod blind_relay;
pub mod dht_rpc;
pub mod holepunch;
pub mod hyperdht;
pub mod noise;
pub mod punch;
pub mod secret_stream;
pub mod udx;

pub use noise::{HandshakeError, KeyPair, Pattern};
pub use secret_stream::{SecretStream, SecretStreamError};

/// `hypercore-crypto`'s `namespace(name, [id])`: BLAKE2b-256 of
/// `BLAKE2b-256(name) ‖ id`, the domain separators the stack signs and
/// hashes under.
pub fn namespace(name: &str, id: u8) -> [u8; 32] {
    use blake2::{Blake2b256, Digest as _};
    let mut input = [0u8; 33];
    input[..32].copy_from_slice(&Blake2b256::digest(name.as_bytes()));
    input[32] = id;
    Blake2b256::digest(input).into()
}
