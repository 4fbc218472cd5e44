//! The Noise handshake Hyperswarm speaks: `Noise_XX_Ed25519_ChaChaPoly_BLAKE2b`
//! for a bare stream and `Noise_IK_…` as HyperDHT uses it, byte-compatible
//! with the npm `noise-handshake` + `noise-curve-ed` pair.
//!
//! Two things differ from textbook Noise and are what make it interoperate:
//! - **Diffie–Hellman on Ed25519 keys.** Static and ephemeral keys are
//!   Ed25519 signing keys; DH multiplies the peer's Edwards point by our
//!   clamped secret scalar (libsodium's `crypto_scalarmult_ed25519_noclamp`
//!   after clamping `SHA-512(seed)`), and the shared secret is the compressed
//!   Edwards point. Points of small order, outside the prime-order subgroup
//!   or not canonically encoded are rejected, as libsodium does.
//! - **BLAKE2b-512 throughout.** `HASHLEN` is 64: the handshake hash, the
//!   chaining key and the HKDF outputs are 64 bytes (HMAC-BLAKE2b with a
//!   128-byte block); cipher keys are the first 32 bytes of an output.
//!
//! Cipher nonces are 96-bit ChaCha20-Poly1305 nonces with the 64-bit
//! counter little-endian in bytes 4..12. Every error (bad point, failed
//! authentication, short message, out-of-order call) is a
//! [`HandshakeError`]; nothing here panics on network input.

use blake2::digest::Digest as _;
use blake2::Blake2b512;
use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::SigningKey;
use hmac::{Mac as _, SimpleHmac};

/// Length of the handshake hash and chaining key (BLAKE2b-512).
pub const HASH_LEN: usize = 64;
/// Length of a public key (a compressed Edwards point).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of the authentication tag added to each encrypted field.
pub const TAG_LEN: usize = 16;
/// Noise caps every handshake message at this many bytes.
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A message was shorter than its pattern requires.
    #[error("noise message too short: {needed} bytes needed, {got} present")]
    ShortMessage {
        /// Bytes the next token needs.
        needed: usize,
        /// Bytes left.
        got: usize,
    },
    /// A message (or the payload to send) exceeds the Noise limit.
    #[error("noise message of {0} bytes exceeds the 65535-byte limit")]
    TooLong(usize),
    /// A public key from the peer is not a usable Ed25519 point.
    #[error("the peer sent an invalid public key")]
    InvalidPublicKey,
    /// Decryption failed: wrong key, tampered message or a peer speaking a
    /// different protocol.
    #[error("noise message failed authentication")]
    Decrypt,
    /// `send`/`recv` called when the pattern expects the other, or after
    /// the handshake finished.
    #[error("noise handshake: {0}")]
    OutOfTurn(&'static str),
    /// IK needs the responder's static key up front.
    #[error("the IK pattern needs the remote static public key")]
    MissingRemoteKey,
}

/// A long-lived Ed25519 identity (or an ephemeral one): the secret seed and
/// the public key derived from it, as `crypto_sign_seed_keypair` makes them.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &hex(&self.public_key()))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The key pair derived from a 32-byte seed (deterministic).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// A fresh random key pair.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        // The operating system's generator failing is not recoverable.
        getrandom::getrandom(&mut seed).expect("the OS random number generator failed");
        Self::from_seed(seed)
    }

    /// The public key: the compressed Edwards point, as Hyperswarm prints it.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// Signs `message` (Ed25519), as `crypto_sign_detached`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.signing.sign(message).to_bytes()
    }

    /// Diffie–Hellman with a peer's Ed25519 public key.
    fn dh(&self, remote: &[u8; 32]) -> Result<[u8; 32], HandshakeError> {
        let point = CompressedEdwardsY(*remote)
            .decompress()
            .filter(|p| p.compress().0 == *remote)
            .filter(|p| !p.is_small_order() && p.is_torsion_free())
            .ok_or(HandshakeError::InvalidPublicKey)?;
        // SHA-512(seed), clamped: the scalar behind the Ed25519 public key.
        let scalar: Scalar = self.signing.to_scalar();
        let shared = (scalar * point).compress();
        if shared.0 == CompressedEdwardsY::default().0 || shared.0 == [0; 32] {
            return Err(HandshakeError::InvalidPublicKey);
        }
        Ok(shared.0)
    }
}

/// Which Noise pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Both static keys are sent during the handshake (three messages).
    XX,
    /// The initiator knows the responder's static key (two messages), as in
    /// HyperDHT's `PEER_HANDSHAKE`.
    IK,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::XX => "XX",
            Pattern::IK => "IK",
        }
    }

    fn messages(self) -> &'static [&'static [Token]] {
        use Token::{Dh, E, S};
        const EE: Token = Dh(KeyMix::Ee);
        const ES: Token = Dh(KeyMix::Es);
        const SE: Token = Dh(KeyMix::Se);
        const SS: Token = Dh(KeyMix::Ss);
        match self {
            Pattern::XX => &[&[E], &[E, EE, S, ES], &[S, SE]],
            Pattern::IK => &[&[E, ES, S, SS], &[E, EE, SE]],
        }
    }
}

