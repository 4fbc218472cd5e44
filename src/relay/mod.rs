//! The relay server (native): WebSocket clients join a topic, and every
//! envelope one member publishes is fanned out to the topic's other
//! members and kept in a bounded per-topic backlog in SQLite, so peers that
//! are never online at the same time still sync. The relay sees topics and
//! sealed envelopes only; it cannot read or forge data.
//!
//! Limits, each enforced per connection without disturbing others: frame
//! size, message rate (token bucket), members per topic, connections in
//! total, a join deadline, and an idle timeout driven by ping/pong. A
//! client that breaks a rule gets an ERROR frame and is disconnected; a
//! client too slow to keep up with its topic is disconnected rather than
//! slowing the others. Nothing a client sends can panic the relay.
//!
//! Framing: [`crate::sync::relay_frame`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::mpsc;

use crate::sync::relay_frame::{codes, ClientFrame, RelayFrame, RELAY_VERSION};
use crate::sync::Topic;

/// Relay limits and storage.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest WebSocket message accepted (bytes).
    pub max_frame: usize,
    /// Sustained messages per second per connection.
    pub rate_per_second: u32,
    /// Messages a connection may send in a burst.
    pub burst: u32,
    /// Members per topic.
    pub max_members_per_topic: usize,
    /// Connections in total.
    pub max_connections: usize,
    /// A client must JOIN within this time.
    pub join_timeout: Duration,
    /// How often the relay pings.
    pub ping_interval: Duration,
    /// A client silent (no frame, no pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// Envelopes kept per topic.
    pub backlog_frames: u64,
    /// The backlog's SQLite file (`None`: in memory).
    pub backlog_path: Option<PathBuf>,
    /// Caps the backlog file at about this many bytes (SQLite's
    /// `max_page_count`; `None`: no cap). A PUBLISH that cannot be kept
    /// once it is full is refused with a `STORAGE` error, never STORED.
    pub backlog_max_bytes: Option<u64>,
    /// Envelopes queued towards one member before it counts as too slow.
    pub member_queue: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_frame: 4 * 1024 * 1024,
            rate_per_second: 200,
            burst: 400,
            max_members_per_topic: 256,
            max_connections: 10_000,
            join_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            backlog_frames: 10_000,
            backlog_path: None,
            backlog_max_bytes: None,
            member_queue: 4096,
        }
    }
}

/// Counters, for status output and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Open connections.
    pub connections: usize,
    /// Topics with at least one member.
    pub topics: usize,
    /// Envelopes published.
    pub published: u64,
    /// Envelopes delivered to members (fan-out).
    pub delivered: u64,
    /// Connections closed for breaking a rule.
    pub refused: u64,
}

struct Member {
    sender: mpsc::Sender<Arc<Vec<u8>>>,
}

struct Backlog {
    connection: Connection,
    inserts_since_trim: u64,
}

struct Shared {
    config: RelayConfig,
    topics: Mutex<HashMap<Topic, HashMap<u64, Member>>>,
    backlog: Mutex<Backlog>,
    next_connection: AtomicU64,
    connections: AtomicUsize,
    published: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
}

/// A relay server; mount [`RelayServer::router`] on an axum server.
#[derive(Clone)]
pub struct RelayServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("stats", &self.stats())
            .finish()
    }
}

fn open_backlog(path: Option<&PathBuf>, max_bytes: Option<u64>) -> rusqlite::Result<Connection> {
    let connection = match path {
        Some(path) => Connection::open(path)?,
        None => Connection::open_in_memory()?,
    };
    if let Some(bytes) = max_bytes {
        let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages = (bytes / page_size.max(512) as u64).max(1);
        connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
    }
    connection.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS backlog (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             topic BLOB NOT NULL,
             envelope BLOB NOT NULL,
             stored_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS backlog_topic ON backlog (topic, seq);",
    )?;
    Ok(connection)
}

