//! Hyperswarm's secret-stream: an encrypted, framed duplex stream over any
//! reliable byte stream (TCP here; a UDX stream once that layer exists),
//! wire-compatible with npm `@hyperswarm/secret-stream`.
//!
//! Every frame is a 24-bit little-endian length and that many bytes:
//! 1. the Noise handshake messages ([`super::noise`], XX by default);
//! 2. one setup frame each way, 56 bytes: a 32-byte stream id
//!    (`BLAKE2b-256(key = handshake hash, NS_INITIATOR | NS_RESPONDER)`,
//!    the namespaces being `hypercore-crypto`'s
//!    `namespace("hyperswarm/secret-stream", 3)`) and the 24-byte header of
//!    libsodium's `crypto_secretstream_xchacha20poly1305`, keyed by the
//!    handshake's `tx`/`rx`;
//! 3. messages, each one secretstream record (`TAG_MESSAGE`, 17 bytes of
//!    overhead). An empty message is a keep-alive.
//!
//! Bad frames, failed authentication, a wrong stream id and a handshake
//! slower than [`HANDSHAKE_TIMEOUT`] are [`SecretStreamError`]s.

use std::time::Duration;

use blake2::digest::{KeyInit as _, Mac as _};
use blake2::Blake2bMac;
use crypto_secretstream::{Header, Key, PullStream, PushStream, Tag};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::namespace;
use super::noise::{Established, Handshake, HandshakeError, KeyPair, Pattern, MAX_MESSAGE_LEN};

/// How long the handshake and setup frames may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frame lengths are 24-bit.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// Bytes secretstream adds to each message (tag byte and MAC).
pub const MESSAGE_OVERHEAD: usize = 17;
/// The largest message [`SecretWriter::send`] accepts.
pub const MAX_MESSAGE: usize = MAX_FRAME_LEN - MESSAGE_OVERHEAD;
const SETUP_FRAME_LEN: usize = 32 + Header::BYTES;

/// Why a secret stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretStreamError {
    /// The underlying stream failed.
    #[error("secret-stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The Noise handshake failed.
    #[error("secret-stream handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer closed the stream before the handshake finished.
    #[error("the peer closed the stream during the handshake")]
    ClosedDuringHandshake,
    /// The handshake did not finish in time.
    #[error("secret-stream handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The setup frame had the wrong size or stream id.
    #[error("invalid secret-stream setup frame: {0}")]
    InvalidSetup(&'static str),
    /// A message failed authentication (tampered, reordered or not ours).
    #[error("a secret-stream message failed authentication")]
    Decrypt,
    /// A frame shorter than the secretstream overhead.
    #[error("a secret-stream frame of {0} bytes is too short to be a message")]
    ShortFrame(usize),
    /// The message to send is larger than a frame can carry.
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte secret-stream limit")]
    TooLarge(usize),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended in the middle of a frame")]
    Truncated,
}

/// The stream id a side announces: keyed BLAKE2b-256 of its namespace.
pub fn stream_id(handshake_hash: &[u8], initiator: bool) -> [u8; 32] {
    let mut mac = <Blake2bMac<blake2::digest::consts::U32>>::new_from_slice(handshake_hash)
        .expect("a 64-byte BLAKE2b key is valid");
    // ids 0 and 1 of the namespace; id 2 is for datagrams.
    mac.update(&namespace(
        "hyperswarm/secret-stream",
        if initiator { 0 } else { 1 },
    ));
    mac.finalize().into_bytes().into()
}