/// A step of a Noise message pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// An ephemeral public key, in clear.
    E,
    /// The static public key, encrypted once a key is mixed in.
    S,
    /// A Diffie–Hellman between one of our keys and one of theirs.
    Dh(KeyMix),
}

/// Which keys meet in a DH: first letter the initiator's, second the
/// responder's (`e`phemeral or `s`tatic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMix {
    Ee,
    Es,
    Se,
    Ss,
}

/// What a finished handshake yields.
#[derive(Clone)]
pub struct Established {
    /// Key for what we send (32 bytes).
    pub tx: [u8; 32],
    /// Key for what we receive.
    pub rx: [u8; 32],
    /// The final handshake hash (64 bytes): binds both sides' view.
    pub hash: [u8; HASH_LEN],
    /// The peer's static public key.
    pub remote_public_key: [u8; 32],
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("remote_public_key", &hex(&self.remote_public_key))
            .finish_non_exhaustive()
    }
}

/// One side of a handshake in progress.
pub struct Handshake {
    pattern: Pattern,
    initiator: bool,
    step: usize,
    local_static: KeyPair,
    local_ephemeral: Option<KeyPair>,
    remote_static: Option<[u8; 32]>,
    remote_ephemeral: Option<[u8; 32]>,
    hash: [u8; HASH_LEN],
    chaining_key: [u8; HASH_LEN],
    cipher_key: Option<[u8; 32]>,
    nonce: u64,
    established: Option<Established>,
}

impl Handshake {
    /// Starts a handshake. `remote_static` is required for IK initiators
    /// (the responder's key) and ignored otherwise. The prologue is empty
    /// in Hyperswarm.
    pub fn new(
        pattern: Pattern,
        initiator: bool,
        local_static: KeyPair,
        remote_static: Option<[u8; 32]>,
        prologue: &[u8],
    ) -> Result<Self, HandshakeError> {
        let protocol = format!("Noise_{}_Ed25519_ChaChaPoly_BLAKE2b", pattern.name());
        let mut hash = [0u8; HASH_LEN];
        hash[..protocol.len()].copy_from_slice(protocol.as_bytes());
        let mut state = Self {
            pattern,
            initiator,
            step: 0,
            local_static,
            local_ephemeral: None,
            remote_static: None,
            remote_ephemeral: None,
            hash,
            chaining_key: hash,
            cipher_key: None,
            nonce: 0,
            established: None,
        };
        state.mix_hash(prologue);
        if pattern == Pattern::IK {
            // Pre-message: the responder's static key.
            let responder_key = if initiator {
                let key = remote_static.ok_or(HandshakeError::MissingRemoteKey)?;
                state.remote_static = Some(key);
                key
            } else {
                state.local_static.public_key()
            };
            state.mix_hash(&responder_key);
        }
        Ok(state)
    }

    /// Is it our turn to send?
    pub fn is_my_turn(&self) -> bool {
        self.established.is_none() && self.step.is_multiple_of(2) == self.initiator
    }

    /// The result, once the last message was sent or received.
    pub fn established(&self) -> Option<&Established> {
        self.established.as_ref()
    }

    /// Writes the next handshake message carrying `payload`.
    pub fn send(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if !self.is_my_turn() {
            return Err(HandshakeError::OutOfTurn("send called out of turn"));
        }
        let tokens = self.pattern.messages()[self.step];
        let mut out = Vec::with_capacity(96 + payload.len());
        for &token in tokens {
            match token {
                Token::E => {
                    let ephemeral = KeyPair::generate();
                    let public = ephemeral.public_key();
                    self.mix_hash(&public);
                    out.extend_from_slice(&public);
                    self.local_ephemeral = Some(ephemeral);
                }
                Token::S => {
                    let public = self.local_static.public_key();
                    let sealed = self.encrypt_and_hash(&public)?;
                    out.extend_from_slice(&sealed);
                }
                Token::Dh(mix) => self.mix_dh(mix)?,
            }
        }
        let sealed = self.encrypt_and_hash(payload)?;
        out.extend_from_slice(&sealed);
        if out.len() > MAX_MESSAGE_LEN {
            return Err(HandshakeError::TooLong(out.len()));
        }
        self.advance();
        Ok(out)
    }