impl RelayServer {
    /// A relay with `config` (opens or creates the backlog file).
    pub fn new(config: RelayConfig) -> Result<Self, String> {
        let connection = open_backlog(config.backlog_path.as_ref(), config.backlog_max_bytes)
            .map_err(|e| {
                format!(
                    "cannot open the relay backlog {}: {e}",
                    config
                        .backlog_path
                        .as_ref()
                        .map_or(":memory:".into(), |p| p.display().to_string())
                )
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                topics: Mutex::new(HashMap::new()),
                backlog: Mutex::new(Backlog {
                    connection,
                    inserts_since_trim: 0,
                }),
                next_connection: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        })
    }

    /// Routes: `GET /` upgrades to the relay WebSocket. Nest it where the
    /// relay should live (`pluresdb serve` uses `/relay`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(upgrade))
            .with_state(self.clone())
    }

    /// Current counters.
    pub fn stats(&self) -> RelayStats {
        let shared = &self.shared;
        RelayStats {
            connections: shared.connections.load(Ordering::Relaxed),
            topics: shared.topics.lock().map(|t| t.len()).unwrap_or(0),
            published: shared.published.load(Ordering::Relaxed),
            delivered: shared.delivered.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
        }
    }
}

async fn upgrade(State(server): State<RelayServer>, upgrade: WebSocketUpgrade) -> Response {
    // Accept slightly more than the limit so an oversized frame gets a
    // proper ERROR instead of a torn connection.
    let limit = server.shared.config.max_frame + 1024;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            server.serve(socket).await;
        })
}

/// A token bucket.
struct Rate {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
}