/// An established secret stream over `S`.
pub struct SecretStream<S> {
    reader: SecretReader<ReadHalf<S>>,
    writer: SecretWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> std::fmt::Debug for SecretStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStream")
            .field("initiator", &self.writer.initiator)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite> SecretStream<S> {
    /// Runs an XX handshake over `io` as initiator or responder, then the
    /// setup frames, within [`HANDSHAKE_TIMEOUT`].
    pub async fn handshake(
        io: S,
        initiator: bool,
        key_pair: KeyPair,
    ) -> Result<Self, SecretStreamError> {
        Self::handshake_with(
            io,
            initiator,
            key_pair,
            Pattern::XX,
            None,
            HANDSHAKE_TIMEOUT,
        )
        .await
    }

    /// As [`SecretStream::handshake`], choosing the pattern (IK needs the
    /// responder's key on the initiator side) and the timeout.
    pub async fn handshake_with(
        io: S,
        initiator: bool,
        key_pair: KeyPair,
        pattern: Pattern,
        remote_public_key: Option<[u8; 32]>,
        timeout: Duration,
    ) -> Result<Self, SecretStreamError> {
        let (read, write) = tokio::io::split(io);
        let mut frames = FrameReader::new(read);
        let mut write = write;
        let work = async {
            let mut noise = Handshake::new(pattern, initiator, key_pair, remote_public_key, &[])?;
            while noise.established().is_none() {
                if noise.is_my_turn() {
                    let message = noise.send(&[])?;
                    write_frame(&mut write, &message).await?;
                } else {
                    let message = frames
                        .next_frame(MAX_MESSAGE_LEN)
                        .await?
                        .ok_or(SecretStreamError::ClosedDuringHandshake)?;
                    noise.recv(&message)?;
                }
            }
            let established = noise
                .established()
                .cloned()
                .ok_or(HandshakeError::OutOfTurn("handshake did not finish"))?;
            Self::setup(frames, write, initiator, established).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| SecretStreamError::Timeout(timeout))?
    }

    /// Sets up the stream from a handshake done elsewhere (HyperDHT runs
    /// it over the DHT and hands the keys to the stream).
    pub async fn from_established(
        io: S,
        initiator: bool,
        established: Established,
    ) -> Result<Self, SecretStreamError> {
        let (read, write) = tokio::io::split(io);
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            Self::setup(FrameReader::new(read), write, initiator, established),
        )
        .await
        .map_err(|_| SecretStreamError::Timeout(HANDSHAKE_TIMEOUT))?
    }

    async fn setup(
        mut frames: FrameReader<ReadHalf<S>>,
        mut write: WriteHalf<S>,
        initiator: bool,
        established: Established,
    ) -> Result<Self, SecretStreamError> {
        let (header, push) = PushStream::init(rand_core::OsRng, &Key::from(established.tx));
        let mut setup = Vec::with_capacity(SETUP_FRAME_LEN);
        setup.extend_from_slice(&stream_id(&established.hash, initiator));
        setup.extend_from_slice(header.as_ref());
        write_frame(&mut write, &setup).await?;

        let frame = frames
            .next_frame(SETUP_FRAME_LEN)
            .await
            .map_err(|error| match error {
                SecretStreamError::TooLarge(_) => {
                    SecretStreamError::InvalidSetup("the setup frame is not 56 bytes")
                }
                other => other,
            })?
            .ok_or(SecretStreamError::ClosedDuringHandshake)?;
        if frame.len() != SETUP_FRAME_LEN {
            return Err(SecretStreamError::InvalidSetup(
                "the setup frame is not 56 bytes",
            ));
        }
        if frame[..32] != stream_id(&established.hash, !initiator) {
            return Err(SecretStreamError::InvalidSetup(
                "the stream id does not match the handshake",
            ));
        }
        let header = Header::try_from(&frame[32..])
            .map_err(|_| SecretStreamError::InvalidSetup("bad secretstream header"))?;
        let pull = PullStream::init(header, &Key::from(established.rx));
        Ok(Self {
            reader: SecretReader {
                frames,
                pull,
                remote_public_key: established.remote_public_key,
            },
            writer: SecretWriter {
                io: write,
                push,
                initiator,
                handshake_hash: established.hash,
            },
        })
    }

    /// The peer's static public key, authenticated by the handshake.
    pub fn remote_public_key(&self) -> [u8; 32] {
        self.reader.remote_public_key
    }

    /// Whether this side started the handshake (dialed).
    pub fn is_initiator(&self) -> bool {
        self.writer.initiator
    }

    /// The handshake hash (64 bytes), the same on both sides.
    pub fn handshake_hash(&self) -> [u8; 64] {
        self.writer.handshake_hash
    }

    /// Encrypts and sends one message.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), SecretStreamError> {
        self.writer.send(message).await
    }

    /// The next message; `None` when the peer ended the stream cleanly.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, SecretStreamError> {
        self.reader.recv().await
    }

    /// Separates the two directions so they can run in different tasks.
    pub fn into_split(self) -> (SecretReader<ReadHalf<S>>, SecretWriter<WriteHalf<S>>) {
        (self.reader, self.writer)
    }
}

/// The receiving half.
pub struct SecretReader<R> {
    frames: FrameReader<R>,
    pull: PullStream,
    remote_public_key: [u8; 32],
}

impl<R: AsyncRead + Unpin> SecretReader<R> {
    /// The next message; `None` when the peer ended the stream cleanly.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, SecretStreamError> {
        let Some(mut frame) = self.frames.next_frame(MAX_FRAME_LEN).await? else {
            return Ok(None);
        };
        if frame.len() < MESSAGE_OVERHEAD {
            return Err(SecretStreamError::ShortFrame(frame.len()));
        }
        match self.pull.pull(&mut frame, &[]) {
            Ok(Tag::Message | Tag::Push) => Ok(Some(frame)),
            // The peer's final message (the npm stream never sends one;
            // treat its content as the last message).
            Ok(Tag::Final | Tag::Rekey) => Ok(Some(frame)),
            Err(_) => Err(SecretStreamError::Decrypt),
        }
    }

    /// The peer's static public key.
    pub fn remote_public_key(&self) -> [u8; 32] {
        self.remote_public_key
    }
}

