//! Sync over Hyperswarm (native, feature `hyperswarm`): a [`Connector`]
//! that finds the other replicas of a database on HyperDHT and carries the
//! same sealed envelopes as the relay, peer to peer.
//!
//! - **Discovery.** The sync topic (BLAKE2b-256 of the database id, the
//!   relay's topic too) is announced with this replica's key pair and
//!   looked up every few seconds; the replica also listens as a HyperDHT
//!   server for its own key.
//! - **One connection per pair.** Of two replicas that found each other,
//!   only the one with the larger public key dials; a second connection to
//!   a key already connected is dropped.
//! - **No loops.** Envelopes go to directly connected peers only and are
//!   never forwarded, so nothing circulates. Every new peer gets this
//!   session's hello (the first envelope the sync engine sends) so it
//!   answers with what this replica lacks; the engine answers its hello
//!   with a delta.
//! - **No store.** There is no backlog: a "keep" envelope counts as stored
//!   when handed to the connected peers, and replicas that were offline
//!   catch up through the hello/delta exchange when they connect.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc as futures_mpsc;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Connector, Link, Outgoing, TransportEvent};
use crate::hyperswarm::hyperdht::HyperDht;
use crate::hyperswarm::udx::UdxStream;
use crate::hyperswarm::{KeyPair, SecretStream};
use crate::platform::BoxFuture;
use crate::sync::Topic;

/// How often the topic is looked up for new replicas.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(3);

/// Connects through HyperDHT, bootstrapping from `bootstrap`.
#[derive(Debug, Clone)]
pub struct HyperswarmConnector {
    bind: SocketAddrV4,
    bootstrap: Vec<SocketAddrV4>,
    key_pair: KeyPair,
}

impl HyperswarmConnector {
    /// A connector whose node binds `bind` (port 0 for any) and joins the
    /// DHT through `bootstrap`, with a fresh key pair.
    pub fn new(bind: SocketAddrV4, bootstrap: Vec<SocketAddrV4>) -> Self {
        Self {
            bind,
            bootstrap,
            key_pair: KeyPair::generate(),
        }
    }

    async fn open(&self, topic: Topic) -> Result<Link, String> {
        let dht = Arc::new(
            HyperDht::bind(self.bind, self.bootstrap.clone())
                .await
                .map_err(|error| format!("cannot start the DHT node: {error}"))?,
        );
        let accepted = dht
            .listen(self.key_pair.clone())
            .await
            .map_err(|error| format!("cannot listen on the DHT: {error}"))?;
        dht.announce(topic, &self.key_pair)
            .await
            .map_err(|error| format!("cannot announce the database: {error}"))?;
        let (events, inbound) = futures_mpsc::unbounded();
        let (outbound, to_send) = futures_mpsc::unbounded::<Outgoing>();
        let _ = events.unbounded_send(TransportEvent::Welcome { members: 0 });
        let swarm = Swarm {
            dht,
            key_pair: self.key_pair.clone(),
            topic,
            events,
            peers: HashMap::new(),
            hello: None,
            next_connection: 0,
        };
        tokio::spawn(swarm.run(accepted, to_send));
        Ok(Link { outbound, inbound })
    }
}

impl Connector for HyperswarmConnector {
    fn connect(&self, topic: Topic, _cursor: u64) -> BoxFuture<'_, Result<Link, String>> {
        Box::pin(self.open(topic))
    }

    fn describe(&self) -> String {
        format!("hyperswarm via {} bootstrap node(s)", self.bootstrap.len())
    }
}

/// A connected peer: where its envelopes go.
struct Peer {
    public_key: [u8; 32],
    send: mpsc::UnboundedSender<Vec<u8>>,
}

struct Swarm {
    dht: Arc<HyperDht>,
    key_pair: KeyPair,
    topic: Topic,
    events: futures_mpsc::UnboundedSender<TransportEvent>,
    peers: HashMap<u64, Peer>,
    hello: Option<Vec<u8>>,
    next_connection: u64,
}

