//! Relay framing: the binary WebSocket messages between a client and a
//! relay server. The relay only ever sees topics and sealed envelopes.
//!
//! ```text
//! client -> relay
//!   0x01 JOIN     u8 version (2), [32] join key, u64 since   (backlog cursor; 0 = everything kept)
//!   0x02 PUBLISH  u32 client sequence, u8 flags (bit 0: keep in the backlog), envelope (rest)
//! relay -> client
//!   0x81 WELCOME  u64 backlog head, u64 your connection id, u32 other members
//!   0x82 FRAME    u64 backlog sequence (0 when not kept), u64 sender connection id, envelope
//!   0x83 STORED   u32 client sequence, u64 backlog sequence
//!   0x84 MEMBERS  u32 other members, u8 change (1 joined, 2 left), u64 connection id
//!   0x85 ERROR    u16 code, u32 length, UTF-8 message
//! ```
//!
//! The relay derives the topic from the join key
//! ([`topic_of`](super::crypto::topic_of)), so only holders of the sync
//! secret can join: knowing a topic or a database id gains nothing.
//! Liveness uses WebSocket ping/pong. Every integer is little-endian.

use super::crypto::JoinKey;
use crate::codec::{Reader, Writer};
use crate::error::DecodeError;

/// Version of the relay framing sent in JOIN (2: join keys instead of
/// topics).
pub const RELAY_VERSION: u8 = 2;

/// Error codes in ERROR frames (the connection closes after one).
pub mod codes {
    /// The frame could not be decoded, or a PUBLISH carries no sealed
    /// envelope.
    pub const MALFORMED: u16 = 1;
    /// The frame exceeds the relay's size limit.
    pub const TOO_LARGE: u16 = 2;
    /// The client sends faster than the relay allows. Relays of framing
    /// version 2 slow a fast client down (they read from it more slowly)
    /// instead of sending this.
    pub const RATE_LIMITED: u16 = 3;
    /// The topic (or the relay) has as many connections as it takes.
    pub const FULL: u16 = 4;
    /// PUBLISH before JOIN, or a second JOIN.
    pub const PROTOCOL: u16 = 5;
    /// An unsupported framing version.
    pub const VERSION: u16 = 6;
    /// No traffic (not even pongs) for too long.
    pub const IDLE: u16 = 7;
    /// The relay could not keep an envelope in its backlog (disk full, I/O
    /// error): nothing of that PUBLISH was stored or delivered; publish it
    /// again later.
    pub const STORAGE: u16 = 8;
    /// The client did not read what the relay sent it fast enough (its
    /// queue passed the relay's byte budget): it was dropped, and catches
    /// up from the backlog when it reconnects.
    pub const SLOW: u16 = 9;
}

/// A client-to-relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Join a topic and ask for the backlog after `since`.
    Join {
        /// Framing version.
        version: u8,
        /// The join key; the topic is [`topic_of`](super::crypto::topic_of)
        /// it.
        join_key: JoinKey,
        /// The last backlog sequence this client saw (0: all).
        since: u64,
    },
    /// Send an envelope to the topic's other members (and the backlog).
    Publish {
        /// Echoed in STORED.
        sequence: u32,
        /// Keep it in the backlog for members not online now (otherwise it
        /// only reaches current members).
        keep: bool,
        /// The sealed envelope.
        envelope: Vec<u8>,
    },
}

/// A relay-to-client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayFrame {
    /// The join succeeded.
    Welcome {
        /// The newest backlog sequence of the topic.
        head: u64,
        /// This connection's id on the relay.
        connection: u64,
        /// Members besides this one.
        members: u32,
    },
    /// An envelope from another member (live or from the backlog).
    Frame {
        /// Its backlog sequence (0 when the relay did not keep it).
        sequence: u64,
        /// The sending connection (0 when replayed from the backlog).
        from: u64,
        /// The sealed envelope.
        envelope: Vec<u8>,
    },
    /// A published envelope is stored in the backlog.
    Stored {
        /// The client's sequence.
        sequence: u32,
        /// The backlog sequence it got.
        backlog: u64,
    },
    /// Another member joined or left.
    Members {
        /// Members besides this one, after the change.
        members: u32,
        /// Whether `connection` joined.
        joined: bool,
        /// The connection that joined or left.
        connection: u64,
    },
    /// The relay refused something; it closes the connection.
    Error {
        /// One of [`codes`].
        code: u16,
        /// A human-readable reason.
        message: String,
    },
}