    /// Reads the peer's next handshake message; returns its payload.
    pub fn recv(&mut self, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if self.established.is_some() || self.is_my_turn() {
            return Err(HandshakeError::OutOfTurn("recv called out of turn"));
        }
        if message.len() > MAX_MESSAGE_LEN {
            return Err(HandshakeError::TooLong(message.len()));
        }
        let tokens = self.pattern.messages()[self.step];
        let mut rest = message;
        for &token in tokens {
            match token {
                Token::E => {
                    let key = take::<PUBLIC_KEY_LEN>(&mut rest)?;
                    self.mix_hash(&key);
                    self.remote_ephemeral = Some(key);
                }
                Token::S => {
                    let len = PUBLIC_KEY_LEN
                        + if self.cipher_key.is_some() {
                            TAG_LEN
                        } else {
                            0
                        };
                    if rest.len() < len {
                        return Err(HandshakeError::ShortMessage {
                            needed: len,
                            got: rest.len(),
                        });
                    }
                    let (sealed, tail) = rest.split_at(len);
                    rest = tail;
                    let plain = self.decrypt_and_hash(sealed)?;
                    let key: [u8; 32] = plain
                        .try_into()
                        .map_err(|_| HandshakeError::InvalidPublicKey)?;
                    self.remote_static = Some(key);
                }
                Token::Dh(mix) => self.mix_dh(mix)?,
            }
        }
        let payload = self.decrypt_and_hash(rest)?;
        self.advance();
        Ok(payload)
    }

    fn advance(&mut self) {
        self.step += 1;
        if self.step == self.pattern.messages().len() {
            let (first, second) = hkdf(&self.chaining_key, &[]);
            let (tx, rx) = if self.initiator {
                (first, second)
            } else {
                (second, first)
            };
            let remote_public_key = self.remote_static.unwrap_or([0; 32]);
            self.established = Some(Established {
                tx: prefix32(&tx),
                rx: prefix32(&rx),
                hash: self.hash,
                remote_public_key,
            });
            self.local_ephemeral = None;
            self.cipher_key = None;
        }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Blake2b512::new();
        hasher.update(self.hash);
        hasher.update(data);
        self.hash.copy_from_slice(&hasher.finalize());
    }

    fn mix_dh(&mut self, mix: KeyMix) -> Result<(), HandshakeError> {
        // Whether our key and theirs are the static ones.
        let (local_static, remote_static) = match mix {
            KeyMix::Ee => (false, false),
            KeyMix::Es => (!self.initiator, self.initiator),
            KeyMix::Se => (self.initiator, !self.initiator),
            KeyMix::Ss => (true, true),
        };
        let local = if local_static {
            Some(&self.local_static)
        } else {
            self.local_ephemeral.as_ref()
        };
        let remote = if remote_static {
            self.remote_static
        } else {
            self.remote_ephemeral
        };
        let (Some(local), Some(remote)) = (local, remote) else {
            return Err(HandshakeError::OutOfTurn("a key needed for DH is missing"));
        };
        let shared = local.dh(&remote)?;
        let (chaining_key, key) = hkdf(&self.chaining_key, &shared);
        self.chaining_key = chaining_key;
        self.cipher_key = Some(prefix32(&key));
        self.nonce = 0;
        Ok(())
    }

    fn encrypt_and_hash(&mut self, plain: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let sealed = match self.cipher_key {
            None => plain.to_vec(),
            Some(key) => {
                let nonce = noise_nonce(self.nonce);
                self.nonce += 1;
                ChaCha20Poly1305::new(&key.into())
                    .encrypt(
                        &nonce.into(),
                        Payload {
                            msg: plain,
                            aad: &self.hash,
                        },
                    )
                    .map_err(|_| HandshakeError::TooLong(plain.len()))?
            }
        };
        self.mix_hash(&sealed);
        Ok(sealed)
    }

    fn decrypt_and_hash(&mut self, sealed: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let plain = match self.cipher_key {
            None => sealed.to_vec(),
            Some(key) => {
                let nonce = noise_nonce(self.nonce);
                self.nonce += 1;
                ChaCha20Poly1305::new(&key.into())
                    .decrypt(
                        &nonce.into(),
                        Payload {
                            msg: sealed,
                            aad: &self.hash,
                        },
                    )
                    .map_err(|_| HandshakeError::Decrypt)?
            }
        };
        self.mix_hash(sealed);
        Ok(plain)
    }
}

fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], HandshakeError> {
    if rest.len() < N {
        return Err(HandshakeError::ShortMessage {
            needed: N,
            got: rest.len(),
        });
    }
    let (head, tail) = rest.split_at(N);
    *rest = tail;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok(out)
}

fn noise_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

