//! Sync over Hyperswarm (native, feature `hyperswarm`): a [`Connector`]
//! that finds the other replicas of a database on HyperDHT and carries the
//! same sealed envelopes as the relay, peer to peer.
//!
//! - **Discovery.** The sync topic (derived from the join key, see
//!   [`crate::sync::crypto`]; the relay's topic too) is announced with this replica's key pair and
//!   looked up every few seconds; the replica also listens as a HyperDHT
//!   server for its own key.
//! - **One connection per pair.** Of two replicas that found each other,
//!   the one with the larger public key dials. The smaller one dials too
//!   if no connection came after [`PATIENCE`] lookups: a Node `hyperswarm`
//!   peer looks a topic up only when it joins and then every ten minutes,
//!   so it may never dial a replica that announced after it. When a second
//!   connection to a connected key arrives anyway (npm `hyperswarm` dials
//!   whatever it finds, and a peer that lost its connection dials again),
//!   the rule is Hyperswarm's, so both ends keep the same one: the new
//!   connection replaces the old if the old has carried messages both ways
//!   (the peer must have lost it), else the one dialed by the larger key
//!   stays.
//! - **No loops.** Envelopes go to directly connected peers only and are
//!   never forwarded, so nothing circulates. Every new peer gets this
//!   session's hello (the first envelope the sync engine sends) so it
//!   answers with what this replica lacks; the engine answers its hello
//!   with a delta.
//! - **No store.** There is no backlog: a "keep" envelope counts as stored
//!   when handed to the connected peers, and replicas that were offline
//!   catch up through the hello/delta exchange when they connect.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc as futures_mpsc;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Connector, Link, Outgoing, Rendezvous, TransportEvent};
use crate::hyperswarm::hyperdht::{AnnouncementGuard, HyperDht};
use crate::hyperswarm::udx::UdxStream;
use crate::hyperswarm::{KeyPair, SecretStream};
use crate::platform::BoxFuture;
use crate::sync::Topic;

/// How often the topic is looked up for new replicas.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(3);

/// After this many lookups that found a replica with a larger key still
/// unconnected, this side dials it itself.
const PATIENCE: u32 = 2;

/// Connects through HyperDHT, bootstrapping from `bootstrap`.
#[derive(Debug, Clone)]
pub struct HyperswarmConnector {
    bind: SocketAddrV4,
    bootstrap: Vec<SocketAddrV4>,
    key_pair: KeyPair,
    relay_through: Option<[u8; 32]>,
}

/// The public HyperDHT bootstrap nodes (as npm `hyperdht` lists them).
pub const PUBLIC_BOOTSTRAP: [SocketAddrV4; 3] = [
    SocketAddrV4::new(std::net::Ipv4Addr::new(88, 99, 3, 86), 49737),
    SocketAddrV4::new(std::net::Ipv4Addr::new(142, 93, 90, 113), 49737),
    SocketAddrV4::new(std::net::Ipv4Addr::new(138, 68, 147, 8), 49737),
];

impl HyperswarmConnector {
    /// A connector whose node binds `bind` (port 0 for any) and joins the
    /// DHT through `bootstrap`, with a fresh key pair.
    pub fn new(bind: SocketAddrV4, bootstrap: Vec<SocketAddrV4>) -> Self {
        Self {
            bind,
            bootstrap,
            key_pair: KeyPair::generate(),
            relay_through: None,
        }
    }

    /// Connections fall back to the blind relay `relay` (its public key)
    /// when holepunching fails, as between two randomizing NATs.
    pub fn with_relay_through(mut self, relay: [u8; 32]) -> Self {
        self.relay_through = Some(relay);
        self
    }