impl ClientFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut writer = Writer::new();
        match self {
            ClientFrame::Join {
                version,
                join_key,
                since,
            } => {
                writer.u8(0x01).u8(*version).raw(join_key).u64(*since);
            }
            ClientFrame::Publish {
                sequence,
                keep,
                envelope,
            } => {
                writer
                    .u8(0x02)
                    .u32(*sequence)
                    .u8(u8::from(*keep))
                    .raw(envelope);
            }
        }
        writer.finish()
    }

    /// Decodes a frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let frame = match reader.u8()? {
            0x01 => ClientFrame::Join {
                version: reader.u8()?,
                join_key: reader.array()?,
                since: reader.u64()?,
            },
            0x02 => {
                let sequence = reader.u32()?;
                let flags = reader.u8()?;
                if flags & !1 != 0 {
                    return Err(DecodeError::Invalid(format!(
                        "unknown publish flags {flags:#04x}"
                    )));
                }
                ClientFrame::Publish {
                    sequence,
                    keep: flags & 1 == 1,
                    envelope: reader.take(reader.remaining())?.to_vec(),
                }
            }
            other => {
                return Err(DecodeError::Invalid(format!(
                    "unknown client frame {other:#04x}"
                )))
            }
        };
        reader.finish()?;
        Ok(frame)
    }
}

impl RelayFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut writer = Writer::new();
        match self {
            RelayFrame::Welcome {
                head,
                connection,
                members,
            } => {
                writer.u8(0x81).u64(*head).u64(*connection).u32(*members);
            }
            RelayFrame::Frame {
                sequence,
                from,
                envelope,
            } => {
                writer.u8(0x82).u64(*sequence).u64(*from).raw(envelope);
            }
            RelayFrame::Stored { sequence, backlog } => {
                writer.u8(0x83).u32(*sequence).u64(*backlog);
            }
            RelayFrame::Members {
                members,
                joined,
                connection,
            } => {
                writer
                    .u8(0x84)
                    .u32(*members)
                    .u8(if *joined { 1 } else { 2 })
                    .u64(*connection);
            }
            RelayFrame::Error { code, message } => {
                writer.u8(0x85).u16(*code).str(message);
            }
        }
        writer.finish()
    }

    /// Decodes a frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let frame = match reader.u8()? {
            0x81 => RelayFrame::Welcome {
                head: reader.u64()?,
                connection: reader.u64()?,
                members: reader.u32()?,
            },
            0x82 => RelayFrame::Frame {
                sequence: reader.u64()?,
                from: reader.u64()?,
                envelope: reader.take(reader.remaining())?.to_vec(),
            },
            0x83 => RelayFrame::Stored {
                sequence: reader.u32()?,
                backlog: reader.u64()?,
            },
            0x84 => {
                let members = reader.u32()?;
                let joined = match reader.u8()? {
                    1 => true,
                    2 => false,
                    other => {
                        return Err(DecodeError::Invalid(format!(
                            "unknown member change {other}"
                        )))
                    }
                };
                RelayFrame::Members {
                    members,
                    joined,
                    connection: reader.u64()?,
                }
            }
            0x85 => RelayFrame::Error {
                code: reader.u16()?,
                message: reader.str()?.to_owned(),
            },
            other => {
                return Err(DecodeError::Invalid(format!(
                    "unknown relay frame {other:#04x}"
                )))
            }
        };
        reader.finish()?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let client = [
            ClientFrame::Join {
                version: RELAY_VERSION,
                join_key: [9; 32],
                since: 42,
            },
            ClientFrame::Publish {
                sequence: 7,
                keep: true,
                envelope: vec![1, 2, 3],
            },
        ];
        for frame in client {
            assert_eq!(ClientFrame::decode(&frame.encode()).unwrap(), frame);
        }
        let relay = [
            RelayFrame::Welcome {
                head: 5,
                connection: 3,
                members: 2,
            },
            RelayFrame::Frame {
                sequence: 6,
                from: 3,
                envelope: vec![4; 50],
            },
            RelayFrame::Stored {
                sequence: 7,
                backlog: 8,
            },
            RelayFrame::Members {
                members: 0,
                joined: false,
                connection: 9,
            },
            RelayFrame::Error {
                code: codes::TOO_LARGE,
                message: "too large".into(),
            },
        ];
        for frame in relay {
            assert_eq!(RelayFrame::decode(&frame.encode()).unwrap(), frame);
        }
        for bad in [
            &[][..],
            &[0x01, 1][..],
            &[0x09][..],
            &[0x85, 1, 0, 9, 0, 0, 0][..],
        ] {
            assert!(ClientFrame::decode(bad).is_err() || RelayFrame::decode(bad).is_err());
        }
    }
}
