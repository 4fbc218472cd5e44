//! End-to-end encryption of sync traffic.
//!
//! A database that syncs has a [`SyncIdentity`]: its *database id* (shared
//! by every replica) and a 32-byte *secret*. Both travel together in an
//! invite string. From them (protocol version 2):
//!
//! - the **join key** is `BLAKE2b-256` keyed with the secret over
//!   `"pluresdb/join/v2" || database id`: what a replica shows a relay in
//!   JOIN, so that only holders of the secret can join the topic;
//! - the **topic** is `BLAKE2b-256("pluresdb/topic/v2" || join key)`, what
//!   a relay or the Hyperswarm DHT sees. Neither the database id nor the
//!   topic yields the join key, so knowing them gains nothing;
//! - the **key** is `BLAKE2b-256` keyed with the secret over
//!   `"pluresdb/sync/v2" || topic`;
//! - every message is sealed with XChaCha20-Poly1305 under that key, a fresh
//!   random 24-byte nonce, and the envelope version and topic as associated
//!   data, in an envelope `u8 version (2) | [24] nonce | ciphertext | [16]
//!   tag` (41 bytes of overhead).
//!
//! There is no plaintext mode. A peer with another secret can neither read
//! nor inject: its envelopes fail authentication and are counted, never
//! applied.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use blake2::digest::{KeyInit as _, Mac};
use blake2::{Blake2b256, Blake2bMac, Digest};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::DecodeError;

/// Version byte of sealed envelopes (2: keys of protocol version 2).
pub const ENVELOPE_VERSION: u8 = 2;
/// Bytes an envelope adds to its plaintext: version, nonce, tag.
pub const ENVELOPE_OVERHEAD: usize = 1 + 24 + 16;
const INVITE_PREFIX: &str = "pluresdb1.";
const KEY_CONTEXT: &[u8] = b"pluresdb/sync/v2";
const JOIN_CONTEXT: &[u8] = b"pluresdb/join/v2";
const TOPIC_CONTEXT: &[u8] = b"pluresdb/topic/v2";

/// A 32-byte topic: `BLAKE2b-256("pluresdb/topic/v2" || join key)`.
pub type Topic = [u8; 32];

/// The 32-byte key a replica joins a relay topic with; only holders of the
/// sync secret can compute it.
pub type JoinKey = [u8; 32];

/// The topic a join key opens: what a relay computes from JOIN.
pub fn topic_of(join_key: &JoinKey) -> Topic {
    Blake2b256::new()
        .chain_update(TOPIC_CONTEXT)
        .chain_update(join_key)
        .finalize()
        .into()
}

/// The random nonce of an envelope (its bytes 1..25), which identifies it:
/// a replayed envelope carries the same one. `None` when too short.
pub fn envelope_nonce(envelope: &[u8]) -> Option<[u8; 24]> {
    envelope.get(1..25)?.try_into().ok()
}

fn keyed_hash(secret: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Blake2bMac<blake2::digest::consts::U32> as blake2::digest::KeyInit>::new_from_slice(
            secret,
        )
        .expect("a 32-byte key is valid for BLAKE2b");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Errors of sealing and opening envelopes, and of invites.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The envelope failed authentication: another key, or tampering.
    #[error("a sync message failed authentication (wrong sync secret or tampered data)")]
    Rejected,
    /// The envelope is malformed.
    #[error("malformed sync envelope: {0}")]
    Malformed(String),
    /// An invite string that is not one.
    #[error("invalid invite: {0}")]
    InvalidInvite(String),
}

/// What every replica of a synced database shares.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncIdentity {
    database_id: String,
    secret: [u8; 32],
}

impl fmt::Debug for SyncIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("SyncIdentity")
            .field("database_id", &self.database_id)
            .finish_non_exhaustive()
    }
}