/// The sending half.
pub struct SecretWriter<W> {
    io: W,
    push: PushStream,
    initiator: bool,
    handshake_hash: [u8; 64],
}

impl<W: AsyncWrite + Unpin> SecretWriter<W> {
    /// Encrypts and sends one message.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), SecretStreamError> {
        if message.len() > MAX_MESSAGE {
            return Err(SecretStreamError::TooLarge(message.len()));
        }
        let mut frame = Vec::with_capacity(3 + MESSAGE_OVERHEAD + message.len());
        frame.extend_from_slice(message);
        self.push
            .push(&mut frame, &[], Tag::Message)
            .map_err(|_| SecretStreamError::TooLarge(message.len()))?;
        write_frame(&mut self.io, &frame).await
    }

    /// Ends our direction (the peer's `recv` returns `None`).
    pub async fn close(&mut self) -> Result<(), SecretStreamError> {
        self.io.shutdown().await?;
        Ok(())
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    body: &[u8],
) -> Result<(), SecretStreamError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME_LEN)
        .ok_or(SecretStreamError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(3 + body.len());
    frame.extend_from_slice(&len.to_le_bytes()[..3]);
    frame.extend_from_slice(body);
    io.write_all(&frame).await?;
    io.flush().await?;
    Ok(())
}

/// Reads length-prefixed frames.
struct FrameReader<R> {
    io: R,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(io: R) -> Self {
        Self { io }
    }

    /// The next frame, at most `limit` bytes; `None` on a clean end of
    /// stream between frames.
    async fn next_frame(&mut self, limit: usize) -> Result<Option<Vec<u8>>, SecretStreamError> {
        let mut prefix = [0u8; 3];
        let mut filled = 0;
        while filled < 3 {
            let read = self.io.read(&mut prefix[filled..]).await?;
            if read == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(SecretStreamError::Truncated)
                };
            }
            filled += read;
        }
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], 0]) as usize;
        if len > limit {
            return Err(SecretStreamError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await.map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                SecretStreamError::Truncated
            } else {
                SecretStreamError::Io(error)
            }
        })?;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_match_hypercore_crypto() {
        // From node: require('hypercore-crypto').namespace('hyperswarm/secret-stream', 3)
        assert_eq!(
            hex(&namespace("hyperswarm/secret-stream", 0)),
            "a931a0155b5c09e6d28628236af83c4b8a6af9af60986edeede9dc5d63192bf7"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[tokio::test]
    async fn two_rust_peers_exchange_messages_and_reject_garbage() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let alice = KeyPair::from_seed([7; 32]);
        let bob = KeyPair::from_seed([8; 32]);
        let (alice_public, bob_public) = (alice.public_key(), bob.public_key());
        let (left, right) = tokio::join!(
            SecretStream::handshake(a, true, alice),
            SecretStream::handshake(b, false, bob)
        );
        let (mut left, mut right) = (left.unwrap(), right.unwrap());
        assert_eq!(left.remote_public_key(), bob_public);
        assert_eq!(right.remote_public_key(), alice_public);
        assert_eq!(left.handshake_hash(), right.handshake_hash());
        for message in [&b"hello"[..], b"", &[9u8; 40_000]] {
            left.send(message).await.unwrap();
            assert_eq!(right.recv().await.unwrap().unwrap(), message);
            right.send(message).await.unwrap();
            assert_eq!(left.recv().await.unwrap().unwrap(), message);
        }
        left.writer.close().await.unwrap();
        assert_eq!(right.recv().await.unwrap(), None);

        // Garbage instead of a handshake: an error, not a hang or a panic.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(&[5, 0, 0, 1, 2, 3, 4, 5]).await.unwrap();
        drop(b);
        let result = SecretStream::handshake(a, false, KeyPair::generate()).await;
        assert!(matches!(result, Err(SecretStreamError::Handshake(_))));

        // Silence: the timeout fires.
        let (a, _b) = tokio::io::duplex(1 << 16);
        let result = SecretStream::handshake_with(
            a,
            false,
            KeyPair::generate(),
            Pattern::XX,
            None,
            Duration::from_millis(50),
        )
        .await;
        assert!(matches!(result, Err(SecretStreamError::Timeout(_))));
    }
}
