//! The sync engine: drives a [`Database`] over a [`Connector`] with the
//! sync protocol. One background task per sync: connect, say hello, publish
//! what peers may lack (the offline queue), answer hellos with deltas,
//! apply what arrives, publish every local commit live; on disconnect, retry
//! with exponential backoff and jitter.
//!
//! What was published and stored by each transport
//! (`sync/published/<transport>`) and the transport's backlog cursor
//! (`sync/cursor/<transport>`) are kept in the database's metadata, so a
//! restart neither loses offline writes nor downloads the backlog again.
//! Both only advance past what really happened: the published vector of an
//! envelope is the version vector right after the commit it carries (never
//! one read later), and the cursor moves past an envelope only once what it
//! carried is committed here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};

use super::{Database, Origin, SyncEvent};
use crate::crdt::{CrdtOperation, Dot, VersionVector};
use crate::error::{Error, InputError, Result};
use crate::storage::{meta_keys, Storage};
use crate::sync::protocol::{vector_digest, ResumeHint, CHUNK_BYTES, STALL_TICKS};
use crate::sync::{Incoming, PeerId, SyncIdentity, SyncProtocol};
use crate::transport::{Connector, Link, Outgoing, Rendezvous, TransportEvent};

/// Prefix of the per-transport published vector (the transport's
/// description follows).
const PUBLISHED_PREFIX: &str = "sync/published/";
/// Prefix of the per-transport resume hints (deltas received in part, so a
/// restarted sync resumes them).
const RESUME_PREFIX: &str = "sync/resume/";
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Stored envelopes between two writes of the published vector.
const PROGRESS_EVERY: usize = 8;
/// Bytes of kept envelopes sent and not yet stored by the transport; the
/// rest waits, unsealed (flow control: the offline queue of a large
/// database is never sealed and queued at once).
const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// A group of operations to publish as one kept LIVE envelope, and the
/// published vector it brings once stored.
type Publication = (Vec<CrdtOperation>, VersionVector);

/// Kept envelopes in flight: (send sequence, vector it brings, bytes).
type InFlight = VecDeque<(u32, VersionVector, usize)>;

/// Publications read from the offline queue ahead of the transport, at
/// most (a refill reads half as many at a time).
const QUEUED_CHUNKS: usize = 16;

/// The offline queue of a session: the changes since the published vector
/// when it started, read a window at a time ([`Engine::refill`]).
struct OfflineQueue {
    /// The published vector when the session started.
    seen: VersionVector,
    /// The version vector when the session started.
    vector: VersionVector,
    /// The published vector the groups queued so far bring.
    reached: VersionVector,
    /// The last dot read.
    after: Option<Dot>,
}

/// How a session ends when reading changes for peers failed: stopped when
/// the database closed, else disconnected, so the next connection (after
/// the backoff) reads them again; a storage error (a document another
/// writer removed meanwhile, I/O) does not end sync for good.
fn end_after_read_failure(error: &Error) -> SessionEnd {
    match error {
        Error::Storage(crate::error::StorageError::Closed) => SessionEnd::Stopped,
        error => {
            tracing::warn!(%error, "sync: could not read changes for peers; reconnecting");
            SessionEnd::Disconnected
        }
    }
}

/// Publications not yet stored by the transport: in flight, queued, still
/// to be read, and live ones waiting behind the offline queue.
fn pending_publications(
    unstored: &InFlight,
    queued: &VecDeque<Publication>,
    offline: &Option<OfflineQueue>,
    deferred: &VecDeque<Publication>,
) -> u64 {
    // A queue not read to its end counts one more.
    let unread = usize::from(offline.is_some());
    (unstored.len() + queued.len() + unread + deferred.len()) as u64
}

/// Seals and sends queued publications while fewer than [`WINDOW_BYTES`]
/// are in flight (always at least one); `false` when the link is gone.
fn pump(
    protocol: &SyncProtocol,
    queued: &mut VecDeque<Publication>,
    unstored: &mut InFlight,
    outbound: &futures::channel::mpsc::UnboundedSender<Outgoing>,
    sent: &mut u32,
) -> bool {
    let mut in_flight: usize = unstored.iter().map(|(_, _, bytes)| bytes).sum();
    while in_flight < WINDOW_BYTES || unstored.is_empty() {
        let Some((ops, reached)) = queued.pop_front() else {
            break;
        };
        let envelope = protocol.seal_live(ops);
        in_flight += envelope.len();
        unstored.push_back((*sent, reached, envelope.len()));
        *sent = sent.wrapping_add(1);
        if outbound
            .unbounded_send(Outgoing {
                envelope,
                keep: true,
            })
            .is_err()
        {
            return false;
        }
    }
    true
}
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where a sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Not connected; retrying after a pause.
    Offline,
    /// Connecting.
    Connecting,
    /// Connected, with local changes not yet stored by the transport.
    Syncing,
    /// Connected, everything published is stored.
    Synced,
    /// Stopped by the application.
    Stopped,
}