    async fn open(&self, topic: Topic) -> Result<Link, String> {
        let mut dht = HyperDht::bind(self.bind, self.bootstrap.clone())
            .await
            .map_err(|error| format!("cannot start the DHT node: {error}"))?;
        if let Some(relay) = self.relay_through {
            dht = dht.with_relay_through(relay);
        }
        let dht = Arc::new(dht);
        let accepted = dht
            .listen(self.key_pair.clone())
            .await
            .map_err(|error| format!("cannot listen on the DHT: {error}"))?;
        let announced = dht
            .keep_announced(topic, self.key_pair.clone())
            .await
            .map_err(|error| format!("cannot announce the database: {error}"))?;
        let (events, inbound) = futures_mpsc::unbounded();
        let (outbound, to_send) = futures_mpsc::unbounded::<Outgoing>();
        let _ = events.unbounded_send(TransportEvent::Welcome { members: 0 });
        let swarm = Swarm {
            dht,
            _announced: announced,
            key_pair: self.key_pair.clone(),
            topic,
            events,
            peers: HashMap::new(),
            hello: None,
            next_connection: 0,
            dialing: HashSet::new(),
            waiting_for: HashMap::new(),
        };
        tokio::spawn(swarm.run(accepted, to_send));
        Ok(Link { outbound, inbound })
    }
}

impl Connector for HyperswarmConnector {
    fn connect(&self, rendezvous: Rendezvous, _cursor: u64) -> BoxFuture<'_, Result<Link, String>> {
        Box::pin(self.open(rendezvous.topic))
    }

    fn describe(&self) -> String {
        format!("hyperswarm via {} bootstrap node(s)", self.bootstrap.len())
    }
}

/// A connected peer: where its envelopes go.
struct Peer {
    public_key: [u8; 32],
    send: mpsc::UnboundedSender<Vec<u8>>,
    /// A message has been received on the connection.
    has_read: Arc<AtomicBool>,
    /// A message has been sent on the connection.
    has_written: Arc<AtomicBool>,
}

/// Hyperswarm's rule for a second connection to a connected peer: keep the
/// new one if the existing one has carried messages both ways (the peer
/// must have lost it and dialed again), else keep the one the larger key
/// dialed.
fn keep_new_connection(
    existing: &Peer,
    ours: &[u8; 32],
    theirs: &[u8; 32],
    new_initiator: bool,
) -> bool {
    let existing_is_outdated =
        existing.has_read.load(Ordering::Relaxed) && existing.has_written.load(Ordering::Relaxed);
    let expected_initiator = ours > theirs;
    existing_is_outdated || expected_initiator == new_initiator
}

/// One session: ends, with everything it started (the server, the
/// renewals, the connections), when the sync engine drops its link.
struct Swarm {
    dht: Arc<HyperDht>,
    _announced: AnnouncementGuard,
    key_pair: KeyPair,
    topic: Topic,
    events: futures_mpsc::UnboundedSender<TransportEvent>,
    peers: HashMap<u64, Peer>,
    hello: Option<Vec<u8>>,
    next_connection: u64,
    /// Keys being dialed now.
    dialing: HashSet<[u8; 32]>,
    /// Larger keys found unconnected, by how many lookups in a row.
    waiting_for: HashMap<[u8; 32], u32>,
}

/// The end of a dial: the key, and the stream if it connected.
type Dialed = ([u8; 32], Option<SecretStream<UdxStream>>);