impl Swarm {
    async fn run(
        mut self,
        mut accepted: mpsc::Receiver<SecretStream<UdxStream>>,
        mut to_send: futures_mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let (received, mut from_peers) = mpsc::unbounded_channel::<(u64, Option<Vec<u8>>)>();
        let (dialed, mut dials) = mpsc::unbounded_channel::<SecretStream<UdxStream>>();
        let mut lookup = tokio::time::interval(LOOKUP_INTERVAL);
        let mut sequence = 0u32;
        loop {
            tokio::select! {
                outgoing = to_send.next() => {
                    // The engine dropped the link: the session is over.
                    let Some(Outgoing { envelope, keep }) = outgoing else { break };
                    if self.hello.is_none() {
                        self.hello = Some(envelope.clone());
                    }
                    self.peers.retain(|_, peer| peer.send.send(envelope.clone()).is_ok());
                    if keep {
                        let _ = self.events.unbounded_send(TransportEvent::Stored { sequence, cursor: 0 });
                    }
                    sequence = sequence.wrapping_add(1);
                }
                Some(stream) = accepted.recv() => self.add(stream, &received),
                Some(stream) = dials.recv() => self.add(stream, &received),
                Some((connection, envelope)) = from_peers.recv() => match envelope {
                    Some(envelope) => {
                        let _ = self.events.unbounded_send(TransportEvent::Envelope { envelope, cursor: None, from: connection });
                    }
                    None => {
                        if self.peers.remove(&connection).is_some() {
                            let members = self.peers.len() as u32;
                            let _ = self.events.unbounded_send(TransportEvent::Member { joined: false, connection, members });
                        }
                    }
                },
                _ = lookup.tick() => self.dial_new_peers(&dialed).await,
            }
        }
        let _ = self.events.unbounded_send(TransportEvent::Closed {
            reason: "the sync session ended".into(),
        });
    }

    /// Looks the topic up and dials replicas with a smaller key that are
    /// not connected yet (the larger key dials, so one connection per pair).
    async fn dial_new_peers(&self, dialed: &mpsc::UnboundedSender<SecretStream<UdxStream>>) {
        let Ok(records) = self.dht.lookup(self.topic).await else {
            return;
        };
        let ours = self.key_pair.public_key();
        for record in records {
            let theirs = record.public_key;
            if theirs >= ours || self.peers.values().any(|peer| peer.public_key == theirs) {
                continue;
            }
            let (dht, key_pair, dialed) = (self.dht.clone(), self.key_pair.clone(), dialed.clone());
            tokio::spawn(async move {
                match dht.connect(&key_pair, theirs).await {
                    Ok(stream) => {
                        let _ = dialed.send(stream);
                    }
                    Err(error) => tracing::debug!(%error, "hyperswarm: dialing a replica failed"),
                }
            });
        }
    }

    fn add(
        &mut self,
        stream: SecretStream<UdxStream>,
        received: &mpsc::UnboundedSender<(u64, Option<Vec<u8>>)>,
    ) {
        let public_key = stream.remote_public_key();
        if self
            .peers
            .values()
            .any(|peer| peer.public_key == public_key)
        {
            return; // already connected to this replica
        }
        self.next_connection += 1;
        let connection = self.next_connection;
        let (mut reader, mut writer) = stream.into_split();
        let (send, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        if let Some(hello) = &self.hello {
            let _ = send.send(hello.clone());
        }
        tokio::spawn(async move {
            while let Some(envelope) = outgoing.recv().await {
                if writer.send(&envelope).await.is_err() {
                    break;
                }
            }
            let _ = writer.close().await;
        });
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(envelope)) = reader.recv().await {
                if envelope.is_empty() {
                    continue; // keep-alive
                }
                if received.send((connection, Some(envelope))).is_err() {
                    return;
                }
            }
            let _ = received.send((connection, None));
        });
        self.peers.insert(connection, Peer { public_key, send });
        let members = self.peers.len() as u32;
        let _ = self.events.unbounded_send(TransportEvent::Member {
            joined: true,
            connection,
            members,
        });
    }
}