impl Rate {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn refuse(socket: &mut WebSocket, code: u16, message: impl Into<String>) {
    let frame = RelayFrame::Error {
        code,
        message: message.into(),
    };
    let _ = socket.send(Message::Binary(frame.encode().into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

impl RelayServer {
    async fn serve(&self, mut socket: WebSocket) {
        let shared = &self.shared;
        let config = &shared.config;
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            refuse(
                &mut socket,
                codes::FULL,
                "the relay has as many connections as it takes",
            )
            .await;
            return;
        }
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let joined = self.join(&mut socket, id).await;
        if let Some((topic, receiver)) = joined {
            self.run(&mut socket, id, topic, receiver).await;
            self.leave(&topic, id);
        }
        shared.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Waits for JOIN, registers the member, welcomes it and replays the
    /// backlog.
    async fn join(
        &self,
        socket: &mut WebSocket,
        id: u64,
    ) -> Option<(Topic, mpsc::Receiver<Arc<Vec<u8>>>)> {
        let shared = &self.shared;
        let config = &shared.config;
        let first = tokio::time::timeout(config.join_timeout, socket.recv()).await;
        let bytes = match first {
            Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
            Ok(Some(Ok(_))) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                refuse(
                    socket,
                    codes::PROTOCOL,
                    "send JOIN first, as a binary message",
                )
                .await;
                return None;
            }
            Ok(_) => return None,
            Err(_) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                refuse(socket, codes::IDLE, "no JOIN in time").await;
                return None;
            }
        };
        let (topic, since) = match ClientFrame::decode(&bytes) {
            Ok(ClientFrame::Join {
                version: RELAY_VERSION,
                topic,
                since,
            }) => (topic, since),
            Ok(ClientFrame::Join { version, .. }) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                refuse(socket, codes::VERSION, format!("relay framing version {version} is not supported (this relay speaks {RELAY_VERSION})")).await;
                return None;
            }
            Ok(_) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                refuse(socket, codes::PROTOCOL, "send JOIN first").await;
                return None;
            }
            Err(error) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                refuse(socket, codes::MALFORMED, error.to_string()).await;
                return None;
            }
        };
        let (sender, receiver) = mpsc::channel(config.member_queue);
        let registered = {
            let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            let entry = topics.entry(topic).or_default();
            if entry.len() >= config.max_members_per_topic {
                None
            } else {
                let others: Vec<mpsc::Sender<Arc<Vec<u8>>>> =
                    entry.values().map(|m| m.sender.clone()).collect();
                entry.insert(id, Member { sender });
                Some((others, entry.len() as u32 - 1))
            }
        };
        let Some((others, members)) = registered else {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            refuse(
                socket,
                codes::FULL,
                "this topic has as many members as the relay takes",
            )
            .await;
            return None;
        };
        let head = self.backlog_head(&topic).await;
        let welcome = RelayFrame::Welcome {
            head,
            connection: id,
            members,
        };
        if socket
            .send(Message::Binary(welcome.encode().into()))
            .await
            .is_err()
        {
            self.leave(&topic, id);
            return None;
        }
        let change = Arc::new(
            RelayFrame::Members {
                members,
                joined: true,
                connection: id,
            }
            .encode(),
        );
        for other in others {
            let _ = other.try_send(change.clone());
        }
        // Replay what was kept after the client's cursor, in batches.
        let mut cursor = since;
        while cursor < head {
            let batch = self.backlog_after(&topic, cursor, head).await;
            if batch.is_empty() {
                break;
            }
            for (sequence, envelope) in batch {
                cursor = sequence;
                let frame = RelayFrame::Frame {
                    sequence,
                    from: 0,
                    envelope,
                };
                if socket
                    .send(Message::Binary(frame.encode().into()))
                    .await
                    .is_err()
                {
                    self.leave(&topic, id);
                    return None;
                }
            }
        }
        Some((topic, receiver))
    }

    async fn run(
        &self,
        socket: &mut WebSocket,
        id: u64,
        topic: Topic,
        mut receiver: mpsc::Receiver<Arc<Vec<u8>>>,
    ) {
        let shared = &self.shared;
        let config = &shared.config;
        let mut rate = Rate {
            tokens: f64::from(config.burst),
            last: Instant::now(),
            per_second: f64::from(config.rate_per_second),
            burst: f64::from(config.burst),
        };
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        _ => return,
                    };
                    last_heard = Instant::now();
                    match message {
                        Message::Binary(bytes) => {
                            if bytes.len() > config.max_frame {
                                shared.refused.fetch_add(1, Ordering::Relaxed);
                                refuse(socket, codes::TOO_LARGE, format!("frames are at most {} bytes", config.max_frame)).await;
                                return;
                            }
                            if !rate.allow() {
                                shared.refused.fetch_add(1, Ordering::Relaxed);
                                refuse(socket, codes::RATE_LIMITED, format!("at most {} messages per second", config.rate_per_second)).await;
                                return;
                            }
                            match ClientFrame::decode(&bytes) {
                                Ok(ClientFrame::Publish { sequence, keep, envelope }) => {
                                    let Some(backlog) = self.publish(&topic, id, envelope, keep).await else {
                                        // Never STORED for what was not
                                        // stored: the client keeps it queued.
                                        refuse(socket, codes::STORAGE, "the relay could not store the envelope").await;
                                        return;
                                    };
                                    let stored = RelayFrame::Stored { sequence, backlog };
                                    if socket.send(Message::Binary(stored.encode().into())).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(ClientFrame::Join { .. }) => {
                                    shared.refused.fetch_add(1, Ordering::Relaxed);
                                    refuse(socket, codes::PROTOCOL, "already joined").await;
                                    return;
                                }
                                Err(error) => {
                                    shared.refused.fetch_add(1, Ordering::Relaxed);
                                    refuse(socket, codes::MALFORMED, error.to_string()).await;
                                    return;
                                }
                            }
                        }
                        Message::Text(_) => {
                            shared.refused.fetch_add(1, Ordering::Relaxed);
                            refuse(socket, codes::PROTOCOL, "the relay speaks binary frames only").await;
                            return;
                        }
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                outgoing = receiver.recv() => {
                    let Some(frame) = outgoing else { return };
                    if socket.send(Message::Binary(frame.as_ref().clone().into())).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > config.idle_timeout {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                        refuse(socket, codes::IDLE, "no traffic for too long").await;
                        return;
                    }
                    if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Stores an envelope (when `keep`) and fans it out to the topic's
    /// other members; `None`, and nothing delivered, when it had to be kept
    /// and could not be.
    async fn publish(
        &self,
        topic: &Topic,
        from: u64,
        envelope: Vec<u8>,
        keep: bool,
    ) -> Option<u64> {
        let shared = &self.shared;
        shared.published.fetch_add(1, Ordering::Relaxed);
        let sequence = if keep {
            self.store(topic, &envelope).await?
        } else {
            0
        };
        let frame = Arc::new(
            RelayFrame::Frame {
                sequence,
                from,
                envelope,
            }
            .encode(),
        );
        let mut too_slow = Vec::new();
        {
            let topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(members) = topics.get(topic) {
                for (member_id, member) in members {
                    if *member_id == from {
                        continue;
                    }
                    match member.sender.try_send(frame.clone()) {
                        Ok(()) => {
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => too_slow.push(*member_id),
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        // A member that cannot keep up is dropped (it resyncs from the
        // backlog when it reconnects) instead of holding the others back.
        for member in too_slow {
            self.leave(topic, member);
        }
        Some(sequence)
    }

    fn leave(&self, topic: &Topic, id: u64) {
        let shared = &self.shared;
        let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(members) = topics.get_mut(topic) else {
            return;
        };
        if members.remove(&id).is_none() {
            return;
        }
        let count = members.len() as u32;
        let change = Arc::new(
            RelayFrame::Members {
                members: count.saturating_sub(1),
                joined: false,
                connection: id,
            }
            .encode(),
        );
        for member in members.values() {
            let _ = member.sender.try_send(change.clone());
        }
        if members.is_empty() {
            topics.remove(topic);
        }
    }

    /// Keeps an envelope in the topic's backlog; its sequence number, or
    /// `None` when the insert failed.
    async fn store(&self, topic: &Topic, envelope: &[u8]) -> Option<u64> {
        let shared = self.shared.clone();
        let topic = *topic;
        let envelope = envelope.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut backlog = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
            let now = crate::platform::now_ms() as i64;
            let inserted = backlog.connection.execute(
                "INSERT INTO backlog (topic, envelope, stored_at) VALUES (?1, ?2, ?3)",
                params![&topic[..], envelope, now],
            );
            if let Err(error) = inserted {
                tracing::warn!(%error, "the relay could not keep an envelope in its backlog");
                return None;
            }
            let sequence = backlog.connection.last_insert_rowid() as u64;
            backlog.inserts_since_trim += 1;
            if backlog.inserts_since_trim >= 64 {
                backlog.inserts_since_trim = 0;
                let limit = shared.config.backlog_frames as i64;
                let trimmed = backlog.connection.execute(
                    "DELETE FROM backlog WHERE topic = ?1 AND seq <= (
                         SELECT seq FROM backlog WHERE topic = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                    params![&topic[..], limit],
                );
                if let Err(error) = trimmed {
                    tracing::warn!(%error, "trimming the relay backlog failed");
                }
            }
            Some(sequence)
        })
        .await
        .ok()
        .flatten()
    }

    async fn backlog_head(&self, topic: &Topic) -> u64 {
        let shared = self.shared.clone();
        let topic = *topic;
        tokio::task::spawn_blocking(move || {
            let backlog = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
            backlog
                .connection
                .query_row(
                    "SELECT max(seq) FROM backlog WHERE topic = ?1",
                    [&topic[..]],
                    |row| row.get::<_, Option<i64>>(0),
                )
                .optional()
                .ok()
                .flatten()
                .flatten()
                .unwrap_or(0) as u64
        })
        .await
        .unwrap_or(0)
    }

    async fn backlog_after(&self, topic: &Topic, after: u64, head: u64) -> Vec<(u64, Vec<u8>)> {
        let shared = self.shared.clone();
        let topic = *topic;
        tokio::task::spawn_blocking(move || {
            let backlog = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
            let mut statement = match backlog.connection.prepare_cached(
                "SELECT seq, envelope FROM backlog WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
                 ORDER BY seq LIMIT 256",
            ) {
                Ok(statement) => statement,
                Err(_) => return Vec::new(),
            };
            let rows = statement.query_map(params![&topic[..], after as i64, head as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?))
            });
            match rows {
                Ok(rows) => rows.filter_map(Result::ok).collect(),
                Err(_) => Vec::new(),
            }
        })
        .await
        .unwrap_or_default()
    }
}