impl SyncState {
    /// `"offline"`, `"connecting"`, `"syncing"`, `"synced"` or `"stopped"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Offline => "offline",
            SyncState::Connecting => "connecting",
            SyncState::Syncing => "syncing",
            SyncState::Synced => "synced",
            SyncState::Stopped => "stopped",
        }
    }
}

/// A snapshot of a sync's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// The state.
    pub state: SyncState,
    /// The transport, e.g. `relay ws://...`.
    pub transport: String,
    /// Other members on the topic.
    pub peers: u32,
    /// Envelopes published but not yet stored by the transport.
    pub pending: u64,
    /// Envelopes that failed authentication (another key or tampering).
    pub rejected: u64,
    /// The last connection error.
    pub last_error: Option<String>,
    /// When something was last received from a peer (ms since the epoch).
    pub last_received_ms: Option<u64>,
}

/// A running sync. Dropping it (or calling [`stop`](Self::stop)) stops it.
pub struct SyncHandle {
    status: Arc<Mutex<SyncStatus>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("status", &self.status())
            .finish()
    }
}

impl SyncHandle {
    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the sync (the connection closes; nothing is lost).
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn peer_name(peer: &PeerId) -> String {
    peer.to_string()
}

impl<S: Storage> Database<S> {
    /// The sync identity, if the database has one.
    pub fn sync_identity(&self) -> Option<SyncIdentity> {
        self.shared.state().identity.clone()
    }

    async fn adopt_identity(&self, identity: SyncIdentity) -> Result<()> {
        self.write_meta(vec![(
            meta_keys::SYNC_IDENTITY.to_owned(),
            identity.to_bytes(),
        )])
        .await?;
        self.shared.state().identity = Some(identity);
        Ok(())
    }

    /// An invite string for this database (creating its sync identity on
    /// first use). Anyone holding it can read and write: share it like a
    /// password.
    pub async fn create_invite(&self) -> Result<String> {
        if let Some(identity) = self.sync_identity() {
            return Ok(identity.invite());
        }
        let identity = SyncIdentity::generate();
        let invite = identity.invite();
        self.adopt_identity(identity).await?;
        Ok(invite)
    }

    /// Makes this database a replica of the one `invite` belongs to.
    pub async fn join_invite(&self, invite: &str) -> Result<()> {
        let identity = SyncIdentity::from_invite(invite)
            .map_err(|e| InputError::InvalidArgument(e.to_string()))?;
        match self.sync_identity() {
            Some(existing) if existing == identity => Ok(()),
            Some(_) => Err(InputError::InvalidArgument(
                "this database already syncs with another invite; open a new database to join this one"
                    .into(),
            )
            .into()),
            None => self.adopt_identity(identity).await,
        }
    }

    pub(crate) fn sync_meta(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.state().sync_meta.get(key).cloned()
    }