impl SyncIdentity {
    /// A new identity with a random id and secret.
    pub fn generate() -> Self {
        let mut id = [0u8; 16];
        crate::platform::fill_random(&mut id);
        let mut secret = [0u8; 32];
        crate::platform::fill_random(&mut secret);
        Self {
            database_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            secret,
        }
    }

    /// An identity from its parts.
    pub fn new(database_id: impl Into<String>, secret: [u8; 32]) -> Result<Self, CryptoError> {
        let database_id = database_id.into();
        if database_id.is_empty() || database_id.len() > 256 {
            return Err(CryptoError::InvalidInvite(
                "a database id has 1 to 256 bytes".into(),
            ));
        }
        Ok(Self {
            database_id,
            secret,
        })
    }

    /// The shared database id.
    pub fn database_id(&self) -> &str {
        &self.database_id
    }

    /// The key this database's replicas join a relay topic with.
    pub fn join_key(&self) -> JoinKey {
        keyed_hash(&self.secret, &[JOIN_CONTEXT, self.database_id.as_bytes()])
    }

    /// The topic peers meet on.
    pub fn topic(&self) -> Topic {
        topic_of(&self.join_key())
    }

    /// The invite string: `pluresdb1.<id>.<secret>` (base64url). Whoever holds
    /// it can read and write the database: share it like a password.
    pub fn invite(&self) -> String {
        format!(
            "{INVITE_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(self.database_id.as_bytes()),
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }

    /// Parses an invite string.
    pub fn from_invite(invite: &str) -> Result<Self, CryptoError> {
        let bad = |why: &str| CryptoError::InvalidInvite(why.to_string());
        let rest = invite
            .trim()
            .strip_prefix(INVITE_PREFIX)
            .ok_or_else(|| bad("it does not start with `pluresdb1.`"))?;
        let (id, secret) = rest
            .split_once('.')
            .ok_or_else(|| bad("it has no secret part"))?;
        let id = URL_SAFE_NO_PAD
            .decode(id)
            .map_err(|_| bad("the id is not base64url"))?;
        let id = String::from_utf8(id).map_err(|_| bad("the id is not UTF-8"))?;
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| bad("the secret is not base64url"))?
            .try_into()
            .map_err(|_| bad("the secret is not 32 bytes"))?;
        Self::new(id, secret)
    }

    /// Encodes for the metadata store: `u32 id length, id, [32] secret`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = crate::codec::Writer::new();
        writer.str(&self.database_id).raw(&self.secret);
        writer.finish()
    }

    /// Decodes what [`to_bytes`](Self::to_bytes) wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = crate::codec::Reader::new(bytes);
        let id = reader.str()?.to_owned();
        let secret = reader.array()?;
        reader.finish()?;
        Self::new(id, secret).map_err(|e| DecodeError::Invalid(e.to_string()))
    }

    /// The message cipher for this identity.
    pub fn cipher(&self) -> SyncCipher {
        let topic = self.topic();
        let key = keyed_hash(&self.secret, &[KEY_CONTEXT, &topic]);
        SyncCipher {
            aead: XChaCha20Poly1305::new(&key.into()),
            topic,
        }
    }
}

/// Seals and opens sync envelopes for one topic.
#[derive(Clone)]
pub struct SyncCipher {
    aead: XChaCha20Poly1305,
    topic: Topic,
}

impl fmt::Debug for SyncCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncCipher").finish_non_exhaustive()
    }
}

