//! The relay server (native): WebSocket clients join a topic, and every
//! envelope one member publishes is fanned out to the topic's other
//! members and kept in a bounded per-topic backlog in SQLite
//! ([`backlog`]), so peers that are never online at the same time still
//! sync. The relay sees topics and sealed envelopes only; it cannot read or
//! forge data, and only holders of a database's secret can join its topic
//! (JOIN carries a join key whose hash is the topic).
//!
//! Every resource a client can make the relay hold is bounded (see
//! [`RelayConfig`] for the defaults): frame size; bytes and messages read
//! per second (a fast client is read more slowly, never disconnected);
//! bytes queued towards a member (past the budget it is dropped and what it
//! held is freed); every send has a timeout; the backlog replay goes in
//! batches of bounded bytes; the backlog per topic (frames, bytes, age) and
//! in total (bytes, topics); members per topic; connections; a join
//! deadline and an idle timeout driven by ping/pong. A client that breaks a
//! rule gets an ERROR frame and is disconnected. Nothing a client sends can
//! panic the relay.
//!
//! Where envelopes are kept is an [`store::EnvelopeLog`]: a SQLite file
//! for one relay ([`backlog`]), or Redis Streams shared by a cluster of
//! relays ([`redis`], `RelayConfig::redis_url`), where membership limits
//! hold across relays and each relay fans out what any of them stored.
//!
//! Framing: [`crate::sync::relay_frame`].

mod backlog;
mod redis;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::sync::{mpsc, Notify};

use self::backlog::{Backlog, BacklogLimits, SqliteLog};
use self::redis::{Entry, Positions, RedisHub};
use self::store::{EnvelopeLog, Refusal};
use crate::sync::crypto::{topic_of, ENVELOPE_OVERHEAD, ENVELOPE_VERSION};
use crate::sync::relay_frame::{codes, ClientFrame, RelayFrame, RELAY_VERSION};
use crate::sync::Topic;

/// Relay limits and storage. Every field has a safe default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest WebSocket message accepted (bytes; default 4 MiB).
    pub max_frame: usize,
    /// Sustained messages per second read from one connection (default
    /// 200); a client sending faster is read more slowly.
    pub rate_per_second: u32,
    /// Messages read from a connection in a burst (default 400).
    pub burst: u32,
    /// Sustained bytes per second read from one connection (default 8 MiB;
    /// every message, pings included, counts at least 64 bytes).
    pub bytes_per_second: u64,
    /// Bytes read from a connection in a burst (default 16 MiB; at least
    /// `max_frame`).
    pub burst_bytes: u64,
    /// Members per topic (default 256).
    pub max_members_per_topic: usize,
    /// Connections in total (default 10,000).
    pub max_connections: usize,
    /// A client must JOIN within this time (default 10 s).
    pub join_timeout: Duration,
    /// How often the relay pings (default 20 s).
    pub ping_interval: Duration,
    /// A client silent (no frame, no pong) for this long is dropped
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// A send to a client that does not finish in this time drops the
    /// client (default 10 s).
    pub send_timeout: Duration,
    /// Envelopes kept per topic (default 10,000).
    pub backlog_frames: u64,
    /// Bytes of envelopes kept per topic (default 256 MiB).
    pub backlog_topic_bytes: u64,
    /// Bytes of envelopes kept in total; past it the oldest envelopes of
    /// any topic are dropped first (default 4 GiB).
    pub backlog_total_bytes: u64,
    /// Envelopes older than this are dropped (default 30 days).
    pub backlog_max_age: Duration,
    /// Topics the relay serves at once, with members or a backlog (default
    /// 100,000).
    pub max_topics: usize,
    /// The backlog's SQLite file (`None`: in memory).
    pub backlog_path: Option<PathBuf>,
    /// Caps the backlog file at about this many bytes (SQLite's
    /// `max_page_count`; `None`: no cap). A PUBLISH that cannot be kept
    /// once it is full is refused with a `STORAGE` error, never STORED.
    pub backlog_max_bytes: Option<u64>,
    /// Bytes queued towards one member before it counts as too slow and is
    /// dropped (default 32 MiB).
    pub member_queue_bytes: usize,
    /// Bytes of backlog read per replay batch (default 1 MiB).
    pub replay_batch_bytes: usize,
    /// Keep the backlog and membership in this Redis
    /// (`redis://host:port[/db]`) instead of `backlog_path`, so any number
    /// of relays serve the same topics (open with [`RelayServer::open`]).
    pub redis_url: Option<String>,
    /// In a cluster: how long a member counts after its relay last renewed
    /// its lease (default 30 s; renewed every third of it), so the members
    /// of a relay that died leave within about this long.
    pub member_lease: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_frame: 4 * 1024 * 1024,
            rate_per_second: 200,
            burst: 400,
            bytes_per_second: 8 * 1024 * 1024,
            burst_bytes: 16 * 1024 * 1024,
            max_members_per_topic: 256,
            max_connections: 10_000,
            join_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(10),
            backlog_frames: 10_000,
            backlog_topic_bytes: 256 * 1024 * 1024,
            backlog_total_bytes: 4 * 1024 * 1024 * 1024,
            backlog_max_age: Duration::from_secs(30 * 24 * 3600),
            max_topics: 100_000,
            backlog_path: None,
            backlog_max_bytes: None,
            member_queue_bytes: 32 * 1024 * 1024,
            replay_batch_bytes: 1024 * 1024,
            redis_url: None,
            member_lease: Duration::from_secs(30),
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
    /// Topics with envelopes in the backlog.
    pub backlog_topics: usize,
    /// Bytes of envelopes in the backlog.
    pub backlog_bytes: u64,
    /// Envelopes published.
    pub published: u64,
    /// Envelopes delivered to members (fan-out).
    pub delivered: u64,
    /// Connections closed for breaking a rule.
    pub refused: u64,
    /// Members dropped for not reading fast enough.
    pub too_slow: u64,
}