impl Swarm {
    async fn run(
        mut self,
        mut accepted: mpsc::Receiver<SecretStream<UdxStream>>,
        mut to_send: futures_mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let (received, mut from_peers) = mpsc::unbounded_channel::<(u64, Option<Vec<u8>>)>();
        let (dialed, mut dials) = mpsc::unbounded_channel::<Dialed>();
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
                Some((key, stream)) = dials.recv() => {
                    self.dialing.remove(&key);
                    if let Some(stream) = stream {
                        self.add(stream, &received);
                    }
                }
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

    /// Looks the topic up and dials the replicas found that are neither
    /// connected nor being dialed: those with a smaller key at once, those
    /// with a larger key once they have had [`PATIENCE`] lookups to dial.
    async fn dial_new_peers(&mut self, dialed: &mpsc::UnboundedSender<Dialed>) {
        let Ok(records) = self.dht.lookup(self.topic).await else {
            return;
        };
        let ours = self.key_pair.public_key();
        let mut still_waiting = HashMap::new();
        for record in records {
            let theirs = record.public_key;
            if theirs == ours
                || self.dialing.contains(&theirs)
                || self.peers.values().any(|peer| peer.public_key == theirs)
            {
                continue;
            }
            if theirs > ours {
                let lookups = self.waiting_for.get(&theirs).copied().unwrap_or(0) + 1;
                if lookups <= PATIENCE {
                    still_waiting.insert(theirs, lookups);
                    continue;
                }
            }
            self.dialing.insert(theirs);
            let (dht, key_pair, dialed) = (self.dht.clone(), self.key_pair.clone(), dialed.clone());
            tokio::spawn(async move {
                let stream = match dht.connect(&key_pair, theirs).await {
                    Ok(stream) => Some(stream),
                    Err(error) => {
                        tracing::debug!(%error, "hyperswarm: dialing a replica failed");
                        None
                    }
                };
                let _ = dialed.send((theirs, stream));
            });
        }
        self.waiting_for = still_waiting;
    }

    fn add(
        &mut self,
        stream: SecretStream<UdxStream>,
        received: &mpsc::UnboundedSender<(u64, Option<Vec<u8>>)>,
    ) {
        let public_key = stream.remote_public_key();
        let ours = self.key_pair.public_key();
        let existing = self
            .peers
            .iter()
            .find(|(_, peer)| peer.public_key == public_key)
            .map(|(connection, peer)| {
                let keep_new = keep_new_connection(peer, &ours, &public_key, stream.is_initiator());
                (*connection, keep_new)
            });
        match existing {
            Some((_, false)) => return, // keep the connection we have
            Some((old, true)) => {
                // Dropping its sender ends the old connection's writer,
                // which closes the stream.
                self.peers.remove(&old);
                let members = self.peers.len() as u32;
                let _ = self.events.unbounded_send(TransportEvent::Member {
                    joined: false,
                    connection: old,
                    members,
                });
            }
            None => {}
        }
        self.next_connection += 1;
        let connection = self.next_connection;
        let (has_read, has_written) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (mut reader, mut writer) = stream.into_split();
        let (send, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        if let Some(hello) = &self.hello {
            let _ = send.send(hello.clone());
        }
        let written = has_written.clone();
        tokio::spawn(async move {
            while let Some(envelope) = outgoing.recv().await {
                if writer.send(&envelope).await.is_err() {
                    break;
                }
                written.store(true, Ordering::Relaxed);
            }
            let _ = writer.close().await;
        });
        let received = received.clone();
        let read = has_read.clone();
        tokio::spawn(async move {
            while let Ok(Some(envelope)) = reader.recv().await {
                read.store(true, Ordering::Relaxed);
                if envelope.is_empty() {
                    continue; // keep-alive
                }
                if received.send((connection, Some(envelope))).is_err() {
                    return;
                }
            }
            let _ = received.send((connection, None));
        });
        self.peers.insert(
            connection,
            Peer {
                public_key,
                send,
                has_read,
                has_written,
            },
        );
        let members = self.peers.len() as u32;
        let _ = self.events.unbounded_send(TransportEvent::Member {
            joined: true,
            connection,
            members,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(has_read: bool, has_written: bool) -> Peer {
        Peer {
            public_key: [0; 32],
            send: mpsc::unbounded_channel().0,
            has_read: Arc::new(AtomicBool::new(has_read)),
            has_written: Arc::new(AtomicBool::new(has_written)),
        }
    }

    #[test]
    fn duplicate_connections_follow_the_hyperswarm_rule() {
        let (small, large) = ([1; 32], [2; 32]);
        let fresh = peer(false, true);
        // Neither outdated: keep whichever the larger key dialed, on both ends.
        assert!(keep_new_connection(&fresh, &large, &small, true));
        assert!(!keep_new_connection(&fresh, &large, &small, false));
        assert!(keep_new_connection(&fresh, &small, &large, false));
        assert!(!keep_new_connection(&fresh, &small, &large, true));
        // An existing connection that carried messages both ways was lost by
        // the peer, which dialed again: the new one wins whoever dialed.
        let used = peer(true, true);
        assert!(keep_new_connection(&used, &large, &small, false));
        assert!(keep_new_connection(&used, &small, &large, true));
    }
}
