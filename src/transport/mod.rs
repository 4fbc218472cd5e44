//! Transports: how sealed sync envelopes travel. Each connects to a topic
//! and yields a [`Link`]: a queue of envelopes to publish and a stream of
//! [`TransportEvent`]s. The relay client exists natively
//! (`tokio-tungstenite`) and in the browser (`WebSocket`); in wasm a
//! transport written in JavaScript plugs in through [`JsConnector`]
//! (the npm package's Hyperswarm adapter is one); the sync engine
//! (`Database::sync`) drives any [`Connector`].

use futures::channel::mpsc;

use crate::platform::{BoxFuture, MaybeSend, MaybeSync};
use crate::sync::{JoinKey, SyncIdentity, Topic};

#[cfg(all(feature = "hyperswarm", not(target_arch = "wasm32")))]
pub mod hyperswarm;
#[cfg(target_arch = "wasm32")]
pub mod js_transport;
#[cfg(not(target_arch = "wasm32"))]
pub mod relay_native;
#[cfg(target_arch = "wasm32")]
pub mod relay_web;

#[cfg(all(feature = "hyperswarm", not(target_arch = "wasm32")))]
pub use hyperswarm::HyperswarmConnector;
#[cfg(target_arch = "wasm32")]
pub use js_transport::JsConnector;
#[cfg(not(target_arch = "wasm32"))]
pub use relay_native::RelayConnector;
#[cfg(target_arch = "wasm32")]
pub use relay_web::RelayConnector;

/// What a connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// Connected; `members` other members are on the topic.
    Welcome {
        /// Other members.
        members: u32,
    },
    /// An envelope from another member.
    Envelope {
        /// The sealed envelope.
        envelope: Vec<u8>,
        /// The relay's backlog cursor after this envelope, if kept.
        cursor: Option<u64>,
        /// The sender's connection (0 when replayed from a backlog).
        from: u64,
    },
    /// The `sequence`-th published envelope (counting from 0 on this
    /// connection) is stored.
    Stored {
        /// Which publish.
        sequence: u32,
        /// Its backlog cursor.
        cursor: u64,
    },
    /// Another member joined (`true`) or left.
    Member {
        /// Joined or left.
        joined: bool,
        /// Its connection id.
        connection: u64,
        /// Other members now.
        members: u32,
    },
    /// The connection ended.
    Closed {
        /// Why.
        reason: String,
    },
}

/// An envelope to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The sealed envelope.
    pub envelope: Vec<u8>,
    /// Keep it for members not online now (live changes); otherwise only
    /// current members receive it (hellos, deltas, acks).
    pub keep: bool,
}

/// A live connection to a topic.
pub struct Link {
    /// Envelopes to publish, in order.
    pub outbound: mpsc::UnboundedSender<Outgoing>,
    /// What happens on the connection; ends after [`TransportEvent::Closed`].
    pub inbound: mpsc::UnboundedReceiver<TransportEvent>,
}

/// Where the replicas of one database meet: the public topic, and the join
/// key that proves to a relay the right to join it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rendezvous {
    /// The topic (public: relays and the DHT see it).
    pub topic: Topic,
    /// The join key (secret: only replicas and the relays they join see it).
    pub join_key: JoinKey,
}

impl Rendezvous {
    /// The rendezvous of a sync identity.
    pub fn of(identity: &SyncIdentity) -> Self {
        Self {
            topic: identity.topic(),
            join_key: identity.join_key(),
        }
    }
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the join key.
        f.debug_struct("Rendezvous")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Something that connects to topics.
pub trait Connector: MaybeSend + MaybeSync + 'static {
    /// Connects to the topic of `rendezvous`, asking for stored envelopes
    /// after `cursor`.
    fn connect(&self, rendezvous: Rendezvous, cursor: u64) -> BoxFuture<'_, Result<Link, String>>;

    /// For status output and logs.
    fn describe(&self) -> String;
}