impl SyncCipher {
    /// The topic this cipher is bound to.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Encrypts `plaintext` into an envelope.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        crate::platform::fill_random(&mut nonce);
        self.seal_with_nonce(plaintext, nonce)
    }

    fn seal_with_nonce(&self, plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let aad = self.aad();
        let ciphertext = self
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut envelope = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
        envelope.push(ENVELOPE_VERSION);
        envelope.extend_from_slice(&nonce);
        envelope.extend_from_slice(&ciphertext);
        envelope
    }

    /// Decrypts and authenticates an envelope.
    pub fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if envelope.len() < ENVELOPE_OVERHEAD {
            return Err(CryptoError::Malformed(format!(
                "{} bytes is shorter than an envelope",
                envelope.len()
            )));
        }
        if envelope[0] != ENVELOPE_VERSION {
            return Err(CryptoError::Malformed(format!(
                "unknown envelope version {}",
                envelope[0]
            )));
        }
        let nonce: [u8; 24] = envelope[1..25].try_into().expect("length checked");
        let aad = self.aad();
        self.aead
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &envelope[25..],
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Rejected)
    }

    fn aad(&self) -> [u8; 33] {
        let mut aad = [0u8; 33];
        aad[0] = ENVELOPE_VERSION;
        aad[1..].copy_from_slice(&self.topic);
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn join_key_and_topic_test_vectors() {
        // Checked against Python's hashlib: join key =
        // blake2b(b"pluresdb/join/v2" + b"abc", key=bytes(range(32)),
        // digest_size=32); topic = blake2b(b"pluresdb/topic/v2" + join key,
        // digest_size=32).
        let identity = SyncIdentity::new("abc", std::array::from_fn(|i| i as u8)).unwrap();
        assert_eq!(
            hex(&identity.join_key()),
            "dad9573ee4c0023473148eb786875b6920a2991e10ec5eb85b9f7ef7d8500b0c"
        );
        assert_eq!(
            hex(&identity.topic()),
            "e2a12118e58c616e02a44d762cffdf95df96389dd70014d7ed74876266d51835"
        );
        assert_eq!(topic_of(&identity.join_key()), identity.topic());
        // The id alone gives neither: another secret, another topic.
        let other = SyncIdentity::new("abc", [0; 32]).unwrap();
        assert_ne!(other.topic(), identity.topic());
    }

    #[test]
    fn envelopes_round_trip_and_reject_other_keys_and_tampering() {
        let identity = SyncIdentity::generate();
        let cipher = identity.cipher();
        let envelope = cipher.seal(b"hello");
        assert_eq!(envelope.len(), 5 + ENVELOPE_OVERHEAD);
        assert_eq!(cipher.open(&envelope).unwrap(), b"hello");
        // Fresh nonces: the same message seals differently.
        assert_ne!(cipher.seal(b"hello"), envelope);
        // Another secret, same id: rejected.
        let other = SyncIdentity::new(identity.database_id(), [7; 32]).unwrap();
        assert_eq!(other.cipher().open(&envelope), Err(CryptoError::Rejected));
        // Another topic, same secret: rejected (the topic is authenticated).
        let moved = SyncIdentity::new("elsewhere", identity.secret).unwrap();
        assert_eq!(moved.cipher().open(&envelope), Err(CryptoError::Rejected));
        // Any flipped bit: rejected.
        for index in 0..envelope.len() {
            let mut tampered = envelope.clone();
            tampered[index] ^= 1;
            assert!(cipher.open(&tampered).is_err(), "bit flip at {index}");
        }
        assert!(cipher.open(&envelope[..10]).is_err());
    }

    #[test]
    fn invites_round_trip_and_bad_ones_are_errors() {
        let identity = SyncIdentity::generate();
        let invite = identity.invite();
        assert!(invite.starts_with("pluresdb1."));
        assert_eq!(SyncIdentity::from_invite(&invite).unwrap(), identity);
        assert_eq!(
            SyncIdentity::from_bytes(&identity.to_bytes()).unwrap(),
            identity
        );
        for bad in [
            "",
            "pluresdb1.",
            "pluresdb1.abc",
            "pluresdb2.YQ.YQ",
            "pluresdb1.YQ.YQ",
            "pluresdb1.!!.AAAA",
        ] {
            assert!(SyncIdentity::from_invite(bad).is_err(), "{bad}");
        }
        assert!(!format!("{identity:?}").contains(&hex(&identity.secret)));
    }
}
