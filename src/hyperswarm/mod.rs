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
//!
//! What exists and what does not yet (the DHT, topic discovery, the sync
//! transport) is listed in `docs/ARCHITECTURE.md`, "Hyperswarm transport".

pub mod dht_rpc;
pub mod noise;
pub mod secret_stream;
pub mod udx;

pub use noise::{HandshakeError, KeyPair, Pattern};
pub use secret_stream::{SecretStream, SecretStreamError};