/// Frames on their way to one member, and the bytes they hold.
struct Outbox {
    queued_bytes: AtomicUsize,
    /// Set (and `kick` notified) when the member must go.
    kicked: AtomicBool,
    kick: Notify,
}

struct Member {
    sender: mpsc::UnboundedSender<Arc<Vec<u8>>>,
    outbox: Arc<Outbox>,
    /// In a cluster: the live entry that announced this member; older
    /// membership news predates its WELCOME and is not passed on.
    joined_at: (u64, u64),
}

impl Member {
    /// Queues `frame` within the member's byte budget; `false` when the
    /// member is too slow (it is then kicked).
    fn offer(&self, frame: &Arc<Vec<u8>>, budget: usize) -> bool {
        let size = frame.len();
        let before = self.outbox.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if before.saturating_add(size) > budget {
            self.outbox.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.outbox.kicked.store(true, Ordering::Release);
            self.outbox.kick.notify_one();
            return false;
        }
        if self.sender.send(frame.clone()).is_err() {
            self.outbox.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        }
        true
    }
}

/// A topic this relay has members in.
#[derive(Default)]
struct Followed {
    members: HashMap<u64, Member>,
    /// In a cluster: what the members were given of the topic's streams.
    positions: Positions,
    /// Alone: held from storing a kept envelope of this topic until it is
    /// fanned out, so members get the topic's kept envelopes in sequence
    /// order (a member's cursor is the last sequence it got, and must never
    /// pass one it did not get). A cluster's reader delivers in stream
    /// order instead.
    publish_order: Arc<tokio::sync::Mutex<()>>,
}

struct Shared {
    config: RelayConfig,
    topics: Mutex<HashMap<Topic, Followed>>,
    log: Arc<dyn EnvelopeLog>,
    /// In a cluster: the Redis that relays share (also `log`).
    cluster: Option<Arc<RedisHub>>,
    next_connection: AtomicU64,
    connections: AtomicUsize,
    published: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    too_slow: AtomicU64,
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

/// How often old envelopes of quiet topics are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl RelayServer {
    /// A relay with `config` keeping its backlog in SQLite (opens or
    /// creates the file). Needs a tokio runtime: a background task drops
    /// expired envelopes. A cluster relay (`redis_url`) needs
    /// [`RelayServer::open`].
    pub fn new(config: RelayConfig) -> Result<Self, String> {
        if config.redis_url.is_some() {
            return Err("a relay on Redis is opened with RelayServer::open".into());
        }
        let log = Arc::new(SqliteLog::new(Self::open_backlog(&config)?));
        Ok(Self::start(config, log, None))
    }