fn prefix32(bytes: &[u8; HASH_LEN]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// HMAC-BLAKE2b-512 (128-byte block, as `noise-handshake`'s hmac.js).
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut mac = <SimpleHmac<Blake2b512> as hmac::digest::KeyInit>::new_from_slice(key)
        .expect("HMAC accepts keys of every length (long keys are hashed first)");
    for part in parts {
        mac.update(part);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// HKDF (RFC 5869) with HMAC-BLAKE2b, empty info, two 64-byte outputs.
fn hkdf(salt: &[u8; HASH_LEN], input: &[u8]) -> ([u8; HASH_LEN], [u8; HASH_LEN]) {
    let pseudo_random_key = hmac(salt, &[input]);
    let first = hmac(&pseudo_random_key, &[&[1]]);
    let second = hmac(&pseudo_random_key, &[&first, &[2]]);
    (first, second)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pattern: Pattern, payloads: bool) -> (Established, Established) {
        let alice = KeyPair::from_seed([1; 32]);
        let bob = KeyPair::from_seed([2; 32]);
        let mut initiator =
            Handshake::new(pattern, true, alice.clone(), Some(bob.public_key()), &[]).unwrap();
        let mut responder = Handshake::new(pattern, false, bob.clone(), None, &[]).unwrap();
        let mut turn = 0u8;
        while initiator.established().is_none() || responder.established().is_none() {
            turn += 1;
            let payload = if payloads { vec![turn; 5] } else { vec![] };
            let (from, to) = if initiator.is_my_turn() {
                (&mut initiator, &mut responder)
            } else {
                (&mut responder, &mut initiator)
            };
            let message = from.send(&payload).unwrap();
            assert_eq!(to.recv(&message).unwrap(), payload);
        }
        assert_eq!(
            initiator.established().unwrap().remote_public_key,
            bob.public_key()
        );
        assert_eq!(
            responder.established().unwrap().remote_public_key,
            alice.public_key()
        );
        (
            initiator.established().unwrap().clone(),
            responder.established().unwrap().clone(),
        )
    }

    #[test]
    fn both_patterns_agree_on_keys_and_hash() {
        for pattern in [Pattern::XX, Pattern::IK] {
            for payloads in [false, true] {
                let (i, r) = run(pattern, payloads);
                assert_eq!(i.tx, r.rx);
                assert_eq!(i.rx, r.tx);
                assert_ne!(i.tx, i.rx);
                assert_eq!(i.hash, r.hash);
            }
        }
    }

    #[test]
    fn message_sizes_match_noise_handshake() {
        let bob = KeyPair::from_seed([2; 32]);
        let mut xx = Handshake::new(Pattern::XX, true, KeyPair::generate(), None, &[]).unwrap();
        assert_eq!(xx.send(&[]).unwrap().len(), 32);
        let mut ik = Handshake::new(
            Pattern::IK,
            true,
            KeyPair::generate(),
            Some(bob.public_key()),
            &[],
        )
        .unwrap();
        assert_eq!(ik.send(&[]).unwrap().len(), 32 + 48 + 16);
    }

    #[test]
    fn tampering_and_garbage_are_errors_not_panics() {
        let mut responder =
            Handshake::new(Pattern::XX, false, KeyPair::generate(), None, &[]).unwrap();
        assert!(matches!(
            responder.recv(&[0; 10]),
            Err(HandshakeError::ShortMessage { .. })
        ));
        // A small-order point (the identity) as the ephemeral key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut responder =
            Handshake::new(Pattern::XX, false, KeyPair::generate(), None, &[]).unwrap();
        responder.recv(&identity).unwrap();
        assert_eq!(
            responder.send(&[]).err(),
            Some(HandshakeError::InvalidPublicKey)
        );
        // A flipped bit in message two fails authentication.
        let mut initiator =
            Handshake::new(Pattern::XX, true, KeyPair::generate(), None, &[]).unwrap();
        let mut responder =
            Handshake::new(Pattern::XX, false, KeyPair::generate(), None, &[]).unwrap();
        responder.recv(&initiator.send(&[]).unwrap()).unwrap();
        let mut second = responder.send(&[]).unwrap();
        second[40] ^= 1;
        assert_eq!(initiator.recv(&second).err(), Some(HandshakeError::Decrypt));
        assert!(Handshake::new(Pattern::IK, true, KeyPair::generate(), None, &[]).is_err());
        let mut done = initiator;
        assert!(done.recv(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_messages_never_panic(first in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                          second in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for pattern in [Pattern::XX, Pattern::IK] {
                let responder_keys = KeyPair::from_seed([3; 32]);
                let mut responder =
                    Handshake::new(pattern, false, responder_keys.clone(), None, &[]).unwrap();
                let _ = responder.recv(&first);
                let mut initiator = Handshake::new(
                    pattern, true, KeyPair::generate(), Some(responder_keys.public_key()), &[],
                ).unwrap();
                initiator.send(&[]).unwrap();
                let _ = initiator.recv(&second);
            }
        }
    }
}