    /// Starts syncing through `connector` in the background. Needs a sync
    /// identity ([`create_invite`](Self::create_invite) or
    /// [`join_invite`](Self::join_invite)).
    pub fn sync<C: Connector>(&self, connector: C) -> Result<SyncHandle> {
        let identity = self.sync_identity().ok_or_else(|| {
            Error::Input(InputError::InvalidArgument(
                "this database has no sync identity yet: create an invite, or open it with one"
                    .into(),
            ))
        })?;
        let status = Arc::new(Mutex::new(SyncStatus {
            state: SyncState::Connecting,
            transport: connector.describe(),
            peers: 0,
            pending: 0,
            rejected: 0,
            last_error: None,
            last_received_ms: None,
        }));
        let (stop, stopped) = oneshot::channel();
        let resume_key = format!("{RESUME_PREFIX}{}", connector.describe());
        let mut protocol = SyncProtocol::new(self.actor(), identity.cipher());
        let hints = self
            .sync_meta(&resume_key)
            .and_then(|bytes| ResumeHint::list_from_bytes(&bytes).ok())
            .unwrap_or_default();
        protocol.inherit_hints(hints.clone());
        let engine = Engine {
            db: self.clone(),
            protocol,
            resume_key,
            hints_written: hints,
            cursor_key: format!("sync/cursor/{}", connector.describe()),
            published_key: format!("{PUBLISHED_PREFIX}{}", connector.describe()),
            asked: Vec::new(),
            answered: VecDeque::new(),
            ticks: 0,
            status: status.clone(),
            rendezvous: Rendezvous::of(&identity),
        };
        crate::platform::spawn(engine.run(connector, stopped));
        Ok(SyncHandle {
            status,
            stop: Mutex::new(Some(stop)),
        })
    }
}

struct Engine<S: Storage> {
    db: Database<S>,
    protocol: SyncProtocol,
    /// Where the resume hints of deltas being received are kept, and what
    /// was last written there.
    resume_key: String,
    hints_written: Vec<ResumeHint>,
    cursor_key: String,
    published_key: String,
    status: Arc<Mutex<SyncStatus>>,
    rendezvous: Rendezvous,
    /// Per peer, this instance's vector when it last answered the peer's
    /// hello with a hello of its own (this session).
    asked: Vec<(PeerId, VersionVector)>,
    /// Hellos answered this session: ((peer, its connection, a hash of its
    /// vector), the watchdog tick of the answer), newest last. A hello seen
    /// again is not answered again for [`STALL_TICKS`]` - 1` ticks: by
    /// then it is a peer whose delta stalled, asking again.
    answered: VecDeque<((PeerId, u64, u64), u64)>,
    /// Watchdog ticks this session.
    ticks: u64,
}

/// How often the sync engine's watchdog runs (see [`SyncProtocol::tick`]).
const WATCHDOG_PERIOD: Duration = Duration::from_secs(10);

/// Hellos remembered per session (see `Engine::answered`).
const REMEMBERED_HELLOS: usize = 1024;

enum SessionEnd {
    Disconnected,
    Stopped,
}

/// 50% .. 150% of `duration`, spread by the instance's actor id and the
/// attempt number: instances that lost the same connection reconnect at
/// different moments, yet one instance's schedule is reproducible (the
/// deterministic simulator replays a seed exactly).
fn jitter(duration: Duration, actor: &crate::crdt::ActorId, attempt: u64) -> Duration {
    let mut state = attempt;
    for chunk in actor.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        state ^= u64::from_le_bytes(word);
        // SplitMix64's finaliser: every input bit affects every output bit.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        state ^= state >> 31;
    }
    duration.mul_f64(0.5 + (state >> 11) as f64 / (1u64 << 53) as f64)
}