    /// A relay with `config`: on Redis when `redis_url` is set (it must be
    /// reachable now; later outages are survived), else on SQLite.
    pub async fn open(config: RelayConfig) -> Result<Self, String> {
        let Some(url) = config.redis_url.clone() else {
            return Self::new(config);
        };
        let hub =
            Arc::new(RedisHub::connect(&url, Self::limits(&config), config.member_lease).await?);
        Ok(Self::start(config, hub.clone(), Some(hub)))
    }

    fn limits(config: &RelayConfig) -> BacklogLimits {
        BacklogLimits {
            frames: config.backlog_frames.max(1),
            topic_bytes: config.backlog_topic_bytes,
            total_bytes: config.backlog_total_bytes,
            max_topics: config.max_topics.max(1),
            max_age: config.backlog_max_age,
        }
    }

    fn open_backlog(config: &RelayConfig) -> Result<Backlog, String> {
        Backlog::open(
            config.backlog_path.as_deref(),
            config.backlog_max_bytes,
            Self::limits(config),
        )
        .map_err(|e| {
            format!(
                "cannot open the relay backlog {}: {e}",
                config
                    .backlog_path
                    .as_ref()
                    .map_or(":memory:".into(), |p| p.display().to_string())
            )
        })
    }

    fn start(
        config: RelayConfig,
        log: Arc<dyn EnvelopeLog>,
        cluster: Option<Arc<RedisHub>>,
    ) -> Self {
        let server = Self {
            shared: Arc::new(Shared {
                config,
                topics: Mutex::new(HashMap::new()),
                log,
                cluster: cluster.clone(),
                next_connection: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                too_slow: AtomicU64::new(0),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&server.shared);
            tokio::spawn(async move {
                let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
                sweep.tick().await;
                loop {
                    sweep.tick().await;
                    let Some(shared) = weak.upgrade() else { return };
                    shared.log.expire().await;
                }
            });
            if let Some(hub) = cluster {
                tokio::spawn(follow(Arc::downgrade(&server.shared), hub.clone()));
                tokio::spawn(refresh_members(Arc::downgrade(&server.shared), hub));
            }
        }
        server
    }

    /// Routes: `GET /` upgrades to the relay WebSocket. Nest it where the
    /// relay should live (`pluresdb serve` uses `/relay`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(upgrade))
            .with_state(self.clone())
    }

    /// Current counters (in a cluster, the backlog's as last seen).
    pub fn stats(&self) -> RelayStats {
        let shared = &self.shared;
        let (backlog_topics, backlog_bytes) = shared.log.usage();
        RelayStats {
            connections: shared.connections.load(Ordering::Relaxed),
            topics: shared.topics.lock().map(|t| t.len()).unwrap_or(0),
            backlog_topics,
            backlog_bytes,
            published: shared.published.load(Ordering::Relaxed),
            delivered: shared.delivered.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            too_slow: shared.too_slow.load(Ordering::Relaxed),
        }
    }

    /// Whether the relay can keep envelopes now: a relay of a cluster
    /// checks that Redis answers (a load balancer's health check should
    /// use this, through `pluresdb relay`'s `/health`); one on SQLite always
    /// can.
    pub async fn check_storage(&self) -> Result<(), String> {
        match &self.shared.cluster {
            Some(hub) => hub
                .ping()
                .await
                .map_err(|error| format!("Redis at {} does not answer: {error:?}", hub.url())),
            None => Ok(()),
        }
    }

    /// Drops envelopes past the age limit now (the relay also does this
    /// every minute).
    pub async fn expire_now(&self) {
        self.shared.log.expire().await;
    }
}

/// Whether a member joining `topic` would take this relay past its topic
/// limit, checked under the topics lock so joins racing for new topics
/// cannot pass it together: the topics with a backlog (SQLite: counted in
/// memory; a cluster: as Redis last said) and those this relay has members
/// in (in a cluster, those without a backlog).
///
/// `has_backlog`: the topic has envelopes kept, so it counts already.
fn over_topic_limit(
    shared: &Shared,
    topics: &HashMap<Topic, Followed>,
    topic: &Topic,
    has_backlog: bool,
) -> bool {
    if has_backlog || topics.contains_key(topic) {
        return false;
    }
    let (backlog_topics, _) = shared.log.usage();
    let member_topics = if shared.cluster.is_some() {
        topics.values().filter(|f| f.positions.log == 0).count()
    } else {
        topics.len()
    };
    member_topics.saturating_add(backlog_topics) >= shared.config.max_topics.max(1)
}

/// A cluster relay's reader: waits for entries of the topics it has
/// members in and delivers them, until the relay is dropped.
async fn follow(relay: std::sync::Weak<Shared>, hub: Arc<RedisHub>) {
    let mut wake = hub.wake_position().await;
    let mut failing = false;
    loop {
        let followed: Vec<(Topic, Positions)> = {
            let Some(shared) = relay.upgrade() else {
                return;
            };
            let topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            topics.iter().map(|(t, f)| (*t, f.positions)).collect()
        };
        match hub.read(&followed, &mut wake).await {
            Ok(entries) => {
                if failing {
                    tracing::info!(redis = hub.url(), "the relay reads from Redis again");
                    failing = false;
                }
                let Some(shared) = relay.upgrade() else {
                    return;
                };
                deliver(&shared, entries);
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(?error, "the relay cannot read from Redis; retrying");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Hands entries read from Redis to this relay's members, each at most
/// once and in stream order.
fn deliver(shared: &Shared, entries: Vec<(Topic, Entry)>) {
    let budget = shared.config.member_queue_bytes;
    let mut too_slow = Vec::new();
    {
        let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, entry) in entries {
            let Some(followed) = topics.get_mut(&topic) else {
                continue;
            };
            // Membership news reaches members that joined before it.
            let mut news_of = None;
            let (frame, skip, counts) = match entry {
                Entry::Kept {
                    sequence,
                    from,
                    envelope,
                } => {
                    if sequence <= followed.positions.log {
                        continue;
                    }
                    followed.positions.log = sequence;
                    let frame = RelayFrame::Frame {
                        sequence,
                        from,
                        envelope,
                    };
                    (frame, from, true)
                }
                Entry::Live { id, from, envelope } => {
                    if id <= followed.positions.live {
                        continue;
                    }
                    followed.positions.live = id;
                    let frame = RelayFrame::Frame {
                        sequence: 0,
                        from,
                        envelope,
                    };
                    (frame, from, true)
                }
                Entry::Member {
                    id,
                    joined,
                    connection,
                    members,
                } => {
                    if id <= followed.positions.live {
                        continue;
                    }
                    followed.positions.live = id;
                    news_of = Some(id);
                    let frame = RelayFrame::Members {
                        members,
                        joined,
                        connection,
                    };
                    (frame, connection, false)
                }
            };
            let frame = Arc::new(frame.encode());
            for (member_id, member) in &followed.members {
                if *member_id == skip || news_of.is_some_and(|id| id <= member.joined_at) {
                    continue;
                }
                if member.offer(&frame, budget) {
                    if counts {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    too_slow.push((topic, *member_id));
                }
            }
        }
    }
    for (topic, member) in too_slow {
        RelayServer::leave_shared(shared, &topic, member);
    }
}

/// A cluster relay keeps its members counted in Redis, and drops those of
/// relays that died, every third of `RelayConfig::member_lease`.
async fn refresh_members(relay: std::sync::Weak<Shared>, hub: Arc<RedisHub>) {
    let mut tick = tokio::time::interval(hub.renewal_interval());
    tick.tick().await;
    loop {
        tick.tick().await;
        let members: Vec<(Topic, Vec<u64>)> = {
            let Some(shared) = relay.upgrade() else {
                return;
            };
            let topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            topics
                .iter()
                .map(|(t, f)| (*t, f.members.keys().copied().collect()))
                .collect()
        };
        for (topic, connections) in members {
            if let Err(error) = hub.refresh(&topic, &connections).await {
                tracing::warn!(?error, "refreshing the relay's members in Redis failed");
                break;
            }
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

/// A token bucket that answers how long to wait instead of refusing.
struct Pace {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
}

impl Pace {
    fn new(per_second: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: Instant::now(),
            per_second: per_second.max(1.0),
            burst: burst.max(1.0),
        }
    }

    /// Takes `cost` tokens; how long the caller must wait until the bucket
    /// is no longer in debt.
    fn charge(&mut self, cost: f64) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst) - cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// The least a message counts towards the byte rate.
const MESSAGE_COST_BYTES: usize = 64;

impl RelayServer {
    /// Sends one message within the send timeout; `false` when the client
    /// is gone or too slow.
    async fn send(&self, socket: &mut WebSocket, message: Message) -> bool {
        matches!(
            tokio::time::timeout(self.shared.config.send_timeout, socket.send(message)).await,
            Ok(Ok(()))
        )
    }

    /// Sends an ERROR frame and closes, within the send timeout.
    async fn refuse(&self, socket: &mut WebSocket, code: u16, message: impl Into<String>) {
        if code != codes::STORAGE {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        let frame = RelayFrame::Error {
            code,
            message: message.into(),
        };
        if self
            .send(socket, Message::Binary(frame.encode().into()))
            .await
        {
            let _ = self.send(socket, Message::Close(None)).await;
        }
    }

    async fn serve(&self, mut socket: WebSocket) {
        let shared = &self.shared;
        let config = &shared.config;
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            self.refuse(
                &mut socket,
                codes::FULL,
                "the relay has as many connections as it takes",
            )
            .await;
            return;
        }
        let mut id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        if let Some(hub) = &shared.cluster {
            // Unique across the cluster: this relay's id, then its count.
            id = (u64::from(hub.instance) << 32) | (id & 0xffff_ffff);
        }
        if let Some((topic, receiver, outbox)) = self.join(&mut socket, id).await {
            self.run(&mut socket, id, topic, receiver, &outbox).await;
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
    ) -> Option<(Topic, mpsc::UnboundedReceiver<Arc<Vec<u8>>>, Arc<Outbox>)> {
        let shared = &self.shared;
        let config = &shared.config;
        let first = tokio::time::timeout(config.join_timeout, socket.recv()).await;
        let bytes = match first {
            Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
            Ok(Some(Ok(_))) => {
                self.refuse(
                    socket,
                    codes::PROTOCOL,
                    "send JOIN first, as a binary message",
                )
                .await;
                return None;
            }
            Ok(_) => return None,
            Err(_) => {
                self.refuse(socket, codes::IDLE, "no JOIN in time").await;
                return None;
            }
        };
        let (topic, since) = match ClientFrame::decode(&bytes) {
            Ok(ClientFrame::Join {
                version: RELAY_VERSION,
                join_key,
                since,
            }) => (topic_of(&join_key), since),
            Ok(ClientFrame::Join { version, .. }) => {
                self.refuse(
                    socket,
                    codes::VERSION,
                    format!(
                        "relay framing version {version} is not supported (this relay speaks \
                         {RELAY_VERSION}); update PluresDB"
                    ),
                )
                .await;
                return None;
            }
            Ok(_) => {
                self.refuse(socket, codes::PROTOCOL, "send JOIN first")
                    .await;
                return None;
            }
            Err(error) => {
                self.refuse(socket, codes::MALFORMED, error.to_string())
                    .await;
                return None;
            }
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let outbox = Arc::new(Outbox {
            queued_bytes: AtomicUsize::new(0),
            kicked: AtomicBool::new(false),
            kick: Notify::new(),
        });
        let member = Member {
            sender,
            outbox: outbox.clone(),
            joined_at: (0, 0),
        };
        let registered = match &shared.cluster {
            Some(hub) => self.register_in_cluster(hub, &topic, id, member).await,
            None => self.register(&topic, id, member).await,
        };
        let (head, members) = match registered {
            Ok(registered) => registered,
            Err((code, why)) => {
                self.refuse(socket, code, why).await;
                return None;
            }
        };
        let welcome = RelayFrame::Welcome {
            head,
            connection: id,
            members,
        };
        if !self
            .send(socket, Message::Binary(welcome.encode().into()))
            .await
        {
            self.leave(&topic, id);
            return None;
        }
        // Replay what was kept after the client's cursor, in batches of
        // bounded bytes, each send within the timeout.
        let mut cursor = since;
        while cursor < head {
            let batch = match self
                .shared
                .log
                .after(topic, cursor, head, config.replay_batch_bytes.max(1))
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(?error, "reading the relay backlog failed");
                    self.leave(&topic, id);
                    self.refuse(
                        socket,
                        codes::STORAGE,
                        "the relay could not read its backlog",
                    )
                    .await;
                    return None;
                }
            };
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
                if outbox.kicked.load(Ordering::Acquire)
                    || !self
                        .send(socket, Message::Binary(frame.encode().into()))
                        .await
                {
                    self.leave(&topic, id);
                    return None;
                }
            }
        }
        Some((topic, receiver, outbox))
    }

    async fn run(
        &self,
        socket: &mut WebSocket,
        id: u64,
        topic: Topic,
        mut receiver: mpsc::UnboundedReceiver<Arc<Vec<u8>>>,
        outbox: &Outbox,
    ) {
        let shared = &self.shared;
        let config = &shared.config;
        let mut messages = Pace::new(f64::from(config.rate_per_second), f64::from(config.burst));
        let mut bytes = Pace::new(
            config.bytes_per_second as f64,
            config.burst_bytes.max(config.max_frame as u64 + 1024) as f64,
        );
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        let mut last_heard = Instant::now();
        // While set, the client is not read from (it sent too much).
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            let resume = async {
                match paused_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = outbox.kick.notified() => {
                    shared.too_slow.fetch_add(1, Ordering::Relaxed);
                    self.refuse(socket, codes::SLOW, format!(
                        "more than {} bytes waited for this client to read them", config.member_queue_bytes
                    )).await;
                    return;
                }
                _ = resume => {
                    paused_until = None;
                    // Time spent not reading is not the client's silence.
                    last_heard = Instant::now();
                }
                outgoing = receiver.recv() => {
                    let Some(frame) = outgoing else { return };
                    outbox.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
                    if !self.send(socket, Message::Binary(frame.as_ref().clone().into())).await {
                        return;
                    }
                }
                incoming = socket.recv(), if paused_until.is_none() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        _ => return,
                    };
                    last_heard = Instant::now();
                    let size = match &message {
                        Message::Binary(b) => b.len(),
                        Message::Text(t) => t.len(),
                        Message::Ping(p) | Message::Pong(p) => p.len(),
                        Message::Close(_) => 0,
                    };
                    let wait = messages.charge(1.0).max(bytes.charge(size.max(MESSAGE_COST_BYTES) as f64));
                    if !wait.is_zero() {
                        paused_until = Some(tokio::time::Instant::now() + wait);
                    }
                    match message {
                        Message::Binary(bytes) => {
                            if bytes.len() > config.max_frame {
                                self.refuse(socket, codes::TOO_LARGE, format!("frames are at most {} bytes", config.max_frame)).await;
                                return;
                            }
                            match ClientFrame::decode(&bytes) {
                                Ok(ClientFrame::Publish { envelope, .. })
                                    if envelope.len() <= ENVELOPE_OVERHEAD || envelope[0] != ENVELOPE_VERSION =>
                                {
                                    self.refuse(socket, codes::MALFORMED, "a PUBLISH must carry a sealed envelope").await;
                                    return;
                                }
                                Ok(ClientFrame::Publish { sequence, keep, envelope }) => {
                                    let backlog = match self.publish(&topic, id, envelope, keep).await {
                                        Ok(backlog) => backlog,
                                        Err(why) => {
                                            // Never STORED for what was not
                                            // stored: the client keeps it queued.
                                            self.refuse(socket, codes::STORAGE, why).await;
                                            return;
                                        }
                                    };
                                    let stored = RelayFrame::Stored { sequence, backlog };
                                    if !self.send(socket, Message::Binary(stored.encode().into())).await {
                                        return;
                                    }
                                }
                                Ok(ClientFrame::Join { .. }) => {
                                    self.refuse(socket, codes::PROTOCOL, "already joined").await;
                                    return;
                                }
                                Err(error) => {
                                    self.refuse(socket, codes::MALFORMED, error.to_string()).await;
                                    return;
                                }
                            }
                        }
                        Message::Text(_) => {
                            self.refuse(socket, codes::PROTOCOL, "the relay speaks binary frames only").await;
                            return;
                        }
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                _ = ping.tick() => {
                    if paused_until.is_none() && last_heard.elapsed() > config.idle_timeout {
                        self.refuse(socket, codes::IDLE, "no traffic for too long").await;
                        return;
                    }
                    if !self.send(socket, Message::Ping(Vec::new().into())).await {
                        return;
                    }
                }
            }
        }
    }

    /// Topics this relay has members in that count towards the topic
    /// limit besides `topic` and those with a backlog (alone, every topic
    /// with members counts, as it always has; in a cluster, the backlog's
    /// topics are counted in Redis, so only those without one are added).
    fn member_topics(&self, topic: &Topic) -> usize {
        let topics = self.shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        if self.shared.cluster.is_none() {
            return topics.len();
        }
        topics
            .iter()
            .filter(|(t, followed)| *t != topic && followed.positions.log == 0)
            .count()
    }

    /// Whether a member may join `topic` under the cluster's topic limit:
    /// `Err(Some(FULL))` when not, `Err(None)` when Redis could not say.
    /// (Alone, `over_topic_limit` decides, under the topics lock.)
    async fn admit_topic(
        &self,
        hub: &RedisHub,
        topic: &Topic,
    ) -> Result<(), Option<(u16, &'static str)>> {
        let shared = &self.shared;
        let known = shared
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(topic);
        if known {
            return Ok(());
        }
        match hub.admits(topic, self.member_topics(topic)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Some((
                codes::FULL,
                "the relay serves as many topics as it takes",
            ))),
            Err(error) => {
                tracing::warn!(?error, "the relay's storage is unavailable");
                Err(None)
            }
        }
    }

    /// Registers a member on this relay alone: the backlog head and the
    /// other members, or why not.
    async fn register(
        &self,
        topic: &Topic,
        id: u64,
        member: Member,
    ) -> Result<(u64, u32), (u16, &'static str)> {
        let shared = &self.shared;
        let config = &shared.config;
        let (others, members) = {
            let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            if over_topic_limit(shared, &topics, topic, shared.log.holds(topic)) {
                return Err((codes::FULL, "the relay serves as many topics as it takes"));
            }
            let entry = topics.entry(*topic).or_default();
            if entry.members.len() >= config.max_members_per_topic {
                if entry.members.is_empty() {
                    topics.remove(topic);
                }
                return Err((
                    codes::FULL,
                    "this topic has as many members as the relay takes",
                ));
            }
            let others: Vec<Member> = entry
                .members
                .values()
                .map(|m| Member {
                    sender: m.sender.clone(),
                    outbox: m.outbox.clone(),
                    joined_at: m.joined_at,
                })
                .collect();
            entry.members.insert(id, member);
            (others, entry.members.len() as u32 - 1)
        };
        let head = match shared.log.head(*topic).await {
            Ok(head) => head,
            Err(error) => {
                tracing::warn!(?error, "reading the relay backlog failed");
                self.leave(topic, id);
                return Err((
                    codes::STORAGE,
                    "the relay's storage is unavailable; try again later",
                ));
            }
        };
        let change = Arc::new(
            RelayFrame::Members {
                members,
                joined: true,
                connection: id,
            }
            .encode(),
        );
        for other in others {
            other.offer(&change, config.member_queue_bytes);
        }
        Ok((head, members))
    }

    /// Registers a member of a cluster: counted in Redis against the
    /// member limit of every relay together; the member is given what the
    /// relay's reader delivered up to now as its backlog head, so replay
    /// and fan-out meet with no gap.
    async fn register_in_cluster(
        &self,
        hub: &RedisHub,
        topic: &Topic,
        id: u64,
        member: Member,
    ) -> Result<(u64, u32), (u16, &'static str)> {
        const UNAVAILABLE: (u16, &str) = (
            codes::STORAGE,
            "the relay's storage (Redis) is unavailable; try again later",
        );
        let shared = &self.shared;
        let config = &shared.config;
        self.admit_topic(hub, topic)
            .await
            .map_err(|refusal| refusal.unwrap_or(UNAVAILABLE))?;
        // Where to start reading the topic, should this relay not follow it
        // yet, is taken before joining, so no membership change of others
        // falls between the two.
        let start = match hub.positions(topic).await {
            Ok(positions) => positions,
            Err(error) => {
                tracing::warn!(?error, "Redis is unavailable");
                return Err(UNAVAILABLE);
            }
        };
        let mut member = member;
        let members = match hub.join(topic, id, config.max_members_per_topic).await {
            Ok(Some((members, joined_at))) => {
                member.joined_at = joined_at;
                members
            }
            Ok(None) => {
                return Err((
                    codes::FULL,
                    "this topic has as many members as the relay takes",
                ))
            }
            Err(error) => {
                tracing::warn!(?error, "Redis is unavailable");
                return Err(UNAVAILABLE);
            }
        };
        // A topic this relay follows already goes on from where its reader
        // is; a new one starts where the streams were before the JOIN.
        let admitted = {
            let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            if over_topic_limit(shared, &topics, topic, start.log > 0) {
                None
            } else {
                let followed = topics.entry(*topic).or_insert_with(|| Followed {
                    positions: start,
                    ..Followed::default()
                });
                let newly = followed.members.is_empty();
                followed.members.insert(id, member);
                Some((followed.positions.log, newly))
            }
        };
        let Some((head, newly)) = admitted else {
            let _ = hub.leave(topic, id).await;
            return Err((codes::FULL, "the relay serves as many topics as it takes"));
        };
        if newly {
            hub.wake().await;
        }
        Ok((head, members))
    }

    /// Stores an envelope (when `keep`) and fans it out to the topic's
    /// other members (in a cluster: hands it to every relay through
    /// Redis); an error, and nothing delivered, when it had to be kept and
    /// could not be.
    async fn publish(
        &self,
        topic: &Topic,
        from: u64,
        envelope: Vec<u8>,
        keep: bool,
    ) -> Result<u64, &'static str> {
        let shared = &self.shared;
        shared.published.fetch_add(1, Ordering::Relaxed);
        if let Some(hub) = &shared.cluster {
            return if keep {
                self.store(topic, from, envelope).await
            } else {
                hub.broadcast(topic, from, &envelope)
                    .await
                    .map(|()| 0)
                    .map_err(|error| {
                        tracing::warn!(?error, "Redis is unavailable");
                        "the relay's storage (Redis) is unavailable"
                    })
            };
        }
        let order = keep
            .then(|| {
                let topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
                topics.get(topic).map(|f| f.publish_order.clone())
            })
            .flatten();
        let _in_order = match &order {
            Some(order) => Some(order.lock().await),
            None => None,
        };
        let sequence = if keep {
            self.store(topic, from, envelope.clone()).await?
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
            if let Some(followed) = topics.get(topic) {
                for (member_id, member) in &followed.members {
                    if *member_id == from {
                        continue;
                    }
                    if member.offer(&frame, shared.config.member_queue_bytes) {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        too_slow.push(*member_id);
                    }
                }
            }
        }
        // A member that cannot keep up is dropped (it resyncs from the
        // backlog when it reconnects) instead of holding the others back;
        // its task sees the kick, closes, and frees its queue.
        for member in too_slow {
            self.leave(topic, member);
        }
        Ok(sequence)
    }

    fn leave(&self, topic: &Topic, id: u64) {
        Self::leave_shared(&self.shared, topic, id);
    }

    /// Removes a member (in a cluster also from Redis, in the background)
    /// and tells the others.
    fn leave_shared(shared: &Shared, topic: &Topic, id: u64) {
        let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(followed) = topics.get_mut(topic) else {
            return;
        };
        if followed.members.remove(&id).is_none() {
            return;
        }
        if let Some(hub) = &shared.cluster {
            // The others hear of it through Redis, on every relay.
            let hub = hub.clone();
            let topic = *topic;
            tokio::spawn(async move {
                if let Err(error) = hub.leave(&topic, id).await {
                    tracing::warn!(?error, "Redis is unavailable; the member expires instead");
                }
            });
        } else {
            let count = followed.members.len() as u32;
            let change = Arc::new(
                RelayFrame::Members {
                    members: count.saturating_sub(1),
                    joined: false,
                    connection: id,
                }
                .encode(),
            );
            for member in followed.members.values() {
                member.offer(&change, shared.config.member_queue_bytes);
            }
        }
        if followed.members.is_empty() {
            topics.remove(topic);
        }
    }

    /// Keeps an envelope in the topic's backlog; its sequence number, or
    /// why it could not.
    async fn store(
        &self,
        topic: &Topic,
        from: u64,
        envelope: Vec<u8>,
    ) -> Result<u64, &'static str> {
        let shared = &self.shared;
        let member_topics = self.member_topics(topic);
        match shared
            .log
            .store(*topic, from, envelope, member_topics)
            .await
        {
            Ok(sequence) => Ok(sequence),
            Err(Refusal::TooManyTopics) => {
                Err("the relay keeps backlogs for as many topics as it takes")
            }
            Err(Refusal::Unavailable(error)) => {
                tracing::warn!(%error, "the relay could not keep an envelope in its backlog");
                Err("the relay could not store the envelope")
            }
        }
    }
}