impl<S: Storage> Engine<S> {
    fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn cursor(&self) -> u64 {
        self.db
            .sync_meta(&self.cursor_key)
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0)
    }

    fn published(&self) -> VersionVector {
        self.db
            .sync_meta(&self.published_key)
            .and_then(|b| VersionVector::from_bytes(&b).ok())
            .unwrap_or_default()
    }

    async fn run<C: Connector>(mut self, connector: C, mut stop: oneshot::Receiver<()>) {
        let mut backoff = MIN_BACKOFF;
        let mut attempt = 0u64;
        loop {
            self.update(|s| s.state = SyncState::Connecting);
            let connect = connector.connect(self.rendezvous, self.cursor()).fuse();
            futures::pin_mut!(connect);
            let link = futures::select_biased! {
                _ = stop => break,
                link = connect => link,
            };
            match link {
                Ok(link) => {
                    backoff = MIN_BACKOFF;
                    match self.session(link, &mut stop).await {
                        SessionEnd::Stopped => break,
                        SessionEnd::Disconnected => {}
                    }
                }
                Err(error) => {
                    tracing::info!(%error, "sync: connection failed");
                    self.update(|s| s.last_error = Some(error));
                }
            }
            self.update(|s| {
                s.state = SyncState::Offline;
                s.peers = 0;
                s.pending = 0;
            });
            if self.db.is_closed() {
                break;
            }
            attempt = attempt.wrapping_add(1);
            let pause =
                crate::platform::sleep(jitter(backoff, &self.protocol.me(), attempt)).fuse();
            futures::pin_mut!(pause);
            futures::select_biased! {
                _ = stop => break,
                _ = pause => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.update(|s| s.state = SyncState::Stopped);
    }

    async fn session(&mut self, link: Link, stop: &mut oneshot::Receiver<()>) -> SessionEnd {
        let Link {
            outbound,
            mut inbound,
        } = link;
        // Subscribe before reading what to publish, so no commit falls
        // between the two.
        let mut commits = self.db.subscribe_commits();
        self.asked.clear();
        self.answered.clear();
        self.ticks = 0;
        let watchdog = crate::platform::sleep(WATCHDOG_PERIOD).fuse();
        futures::pin_mut!(watchdog);
        let mut sent: u32 = 0;
        let mut unstored: InFlight = VecDeque::new();
        let mut queued: VecDeque<Publication> = VecDeque::new();
        let mut peers: HashMap<u64, PeerId> = HashMap::new();
        let mut known: Vec<PeerId> = Vec::new();
        let mut cursor: Option<u64> = None;
        let mut published = self.published();

        let send = |envelope: Vec<u8>, keep: bool, sent: &mut u32| -> bool {
            *sent = sent.wrapping_add(1);
            outbound.unbounded_send(Outgoing { envelope, keep }).is_ok()
        };
        // The offline queue: everything peers may lack since the last
        // publication that the transport stored, up to the vector read
        // with it, read a window at a time as the transport stores what
        // went before.
        let Ok(vector) = self.db.version_vector_checked() else {
            return SessionEnd::Stopped;
        };
        let mut alive = send(self.protocol.hello(&vector), false, &mut sent);
        let mut offline = Some(OfflineQueue {
            seen: published.clone(),
            reached: published.clone(),
            vector,
            after: None,
        });
        // Live changes wait behind the offline queue: their vectors cover it.
        let mut deferred: VecDeque<Publication> = VecDeque::new();
        if let Err(error) = self.refill(&mut offline, &mut queued, &mut deferred).await {
            return end_after_read_failure(&error);
        }
        alive &= pump(
            &self.protocol,
            &mut queued,
            &mut unstored,
            &outbound,
            &mut sent,
        );
        let mut stored_since_write = 0usize;
        let pending = pending_publications(&unstored, &queued, &offline, &deferred);
        self.update(|s| {
            s.state = if pending == 0 {
                SyncState::Synced
            } else {
                SyncState::Syncing
            };
            s.pending = pending;
            s.last_error = None;
        });
        if !alive {
            return SessionEnd::Disconnected;
        }

        let end = loop {
            // A fixed polling order (not `select!`'s random one), so one
            // seed of the deterministic simulator replays exactly; a stop
            // first, so no stream of envelopes can hold it up.
            futures::select_biased! {
                _ = &mut *stop => break SessionEnd::Stopped,
                event = inbound.next() => {
                    let Some(event) = event else { break SessionEnd::Disconnected };
                    match event {
                        TransportEvent::Closed { reason } => {
                            self.update(|s| s.last_error = Some(reason));
                            break SessionEnd::Disconnected;
                        }
                        TransportEvent::Welcome { members } => self.update(|s| s.peers = members),
                        TransportEvent::Member { joined, connection, members } => {
                            self.update(|s| s.peers = members);
                            if !joined {
                                if let Some(peer) = peers.remove(&connection) {
                                    known.retain(|p| *p != peer);
                                    self.db.emit(SyncEvent::PeerDisconnected { peer: peer_name(&peer) });
                                }
                            }
                        }
                        TransportEvent::Stored { sequence, .. } => {
                            let mut advanced = false;
                            while unstored.front().is_some_and(|(s, _, _)| s.wrapping_sub(sequence) > u32::MAX / 2 || *s == sequence) {
                                let (_, vector, _) = unstored.pop_front().expect("checked");
                                published.merge(&vector);
                                advanced = true;
                                stored_since_write += 1;
                            }
                            // Progress is kept as it is made (every few
                            // envelopes), so a sync cut off halfway resumes
                            // where it stopped.
                            if advanced && (unstored.is_empty() || stored_since_write >= PROGRESS_EVERY) {
                                stored_since_write = 0;
                                let mut meta = vec![(self.published_key.clone(), published.to_bytes())];
                                if let Some(cursor) = cursor {
                                    meta.push((self.cursor_key.clone(), cursor.to_le_bytes().to_vec()));
                                }
                                if self.db.write_meta(meta).await.is_err() {
                                    break SessionEnd::Stopped;
                                }
                            }
                            if let Err(error) = self.refill(&mut offline, &mut queued, &mut deferred).await {
                                break end_after_read_failure(&error);
                            }
                            if !pump(&self.protocol, &mut queued, &mut unstored, &outbound, &mut sent) {
                                break SessionEnd::Disconnected;
                            }
                            let pending = pending_publications(&unstored, &queued, &offline, &deferred);
                            self.update(|s| {
                                s.pending = pending;
                                s.state = if pending == 0 { SyncState::Synced } else { SyncState::Syncing };
                            });
                        }
                        TransportEvent::Envelope { envelope, cursor: frame_cursor, from } => {
                            match self.handle(&envelope, from, &mut peers, &mut known, frame_cursor, &outbound, &mut sent, stop).await {
                                // The cursor moves past an envelope only once
                                // what it carried is committed (or it was
                                // nothing to commit).
                                Ok(()) => cursor = frame_cursor.or(cursor),
                                Err(HandleError::Closed) => break SessionEnd::Stopped,
                                Err(HandleError::Transport) => break SessionEnd::Disconnected,
                                Err(HandleError::NotCommitted | HandleError::Unreadable) => break SessionEnd::Disconnected,
                            }
                        }
                    }
                }
                () = watchdog => {
                    watchdog.set(crate::platform::sleep(WATCHDOG_PERIOD).fuse());
                    self.ticks += 1;
                    if self.protocol.tick() {
                        // A delta being received stalled (a chunk was lost
                        // on the way): a new hello, with resume hints,
                        // brings the rest.
                        let Ok(vector) = self.db.version_vector_checked() else {
                            break SessionEnd::Stopped;
                        };
                        if !send(self.protocol.hello(&vector), false, &mut sent) {
                            break SessionEnd::Disconnected;
                        }
                    }
                }
                batch = commits.next() => {
                    let Some(batch) = batch else { break SessionEnd::Stopped };
                    // Changes from peers reached the others through the
                    // transport already; local ones (this instance's or
                    // another tab's) are published.
                    if matches!(batch.origin, Origin::Peer(_)) || batch.ops.is_empty() {
                        continue;
                    }
                    // The vector as of this batch's commit: one read now
                    // could cover later commits not yet sent.
                    let vector = VersionVector::clone(&batch.vector);
                    let waiting = if offline.is_some() { &mut deferred } else { &mut queued };
                    for group in SyncProtocol::live_groups(batch.ops.to_vec()) {
                        waiting.push_back((group, vector.clone()));
                    }
                    if !pump(&self.protocol, &mut queued, &mut unstored, &outbound, &mut sent) {
                        break SessionEnd::Disconnected;
                    }
                    let pending = pending_publications(&unstored, &queued, &offline, &deferred);
                    self.update(|s| {
                        s.pending = pending;
                        s.state = SyncState::Syncing;
                    });
                }
            }
        };
        // Keep the cursor for the next connection.
        if let Some(cursor) = cursor {
            let _ = self
                .db
                .write_meta(vec![(
                    self.cursor_key.clone(),
                    cursor.to_le_bytes().to_vec(),
                )])
                .await;
        }
        for peer in known {
            self.db.emit(SyncEvent::PeerDisconnected {
                peer: peer_name(&peer),
            });
        }
        end
    }

    /// Moves the offline queue's next window into `queued` while fewer than
    /// [`QUEUED_CHUNKS`] publications wait there (read from the database,
    /// documents left in storage too), in groups for LIVE envelopes, each
    /// with the published vector it brings once the transport stored it
    /// and every envelope before it. The operations go in dot order (by
    /// writer, then sequence number), so after a prefix every current
    /// version of the writers done, and of the writer in progress up to
    /// its last sequence number sent, is out: a later `changes_since` of
    /// that vector resends nothing stored. The last group brings the
    /// vector read when the session started. Once the queue is read, the
    /// live changes that waited behind it follow.
    async fn refill(
        &self,
        offline: &mut Option<OfflineQueue>,
        queued: &mut VecDeque<Publication>,
        deferred: &mut VecDeque<Publication>,
    ) -> Result<()> {
        while let Some(queue) = offline.as_mut() {
            if queued.len() >= QUEUED_CHUNKS {
                return Ok(());
            }
            let (ops, next) = self
                .db
                .changes_window(&queue.seen, queue.after, QUEUED_CHUNKS / 2 * CHUNK_BYTES)
                .await?;
            let groups = SyncProtocol::live_groups(ops);
            let count = groups.len();
            for (index, group) in groups.into_iter().enumerate() {
                if next.is_none() && index + 1 == count {
                    queue.reached.merge(&queue.vector);
                } else if let Some(last) = group.last().map(|op| op.version.dot()) {
                    // Writers before the one in progress are done.
                    for (actor, seq) in queue.vector.iter() {
                        if *actor < last.actor {
                            queue.reached.raise(*actor, seq);
                        }
                    }
                    // (A write that came since the session started is
                    // published as such; the queue claims no more than the
                    // vector read then.)
                    let seq = last.seq.min(queue.vector.get(&last.actor));
                    queue.reached.raise(last.actor, seq);
                }
                queued.push_back((group, queue.reached.clone()));
            }
            match next {
                Some(after) => queue.after = Some(after),
                None => {
                    queued.append(deferred);
                    *offline = None;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &mut self,
        envelope: &[u8],
        from: u64,
        peers: &mut HashMap<u64, PeerId>,
        known: &mut Vec<PeerId>,
        cursor: Option<u64>,
        outbound: &futures::channel::mpsc::UnboundedSender<Outgoing>,
        sent: &mut u32,
        stop: &mut oneshot::Receiver<()>,
    ) -> std::result::Result<(), HandleError> {
        let incoming = match self.protocol.receive(envelope) {
            Ok(incoming) => incoming,
            Err(error) => {
                tracing::warn!(%error, "sync: dropped an envelope");
                let rejected = self.protocol.rejected();
                self.update(|s| s.rejected = rejected);
                return Ok(());
            }
        };
        let mut note = |peer: PeerId, db: &Database<S>| {
            if from != 0 {
                peers.insert(from, peer);
            }
            if !known.contains(&peer) && from != 0 {
                known.push(peer);
                db.emit(SyncEvent::PeerConnected {
                    peer: peer_name(&peer),
                });
            }
        };
        match incoming {
            Incoming::Ignore => {}
            Incoming::Hello {
                from: peer,
                vector,
                asked,
                resume,
            } => {
                note(peer, &self.db);
                // At most one delta per peer connection and vector per
                // stall period: a hello seen again soon (replayed by a
                // relay, or repeated) costs nothing.
                let key = (peer, from, vector_digest(&vector));
                let ticks = self.ticks;
                if let Some(at) = self.answered.iter().position(|(seen, _)| *seen == key) {
                    // One tick less than the receiver waits: a receiver's
                    // stall (at least two whole periods without a chunk)
                    // spans at least two ticks here.
                    if ticks < self.answered[at].1 + u64::from(STALL_TICKS - 1) {
                        return Ok(());
                    }
                    self.answered.remove(at);
                }
                if self.answered.len() >= REMEMBERED_HELLOS {
                    self.answered.pop_front();
                }
                self.answered.push_back((key, ticks));
                // Planned together with the vector: a vector read after a
                // later commit would make the peer adopt a write the delta
                // does not carry. When the peer holds a prefix of a delta
                // this instance sent at this same vector, only the rest is
                // sent.
                let mut plan = self
                    .db
                    .plan_changes(
                        &vector,
                        |mine| {
                            resume
                                .filter(|(digest, _)| *digest == vector_digest(mine))
                                .map(|(_, after)| after)
                        },
                        CHUNK_BYTES,
                    )
                    .map_err(|_| HandleError::Closed)?;
                let mine = plan.vector.clone();
                // Read, sealed and sent a few chunks at a time. There is
                // always at least one chunk (the last, of what superseded
                // planned versions meanwhile), so an empty delta still
                // tells the peer it is up to date.
                let delta = self.protocol.next_delta_id();
                let count = plan.chunk_count();
                loop {
                    let chunks = self
                        .db
                        .next_planned_chunks(&mut plan, QUEUED_CHUNKS / 2 * CHUNK_BYTES)
                        .await
                        .map_err(|error| match end_after_read_failure(&error) {
                            SessionEnd::Stopped => HandleError::Closed,
                            SessionEnd::Disconnected => HandleError::Unreadable,
                        })?;
                    if chunks.is_empty() {
                        break;
                    }
                    // The transport's writer takes what was sent before more
                    // is read and sealed (in a browser it runs only once
                    // this task yields): a delta far larger than memory
                    // never waits whole in the queue.
                    crate::platform::yield_to_callers().await;
                    // A stop does not wait for the rest of a long delta.
                    if !matches!(stop.try_recv(), Ok(None)) {
                        return Err(HandleError::Closed);
                    }
                    for (index, ops) in chunks {
                        let envelope = self
                            .protocol
                            .seal_delta_chunk(peer, delta, index, count, &mine, ops);
                        *sent = sent.wrapping_add(1);
                        outbound
                            .unbounded_send(Outgoing {
                                envelope,
                                keep: false,
                            })
                            .map_err(|_| HandleError::Transport)?;
                    }
                }
                // The peer may hold writes this instance lacks (it may have
                // been online first, so it never saw this instance's hello,
                // and the relay's backlog may no longer hold them): ask it,
                // and it alone. Not only when its vector is ahead: writes
                // after a gap in an actor's sequence (say, an actor whose
                // database was cleared before all its writes went out) are
                // covered by no vector, so equal vectors can hide different
                // states. An ASK is answered with a delta only, and each
                // peer is asked once per vector of ours, so nothing circles.
                let asked_before = self.asked.iter().position(|(p, _)| *p == peer);
                let repeat = asked_before.is_some_and(|i| self.asked[i].1 == mine);
                if !asked && !repeat {
                    *sent = sent.wrapping_add(1);
                    outbound
                        .unbounded_send(Outgoing {
                            envelope: self.protocol.ask(peer, &mine),
                            keep: false,
                        })
                        .map_err(|_| HandleError::Transport)?;
                    match asked_before {
                        Some(i) => self.asked[i].1 = mine,
                        None => self.asked.push((peer, mine)),
                    }
                }
            }
            Incoming::Apply {
                from: peer,
                ops,
                complete,
                chunk,
            } => {
                note(peer, &self.db);
                let meta = cursor
                    .map(|c| vec![(self.cursor_key.clone(), c.to_le_bytes().to_vec())])
                    .unwrap_or_default();
                let finished = complete.is_some();
                let result = self
                    .db
                    .apply_remote_with_meta(ops, Origin::Peer(peer_name(&peer)), complete, meta)
                    .await;
                if let Some(chunk) = chunk {
                    self.protocol.chunk_applied(peer, chunk, result.is_ok());
                    // Kept after the commit, so a hint never names more
                    // than is stored.
                    let hints = self.protocol.resume_hints();
                    if result.is_ok() && hints != self.hints_written {
                        let bytes = ResumeHint::list_to_bytes(&hints);
                        if self
                            .db
                            .write_meta(vec![(self.resume_key.clone(), bytes)])
                            .await
                            .is_ok()
                        {
                            self.hints_written = hints;
                        }
                    }
                }
                match result {
                    Ok(()) => {}
                    Err(Error::Storage(crate::error::StorageError::Closed)) => {
                        return Err(HandleError::Closed)
                    }
                    Err(Error::Storage(error)) => {
                        // Not committed here (quota, I/O): keep the cursor
                        // before this envelope and reconnect later, which
                        // replays it (not dropped as a replay) and asks
                        // peers again.
                        self.protocol.forget(envelope);
                        tracing::warn!(%error, "sync: could not commit a peer's changes");
                        return Err(HandleError::NotCommitted);
                    }
                    Err(error) => {
                        // Invalid data from a peer is dropped, not fatal.
                        tracing::warn!(%error, "sync: could not apply a peer's changes");
                    }
                }
                let now = crate::platform::now_ms();
                self.update(|s| s.last_received_ms = Some(now));
                if finished {
                    let mine = self
                        .db
                        .version_vector_checked()
                        .map_err(|_| HandleError::Closed)?;
                    *sent = sent.wrapping_add(1);
                    outbound
                        .unbounded_send(Outgoing {
                            envelope: self.protocol.ack(peer, &mine),
                            keep: false,
                        })
                        .map_err(|_| HandleError::Transport)?;
                }
            }
            Incoming::Ack { from: peer, .. } => note(peer, &self.db),
        }
        Ok(())
    }
}

enum HandleError {
    /// The database closed.
    Closed,
    /// The connection is gone.
    Transport,
    /// What arrived could not be committed here.
    NotCommitted,
    /// The changes a peer asked for could not be read here.
    Unreadable,
}
