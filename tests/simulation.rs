//! The deterministic simulator (issue #20): real [`Database`] instances on
//! real code paths, driven by a seeded random schedule in simulated time,
//! with faults injected at the seams the code has — the [`Storage`] trait,
//! the [`Connector`]/[`Link`] transport and the wall clock — in the manner
//! of FoundationDB's simulation testing and TigerBeetle's VOPR.
//!
//! A world has two or three devices; each device is one storage (a
//! [`MemoryStorage`] behind a fault-injecting wrapper) with one or two open
//! instances (tabs, processes) that all sync through one simulated relay.
//! The schedule writes and deletes concurrently, crashes devices in the
//! middle of commits (the commit lands or not, and is never acknowledged),
//! reopens them, makes commits fail (quota), makes clocks jump, lag, race
//! years ahead or read `u64::MAX`, cuts relay connections, restarts syncs,
//! and has the relay drop, duplicate, reorder, replay, trim and truncate what it
//! holds and answer STORED for envelopes it never stored. Envelopes take a
//! random time to reach the relay, so what a closed connection sent still
//! arrives after its instance connected again, and some values are large
//! enough for deltas of several chunks. Then the faults stop, every device
//! reopens, every instance syncs afresh (twice, the second time while the
//! first round's deltas may still be on their way), and the world must
//! converge.
//!
//! Invariants (`docs/ARCHITECTURE.md`, "Guarantees"), checked after every
//! step and at the end:
//! - durable: a write acknowledged on a device is present, or superseded by
//!   a version that has seen it, in every instance opened on that device
//!   after the acknowledgement;
//! - sound vectors: no instance's version vector covers the dot of an
//!   acknowledged write unless the record holds that write or a version
//!   that has seen it;
//! - unique dots: no dot is acknowledged for two different writes;
//! - at the end: every acknowledged write is present or superseded on every
//!   instance, no delete is undone by a version it had seen, all instances
//!   hold byte-identical records and conflicts, and every stored row
//!   decodes;
//! - nothing panics (a panic in any task fails the seed).
//!
//! Everything runs on one current-thread tokio runtime with paused time, so
//! a seed replays exactly: a failure prints the command that replays it.
//!
//! Environment: `PLURESDB_SIM_SEEDS` (how many seeds, default 2,000),
//! `PLURESDB_SIM_START` (the first seed, default 0), `PLURESDB_SIM_SEED`
//! (run one seed, verbosely), `PLURESDB_SIM_THREADS` (worker threads,
//! default: every core).
#![cfg(not(target_arch = "wasm32"))]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use pluresdb::crdt::{encode_operations, ActorId, CrdtOperation, Dot, Record, VersionVector};
use pluresdb::error::StorageError;
use pluresdb::platform::{BoxFuture, WallClock};
use pluresdb::storage::{
    meta_keys, CommitBatch, CommitReceipt, LoadedState, MemoryStorage, SlotLease, Storage,
};
use pluresdb::transport::{Connector, Link, Outgoing, Rendezvous, TransportEvent};
use pluresdb::{Database, OpenOptions, Origin, SyncHandle};
use serde_json::json;

// ---------------------------------------------------------------------------
// Randomness

/// SplitMix64: small, fast, and good enough to draw a schedule.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of: never, sometimes, often.
    fn intensity(&mut self, sometimes: f64, often: f64) -> f64 {
        match self.below(3) {
            0 => 0.0,
            1 => sometimes,
            _ => often,
        }
    }
}

/// The world's one random source, shared by every task (they run on one
/// thread in a deterministic order).
#[derive(Clone)]
struct SharedRng(Arc<Mutex<Rng>>);

impl SharedRng {
    fn with<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------
// Clocks

/// A device's wall clock: simulated time plus an offset that faults move,
/// or a reading pinned at `u64::MAX`.
#[derive(Clone)]
struct SimClock {
    start: tokio::time::Instant,
    base_ms: u64,
    offset_ms: Arc<Mutex<i128>>,
    broken: Arc<Mutex<bool>>,
}

impl WallClock for SimClock {
    fn now_ms(&self) -> u64 {
        if *self.broken.lock().unwrap() {
            return u64::MAX;
        }
        let elapsed = self.start.elapsed().as_millis() as i128;
        let now = self.base_ms as i128 + elapsed + *self.offset_ms.lock().unwrap();
        now.clamp(0, u64::MAX as i128) as u64
    }
}

// ---------------------------------------------------------------------------
// Storage with faults

/// Faults a device's storage injects.
#[derive(Debug, Default, Clone, Copy)]
struct StorageFaults {
    /// A commit fails with a quota error (nothing written).
    quota: f64,
    /// The process dies inside a commit: the commit lands or not (even
    /// odds) and is never acknowledged.
    crash: f64,
}

struct DeviceState {
    /// Bumped by every crash: handles of older processes are dead.
    process: u64,
    faults: StorageFaults,
    /// Slot -> (process, lease) of its holder.
    held: BTreeMap<u32, (u64, u64)>,
    next_lease: u64,
    /// The device crashed and its instances must be dropped.
    crashed: bool,
}

struct DeviceStorage {
    index: usize,
    /// Bumped each time the device's database is cleared.
    incarnation: u8,
    data: MemoryStorage,
    state: Mutex<DeviceState>,
    rng: SharedRng,
}

/// A handle on a device's storage for one process incarnation.
#[derive(Clone)]
struct FaultyStorage {
    device: Arc<DeviceStorage>,
    process: u64,
}

struct SlotHold {
    device: Arc<DeviceStorage>,
    slot: u32,
    lease: u64,
}

impl Drop for SlotHold {
    fn drop(&mut self) {
        let mut state = self.device.state.lock().unwrap();
        if state
            .held
            .get(&self.slot)
            .is_some_and(|(_, lease)| *lease == self.lease)
        {
            state.held.remove(&self.slot);
        }
    }
}

fn dead() -> StorageError {
    StorageError::Backend("the process crashed".into())
}

impl FaultyStorage {
    fn alive(&self) -> bool {
        self.device.state.lock().unwrap().process == self.process
    }
}

impl Storage for FaultyStorage {
    fn describe(&self) -> String {
        format!("sim-device-{}", self.device.index)
    }

    async fn acquire_slot(&self) -> Result<SlotLease, StorageError> {
        let (slot, lease) = {
            let mut state = self.device.state.lock().unwrap();
            if state.process != self.process {
                return Err(dead());
            }
            let process = state.process;
            // A slot held by a crashed process is free: the OS released it.
            let slot = (0u32..)
                .find(|n| {
                    state
                        .held
                        .get(n)
                        .is_none_or(|(holder, _)| *holder != process)
                })
                .expect("a free slot");
            state.next_lease += 1;
            let lease = state.next_lease;
            state.held.insert(slot, (process, lease));
            (slot, lease)
        };
        // A slot's actor id is deterministic, so a seed replays exactly.
        let key = meta_keys::slot(slot);
        let loaded = self.device.data.load().await?;
        if !loaded.meta.contains_key(&key) {
            let mut actor = [0u8; 16];
            actor[0] = 0xA0 + self.device.index as u8;
            actor[1..5].copy_from_slice(&slot.to_le_bytes());
            actor[5] = self.device.incarnation;
            self.device.data.put_raw_meta(&key, actor.to_vec());
        }
        let hold = SlotHold {
            device: self.device.clone(),
            slot,
            lease,
        };
        Ok(SlotLease::new(slot, Box::new(hold)))
    }

    async fn load(&self) -> Result<LoadedState, StorageError> {
        if !self.alive() {
            return Err(dead());
        }
        self.device.data.load().await
    }

    fn reads_records(&self) -> bool {
        true
    }

    async fn read_records(&self, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        if !self.alive() {
            return Err(dead());
        }
        self.device.data.read_records(ids).await
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitReceipt, StorageError> {
        let faults = {
            let state = self.device.state.lock().unwrap();
            if state.process != self.process {
                return Err(dead());
            }
            state.faults
        };
        let (quota, crash, lands, latency_ms) = self.device.rng.with(|rng| {
            (
                rng.chance(faults.quota),
                rng.chance(faults.crash),
                rng.chance(0.5),
                if rng.chance(0.3) {
                    1 + rng.below(20)
                } else {
                    0
                },
            )
        });
        if quota {
            return Err(StorageError::QuotaExceeded(
                "injected by the simulator".into(),
            ));
        }
        // Real storage commits on another thread or in the browser's own
        // time: writes queue up while a commit is in flight.
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
            // A process that crashed meanwhile writes nothing more.
            if !self.alive() {
                return Err(dead());
            }
        }
        if crash {
            if lands {
                self.device.data.commit(batch).await?;
            }
            let mut state = self.device.state.lock().unwrap();
            state.process += 1;
            state.crashed = true;
            return Err(dead());
        }
        self.device.data.commit(batch).await
    }
}

// ---------------------------------------------------------------------------
// The relay

/// Faults the relay injects.
#[derive(Debug, Default, Clone, Copy)]
struct RelayFaults {
    /// A live envelope is not delivered to one member.
    drop: f64,
    /// A live or replayed envelope is delivered twice.
    duplicate: f64,
    /// A replayed envelope swaps places with the next one.
    reorder: f64,
    /// A kept envelope is not stored, yet STORED is answered.
    false_stored: f64,
    /// After a store, the oldest half of the backlog is truncated.
    truncate: f64,
    /// With a delivery, an envelope recorded earlier (any kind) is
    /// delivered again, as if from another connection: a relay replaying
    /// what it saw.
    replay: f64,
}

/// Envelopes the simulated relay keeps to replay.
const RECORDED: usize = 64;

struct Member {
    events: mpsc::UnboundedSender<TransportEvent>,
}

struct RelayState {
    faults: RelayFaults,
    /// Envelopes kept: (backlog sequence, envelope).
    backlog: Vec<(u64, Vec<u8>)>,
    backlog_limit: usize,
    next_sequence: u64,
    members: BTreeMap<u64, Member>,
    next_member: u64,
    /// Envelopes fanned out, newest last (at most [`RECORDED`]).
    recorded: VecDeque<Vec<u8>>,
}

#[derive(Clone)]
struct SimRelay {
    state: Arc<Mutex<RelayState>>,
    rng: SharedRng,
    /// The most time an envelope takes to reach the relay (ms), drawn
    /// per envelope: what a connection sent before it closed can still
    /// be fanned out after its instance connected again. Not a fault; it
    /// stays on while the world heals.
    latency_ms: u64,
}

impl SimRelay {
    fn member_count(state: &RelayState) -> u32 {
        state.members.len().saturating_sub(1) as u32
    }

    fn leave(&self, id: u64) {
        let mut state = self.state.lock().unwrap();
        if state.members.remove(&id).is_none() {
            return;
        }
        let members = Self::member_count(&state);
        for member in state.members.values() {
            let _ = member.events.unbounded_send(TransportEvent::Member {
                joined: false,
                connection: id,
                members,
            });
        }
    }

    /// Cuts one member's connection.
    fn cut(&self, pick: u64) {
        let victim = {
            let state = self.state.lock().unwrap();
            let ids: Vec<u64> = state.members.keys().copied().collect();
            if ids.is_empty() {
                return;
            }
            let id = ids[(pick % ids.len() as u64) as usize];
            let _ = state.members[&id]
                .events
                .unbounded_send(TransportEvent::Closed {
                    reason: "cut by the simulator".into(),
                });
            id
        };
        self.leave(victim);
    }

    fn join(&self, cursor: u64) -> Link {
        let (events, inbound) = mpsc::unbounded();
        let (outbound, mut to_publish) = mpsc::unbounded::<Outgoing>();
        let id = {
            let mut state = self.state.lock().unwrap();
            state.next_member += 1;
            let id = state.next_member;
            let members = state.members.len() as u32;
            for member in state.members.values() {
                let _ = member.events.unbounded_send(TransportEvent::Member {
                    joined: true,
                    connection: id,
                    members,
                });
            }
            let _ = events.unbounded_send(TransportEvent::Welcome { members });
            // The backlog after the cursor, with the relay's faults.
            let mut replay: Vec<(u64, Vec<u8>)> = state
                .backlog
                .iter()
                .filter(|(sequence, _)| *sequence > cursor)
                .cloned()
                .collect();
            let faults = state.faults;
            self.rng.with(|rng| {
                for index in 0..replay.len().saturating_sub(1) {
                    if rng.chance(faults.reorder) {
                        replay.swap(index, index + 1);
                    }
                }
                for (sequence, envelope) in replay {
                    let copies = if rng.chance(faults.duplicate) { 2 } else { 1 };
                    for _ in 0..copies {
                        let _ = events.unbounded_send(TransportEvent::Envelope {
                            envelope: envelope.clone(),
                            cursor: Some(sequence),
                            from: 0,
                        });
                    }
                }
            });
            state.members.insert(
                id,
                Member {
                    events: events.clone(),
                },
            );
            id
        };
        let relay = self.clone();
        let instance_side = events.clone();
        tokio::spawn(async move {
            let mut published = 0u32;
            // Once the instance closed its connection, only what was already
            // on its way still reaches the relay (a socket's buffers: 0 to 3
            // envelopes); the rest of what it had queued is lost. So a
            // delta cut off by a restart reaches the peer's next session as
            // a partial suffix of late chunks.
            let mut in_flight_after_close: Option<u64> = None;
            while let Some(Outgoing { envelope, keep }) = to_publish.next().await {
                let latency = relay.rng.with(|rng| rng.below(relay.latency_ms + 1));
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                if instance_side.is_closed() {
                    let left = in_flight_after_close
                        .get_or_insert_with(|| relay.rng.with(|rng| rng.below(4)));
                    if *left == 0 {
                        continue;
                    }
                    *left -= 1;
                }
                let sequence = published;
                published = published.wrapping_add(1);
                let mut state = relay.state.lock().unwrap();
                if !state.members.contains_key(&id) {
                    break; // cut
                }
                let faults = state.faults;
                let mut backlog_sequence = None;
                if keep {
                    let (stored, truncate) = relay.rng.with(|rng| {
                        (
                            !rng.chance(faults.false_stored),
                            rng.chance(faults.truncate),
                        )
                    });
                    state.next_sequence += 1;
                    let kept_as = state.next_sequence;
                    if stored {
                        state.backlog.push((kept_as, envelope.clone()));
                        let excess = state.backlog.len().saturating_sub(state.backlog_limit);
                        state.backlog.drain(..excess);
                        if truncate {
                            let half = state.backlog.len() / 2;
                            state.backlog.drain(..half);
                        }
                    }
                    backlog_sequence = Some(kept_as);
                    let _ = state.members[&id]
                        .events
                        .unbounded_send(TransportEvent::Stored {
                            sequence,
                            cursor: kept_as,
                        });
                }
                let receivers: Vec<mpsc::UnboundedSender<TransportEvent>> = state
                    .members
                    .iter()
                    .filter(|(member, _)| **member != id)
                    .map(|(_, member)| member.events.clone())
                    .collect();
                if state.recorded.len() >= RECORDED {
                    state.recorded.pop_front();
                }
                state.recorded.push_back(envelope.clone());
                let replayed = relay.rng.with(|rng| {
                    rng.chance(faults.replay)
                        .then(|| rng.below(state.recorded.len() as u64) as usize)
                });
                let replayed = replayed.map(|index| state.recorded[index].clone());
                let fake_connection = state.next_member + 1_000;
                drop(state);
                for receiver in receivers {
                    let copies = relay.rng.with(|rng| {
                        if rng.chance(faults.drop) {
                            0
                        } else if rng.chance(faults.duplicate) {
                            2
                        } else {
                            1
                        }
                    });
                    for _ in 0..copies {
                        let _ = receiver.unbounded_send(TransportEvent::Envelope {
                            envelope: envelope.clone(),
                            cursor: backlog_sequence,
                            from: id,
                        });
                    }
                    if let Some(old) = &replayed {
                        let _ = receiver.unbounded_send(TransportEvent::Envelope {
                            envelope: old.clone(),
                            cursor: None,
                            from: fake_connection,
                        });
                    }
                }
            }
            relay.leave(id);
        });
        Link { outbound, inbound }
    }
}

/// Connects to the simulated relay.
#[derive(Clone)]
struct SimConnector(SimRelay);

impl Connector for SimConnector {
    fn connect(&self, _rendezvous: Rendezvous, cursor: u64) -> BoxFuture<'_, Result<Link, String>> {
        let link = self.0.join(cursor);
        Box::pin(async move { Ok(link) })
    }

    fn describe(&self) -> String {
        "sim-relay".into()
    }
}

// ---------------------------------------------------------------------------
// The world

/// A write acknowledged to its caller.
#[derive(Debug, Clone)]
struct Acked {
    device: usize,
    /// The device's incarnation (a cleared database loses what it held).
    incarnation: u8,
    /// Position in the world's event order when it was acknowledged.
    at: u64,
    op: CrdtOperation,
}

struct Instance {
    name: String,
    db: Database<FaultyStorage>,
    sync: Option<SyncHandle>,
    /// Position in the world's event order when it was opened.
    opened_at: u64,
}

struct Device {
    storage: Arc<DeviceStorage>,
    clock: SimClock,
    instances: Vec<Instance>,
    opened: u64,
}

/// What the world logged: acknowledged writes, panics, the event counter.
#[derive(Default)]
struct Log {
    acked: Vec<Acked>,
    events: u64,
    lines: Vec<String>,
    /// Writes refused for a reason no fault explains (the simulator
    /// injects quota errors and crashes; a closed instance refuses too).
    refused: Vec<String>,
}

struct World {
    seed: u64,
    rng: SharedRng,
    relay: SimRelay,
    devices: Vec<Device>,
    invite: String,
    log: Arc<Mutex<Log>>,
    verbose: bool,
    writes: u64,
    rogues: u64,
    /// Every instance's `cache_bytes`: in some worlds every document stays
    /// in memory, in others none or a few do, so reads, merges and sync
    /// read documents back from storage all the time.
    cache_bytes: usize,
    /// How long after the last sync restart of healing every instance
    /// first held the same state with every acknowledged write; `None`
    /// while it has not.
    settled_after: Option<Duration>,
}

/// How soon after the last sync restart of healing, with every fault off,
/// the world must have settled: well under the sync watchdog's first
/// re-hello (three 10 s periods), so a replica left behind until the
/// watchdog or a reconnect rescues it fails the seed.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// The slowest settling seen in this process, in milliseconds, and its seed.
static SLOWEST_SETTLE: Mutex<(u128, u64)> = Mutex::new((0, 0));

thread_local! {
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

fn failure(world: &World, what: String) -> String {
    let log = world.log.lock().unwrap();
    let tail: Vec<&String> = log.lines.iter().rev().take(40).collect();
    let mut text = format!(
        "seed {} failed: {what}\nreplay: PLURESDB_SIM_SEED={} cargo test --test simulation -- --nocapture\nlast events (newest first):\n",
        world.seed, world.seed
    );
    for line in tail {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

impl World {
    fn note(&self, line: String) {
        let mut log = self.log.lock().unwrap();
        log.events += 1;
        if self.verbose {
            eprintln!("[{}] {line}", log.events);
        }
        log.lines.push(line);
        if log.lines.len() > 200 {
            log.lines.drain(..100);
        }
    }

    fn event(&self) -> u64 {
        let mut log = self.log.lock().unwrap();
        log.events += 1;
        log.events
    }

    async fn new(seed: u64, verbose: bool) -> World {
        let mut rng = Rng(seed);
        let relay_faults = RelayFaults {
            drop: rng.intensity(0.05, 0.3),
            duplicate: rng.intensity(0.05, 0.3),
            reorder: rng.intensity(0.1, 0.5),
            false_stored: rng.intensity(0.05, 0.3),
            truncate: rng.intensity(0.02, 0.1),
            replay: rng.intensity(0.05, 0.3),
        };
        let backlog_limit = [8usize, 64, 10_000][rng.below(3) as usize];
        // Drawn apart, so a seed's world is otherwise what it was before
        // caches were simulated.
        let cache_bytes = [usize::MAX, 0, 64][Rng(seed ^ 0xCAC4E).below(3) as usize];
        let latency_ms = [0u64, 20, 500][rng.below(3) as usize];
        let device_count = 2 + rng.below(2) as usize;
        let shared = SharedRng(Arc::new(Mutex::new(Rng(rng.next()))));
        let relay = SimRelay {
            state: Arc::new(Mutex::new(RelayState {
                faults: relay_faults,
                backlog: Vec::new(),
                backlog_limit,
                next_sequence: 0,
                members: BTreeMap::new(),
                next_member: 0,
                recorded: VecDeque::new(),
            })),
            rng: shared.clone(),
            latency_ms,
        };
        let start = tokio::time::Instant::now();
        let mut devices = Vec::new();
        let mut planned = Vec::new();
        for index in 0..device_count {
            let faults = StorageFaults {
                quota: rng.intensity(0.05, 0.2),
                crash: rng.intensity(0.01, 0.05),
            };
            let storage = Arc::new(DeviceStorage {
                index,
                incarnation: 0,
                data: MemoryStorage::new(),
                state: Mutex::new(DeviceState {
                    process: 0,
                    // Set once the world is set up.
                    faults: StorageFaults::default(),
                    held: BTreeMap::new(),
                    next_lease: 0,
                    crashed: false,
                }),
                rng: shared.clone(),
            });
            let clock = SimClock {
                start,
                base_ms: 1_750_000_000_000 + rng.below(10_000),
                offset_ms: Arc::new(Mutex::new(0)),
                broken: Arc::new(Mutex::new(false)),
            };
            planned.push(faults);
            devices.push(Device {
                storage,
                clock,
                instances: Vec::new(),
                opened: 0,
            });
        }
        let mut world = World {
            seed,
            rng: shared,
            relay,
            devices,
            invite: String::new(),
            log: Arc::new(Mutex::new(Log::default())),
            verbose,
            writes: 0,
            rogues: 0,
            cache_bytes,
            settled_after: None,
        };
        world.note(format!(
            "world: {device_count} devices, relay {relay_faults:?}, backlog limit {backlog_limit}, latency up to {latency_ms} ms, cache {cache_bytes} bytes"
        ));
        // Device 0 creates the sync identity; the others join it.
        for index in 0..device_count {
            world.open_instance(index).await;
            if index == 0 {
                let db = &world.devices[0].instances[0].db;
                world.invite = db.create_invite().await.expect("invite");
            }
        }
        for (device, faults) in world.devices.iter().zip(planned) {
            device.storage.state.lock().unwrap().faults = faults;
        }
        world
    }

    /// Opens one more instance on `device` (with faults off for the open
    /// itself) and starts its sync. Returns false when it could not open.
    async fn open_instance(&mut self, device: usize) -> bool {
        let process = self.devices[device].storage.state.lock().unwrap().process;
        let storage = FaultyStorage {
            device: self.devices[device].storage.clone(),
            process,
        };
        let faults = std::mem::take(&mut self.devices[device].storage.state.lock().unwrap().faults);
        let options = OpenOptions {
            clock: Arc::new(self.devices[device].clock.clone()),
            cache_bytes: self.cache_bytes,
            ..OpenOptions::default()
        };
        let opened = Database::open(storage, options).await;
        self.devices[device].storage.state.lock().unwrap().faults = faults;
        let db = match opened {
            Ok(db) => db,
            Err(error) => {
                self.note(format!("device {device}: open failed: {error}"));
                return false;
            }
        };
        if db.sync_identity().is_none() && !self.invite.is_empty() {
            if let Err(error) = db.join_invite(&self.invite).await {
                self.note(format!("device {device}: join failed: {error}"));
                return false;
            }
        }
        self.devices[device].opened += 1;
        let name = format!("d{device}.{}", self.devices[device].opened);
        self.spawn_feed(device, self.devices[device].storage.incarnation, &name, &db);
        let opened_at = self.event();
        self.note(format!("{name}: opened as {}", db.actor()));
        let mut instance = Instance {
            name,
            db,
            sync: None,
            opened_at,
        };
        if !self.invite.is_empty() {
            instance.sync = instance.db.sync(SimConnector(self.relay.clone())).ok();
        }
        self.devices[device].instances.push(instance);
        true
    }

    /// Records every write an instance commits locally: these are exactly
    /// its acknowledged writes (the feed is told before the callers).
    fn spawn_feed(&self, device: usize, incarnation: u8, name: &str, db: &Database<FaultyStorage>) {
        let mut feed = db.subscribe_commits();
        let log = self.log.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Some(batch) = feed.next().await {
                if batch.origin != Origin::Local {
                    continue;
                }
                let mut log = log.lock().unwrap();
                log.events += 1;
                let at = log.events;
                for op in &batch.ops {
                    log.lines.push(format!(
                        "{name}: acknowledged {} {:?} dot {:?}",
                        if op.is_delete() { "delete" } else { "put" },
                        op.id,
                        op.version.dot()
                    ));
                    log.acked.push(Acked {
                        device,
                        incarnation,
                        at,
                        op: op.clone(),
                    });
                }
            }
        });
    }

    /// The user clears a device's database (its storage starts empty, with
    /// new actors): what it held and never sent is gone by intent.
    async fn clear_device(&mut self) {
        let device = self.rng.with(|rng| rng.below(self.devices.len() as u64)) as usize;
        let old = self.devices[device].storage.clone();
        let faults = {
            let mut state = old.state.lock().unwrap();
            state.process += 1;
            state.faults
        };
        if old.incarnation == u8::MAX {
            return;
        }
        let names: Vec<String> = self.devices[device]
            .instances
            .drain(..)
            .map(|instance| instance.name)
            .collect();
        self.note(format!("device {device}: cleared, closing {names:?}"));
        self.devices[device].storage = Arc::new(DeviceStorage {
            index: device,
            incarnation: old.incarnation + 1,
            data: MemoryStorage::new(),
            state: Mutex::new(DeviceState {
                process: 0,
                faults,
                held: BTreeMap::new(),
                next_lease: 0,
                crashed: false,
            }),
            rng: self.rng.clone(),
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.open_instance(device).await;
    }

    /// Someone holding the key (a buggy or hostile peer) publishes writes
    /// with counters and timestamps at the edge of, or beyond, what
    /// encodings allow.
    fn rogue_publish(&mut self) {
        let identity = pluresdb::sync::SyncIdentity::from_invite(&self.invite).expect("invite");
        // A new actor each time: one actor's dots reused on different
        // records (two machines opening copies of one database file) can
        // diverge for good, which `docs/ARCHITECTURE.md` states as a limit.
        self.rogues += 1;
        let mut actor = [0xEE; 16];
        actor[8..].copy_from_slice(&self.rogues.to_le_bytes());
        let rogue = ActorId::from_bytes(actor);
        let protocol = pluresdb::sync::SyncProtocol::new(rogue, identity.cipher());
        let (seq, wall_ms) = self.rng.with(|rng| {
            (
                [1, pluresdb::crdt::MAX_COUNTER, u64::MAX][rng.below(3) as usize],
                [1, u64::MAX - 1, u64::MAX][rng.below(3) as usize],
            )
        });
        let key = format!("k{}", self.rng.with(|rng| rng.below(8)));
        let mut store = pluresdb::crdt::CrdtStore::new(rogue);
        let mut op = store.put(
            &key,
            pluresdb::crdt::Document::from_value(&json!({ "rogue": seq })).unwrap(),
            wall_ms,
        );
        op.version.set_clock([(rogue, seq)].into_iter().collect());
        self.note(format!(
            "rogue: publishes {key} with seq {seq}, wall {wall_ms}"
        ));
        let link = self.relay.join(0);
        for envelope in protocol.live(&[op]) {
            let _ = link.outbound.unbounded_send(Outgoing {
                envelope,
                keep: true,
            });
        }
        drop(link);
    }

    fn live_instances(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (device, state) in self.devices.iter().enumerate() {
            for index in 0..state.instances.len() {
                out.push((device, index));
            }
        }
        out
    }

    /// Drops the instances of crashed devices (their process died).
    fn bury_crashed(&mut self) {
        for device in 0..self.devices.len() {
            let crashed =
                std::mem::take(&mut self.devices[device].storage.state.lock().unwrap().crashed);
            if crashed {
                let names: Vec<String> = self.devices[device]
                    .instances
                    .drain(..)
                    .map(|instance| instance.name)
                    .collect();
                self.note(format!("device {device}: crashed, losing {names:?}"));
            }
        }
    }

    async fn step(&mut self) {
        let roll = self.rng.with(|rng| rng.below(100));
        let live = self.live_instances();
        match roll {
            0..=49 if !live.is_empty() => {
                let (device, index) =
                    live[self.rng.with(|rng| rng.below(live.len() as u64)) as usize];
                let key = format!("k{}", self.rng.with(|rng| rng.below(8)));
                let delete = self.rng.with(|rng| rng.chance(0.2));
                let db = self.devices[device].instances[index].db.clone();
                let name = self.devices[device].instances[index].name.clone();
                self.writes += 1;
                // Some values are large, so deltas span several chunks
                // (256 KiB each) and can be cut off, resumed and overtaken.
                let pad = self
                    .rng
                    .with(|rng| rng.chance(0.05).then(|| rng.below(300_000) as usize))
                    .unwrap_or(0);
                let mut value = json!({ "w": self.writes, "by": name });
                self.note(format!(
                    "{name}: {} {key}",
                    if delete {
                        "delete".to_owned()
                    } else {
                        format!("put {value} with {pad} bytes of padding")
                    }
                ));
                if pad > 0 {
                    value["pad"] = json!("p".repeat(pad));
                }
                let log = self.log.clone();
                tokio::spawn(async move {
                    let written = if delete {
                        db.delete(&key).await.map(|_| ())
                    } else {
                        db.put(&key, value).await
                    };
                    match written {
                        Ok(())
                        | Err(pluresdb::Error::Storage(
                            StorageError::QuotaExceeded(_)
                            | StorageError::Closed
                            | StorageError::Backend(_),
                        )) => {}
                        Err(error) => log
                            .lock()
                            .unwrap()
                            .refused
                            .push(format!("{name}: a write of {key:?} was refused: {error}")),
                    }
                });
            }
            50..=69 => {
                let ms = self.rng.with(|rng| rng.below(400));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            70..=73 => {
                // Crash a device outright (between commits).
                let device = self.rng.with(|rng| rng.below(self.devices.len() as u64)) as usize;
                let mut state = self.devices[device].storage.state.lock().unwrap();
                state.process += 1;
                state.crashed = true;
            }
            74..=79 => {
                // Open another instance on a device with few.
                let device = self.rng.with(|rng| rng.below(self.devices.len() as u64)) as usize;
                if self.devices[device].instances.len() < 2 {
                    self.open_instance(device).await;
                }
            }
            80..=82 if !live.is_empty() => {
                // Close an instance cleanly.
                let (device, index) =
                    live[self.rng.with(|rng| rng.below(live.len() as u64)) as usize];
                let instance = self.devices[device].instances.remove(index);
                self.note(format!("{}: closing", instance.name));
                drop(instance.sync);
                let _ = instance.db.close().await;
            }
            83..=86 => {
                let pick = self.rng.with(|rng| rng.next());
                self.note("relay: cutting a connection".into());
                self.relay.cut(pick);
            }
            87..=90 => {
                let device = self.rng.with(|rng| rng.below(self.devices.len() as u64)) as usize;
                let clock = &self.devices[device].clock;
                let (kind, amount) = self
                    .rng
                    .with(|rng| (rng.below(5), rng.below(100_000) as i128));
                let ten_years: i128 = 10 * 365 * 24 * 3_600_000;
                let mut broken = clock.broken.lock().unwrap();
                let mut offset = clock.offset_ms.lock().unwrap();
                match kind {
                    0 => *offset -= amount * 100,
                    1 => *offset += amount,
                    2 => *offset += ten_years,
                    3 => *broken = !*broken,
                    _ => *offset = 0,
                }
                let line = format!(
                    "device {device}: clock offset {} ms, broken {}",
                    *offset, *broken
                );
                drop((broken, offset));
                self.note(line);
            }
            91..=94 if !live.is_empty() => {
                // Restart an instance's sync.
                let (device, index) =
                    live[self.rng.with(|rng| rng.below(live.len() as u64)) as usize];
                let instance = &mut self.devices[device].instances[index];
                drop(instance.sync.take());
                instance.sync = instance.db.sync(SimConnector(self.relay.clone())).ok();
                let name = instance.name.clone();
                self.note(format!("{name}: sync restarted"));
            }
            95 => self.clear_device().await,
            96..=97 => self.rogue_publish(),
            _ => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.bury_crashed();
        // A device with no instance left comes back after a while.
        for device in 0..self.devices.len() {
            if self.devices[device].instances.is_empty() && self.rng.with(|rng| rng.chance(0.3)) {
                self.open_instance(device).await;
            }
        }
    }

    /// The writes acknowledged so far, copied: the checks read databases
    /// (which may wait) without holding the log's lock.
    fn acked_writes(&self) -> Vec<Acked> {
        self.log.lock().unwrap().acked.clone()
    }

    /// The invariants that hold at every step.
    async fn check_step(&self) -> Result<(), String> {
        if PANICKED.with(Cell::get) {
            return Err("a task panicked".into());
        }
        if let Some(refused) = self.log.lock().unwrap().refused.first() {
            return Err(refused.clone());
        }
        let acked_writes = self.acked_writes();
        let mut dots: HashMap<Dot, &CrdtOperation> = HashMap::new();
        for acked in &acked_writes {
            if let Some(other) = dots.insert(acked.op.version.dot(), &acked.op) {
                if other.version != acked.op.version || other.id != acked.op.id {
                    return Err(format!(
                        "dot {:?} acknowledged for two different writes: {other:?} and {:?}",
                        acked.op.version.dot(),
                        acked.op
                    ));
                }
            }
        }
        for (device, state) in self.devices.iter().enumerate() {
            for instance in &state.instances {
                if !instance.db.storage().alive() {
                    // Its process crashed a moment ago (it is buried at the
                    // next step): it reads nothing any more.
                    continue;
                }
                let vector = instance.db.version_vector();
                for acked in &acked_writes {
                    let dot = acked.op.version.dot();
                    let must_hold = (acked.device == device
                        && acked.incarnation == state.storage.incarnation
                        && instance.opened_at > acked.at)
                        || vector.covers(&dot);
                    if !must_hold {
                        continue;
                    }
                    let record = instance.db.record(&acked.op.id).await.map_err(|e| {
                        format!("{}: reading {:?} failed: {e}", instance.name, acked.op.id)
                    })?;
                    if !holds(record.as_ref(), &dot) {
                        let why = if vector.covers(&dot) {
                            "its version vector covers it"
                        } else {
                            "it was acknowledged on this device before the instance opened"
                        };
                        return Err(format!(
                            "{}: acknowledged write {:?} {dot:?} is missing, yet {why}; record: {record:?}",
                            instance.name, acked.op.id
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops every fault, reopens every device, restarts every sync and
    /// lets the world settle.
    async fn heal(&mut self) {
        self.note("healing: faults off, every device open, every sync restarted".into());
        {
            let mut relay = self.relay.state.lock().unwrap();
            relay.faults = RelayFaults::default();
        }
        for device in &self.devices {
            device.storage.state.lock().unwrap().faults = StorageFaults::default();
        }
        // Let writes in flight finish (or fail) first.
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.bury_crashed();
        for device in 0..self.devices.len() {
            if self.devices[device].instances.is_empty() {
                self.open_instance(device).await;
            }
        }
        for device in &mut self.devices {
            for instance in &mut device.instances {
                drop(instance.sync.take());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One after another, as real devices come online: an instance that
        // connects first never hears the later ones' hellos. Twice: the
        // second round starts while the first one's deltas may still be on
        // their way (see `latency_ms`), so new sessions receive chunks of
        // deltas their peers' earlier sessions sent.
        for round in 0..2 {
            for device in 0..self.devices.len() {
                for index in 0..self.devices[device].instances.len() {
                    let most = if round == 0 { 3_000 } else { 300 };
                    let pause = self.rng.with(|rng| rng.below(most));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let relay = SimConnector(self.relay.clone());
                    let instance = &mut self.devices[device].instances[index];
                    drop(instance.sync.take());
                    instance.sync = instance.db.sync(relay).ok();
                }
            }
        }
        // Settling is checked every second, not only at the end: a bug that
        // leaves a replica behind until something else happens (the
        // watchdog's re-hello, a reconnect) is a liveness bug even if the
        // world converges in the end.
        self.settled_after = None;
        let restarted = tokio::time::Instant::now();
        while restarted.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.settled_after.is_none() && self.check_settled().await.is_ok() {
                self.settled_after = Some(restarted.elapsed());
            }
        }
    }

    /// The invariants that hold once the world settled.
    async fn check_end(&self) -> Result<(), String> {
        self.check_step().await?;
        self.check_settled().await?;
        match self.settled_after {
            Some(after) if after <= SETTLE_LIMIT => {}
            Some(after) => {
                return Err(format!(
                    "the world settled only {:.0} s after healing (limit {} s): a replica stayed behind until something else made it catch up",
                    after.as_secs_f64(),
                    SETTLE_LIMIT.as_secs()
                ))
            }
            None => return Err("the world settled only at the very end of healing".into()),
        }
        self.check_stored_rows().await
    }

    /// Every acknowledged write held everywhere, deletes kept, and every
    /// instance in the same state.
    async fn check_settled(&self) -> Result<(), String> {
        let acked_writes = self.acked_writes();
        let mut states: Vec<(String, Vec<u8>)> = Vec::new();
        let mut all_ops: Vec<Vec<CrdtOperation>> = Vec::new();
        for device in &self.devices {
            for instance in &device.instances {
                let ops = instance
                    .db
                    .changes_since(&VersionVector::new())
                    .await
                    .map_err(|e| format!("{}: {e}", instance.name))?;
                for acked in &acked_writes {
                    let dot = acked.op.version.dot();
                    let record = instance.db.record(&acked.op.id).await.map_err(|e| {
                        format!("{}: reading {:?} failed: {e}", instance.name, acked.op.id)
                    })?;
                    let cleared =
                        acked.incarnation != self.devices[acked.device].storage.incarnation;
                    if !cleared && !holds(record.as_ref(), &dot) {
                        return Err(format!(
                            "{}: after healing, acknowledged write {:?} {dot:?} is missing; record: {record:?}",
                            instance.name, acked.op.id
                        ));
                    }
                    // A delete is never undone by a version it had seen
                    // (unless it went with a cleared database).
                    if acked.op.is_delete() && !cleared {
                        if let Some(record) = &record {
                            for version in record.versions() {
                                if version.dot() != dot
                                    && acked.op.version.clock().covers(&version.dot())
                                {
                                    return Err(format!(
                                        "{}: delete {dot:?} of {:?} undone by {version:?}, which it had seen",
                                        instance.name, acked.op.id
                                    ));
                                }
                            }
                        }
                    }
                }
                // After the reads above, what stays in memory is within the
                // cache (reads make room once done with a batch).
                let stats = instance.db.stats().map_err(|e| e.to_string())?;
                if stats.cached_bytes > self.cache_bytes {
                    return Err(format!(
                        "{}: {} bytes of documents in memory, over the cache of {}",
                        instance.name, stats.cached_bytes, self.cache_bytes
                    ));
                }
                states.push((instance.name.clone(), encode_operations(&ops)));
                all_ops.push(ops);
            }
        }
        if let Some((first_name, first)) = states.first() {
            for (index, (name, state)) in states.iter().enumerate().skip(1) {
                if state != first {
                    let theirs: Vec<String> =
                        all_ops[index].iter().map(|op| format!("{op:?}")).collect();
                    let ours: Vec<String> = all_ops[0].iter().map(|op| format!("{op:?}")).collect();
                    let only_theirs: Vec<&String> =
                        theirs.iter().filter(|op| !ours.contains(op)).collect();
                    let only_ours: Vec<&String> =
                        ours.iter().filter(|op| !theirs.contains(op)).collect();
                    return Err(format!(
                        "after healing, {name} and {first_name} hold different states; only {name} holds {only_theirs:?}; only {first_name} holds {only_ours:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every stored row and version vector decodes.
    async fn check_stored_rows(&self) -> Result<(), String> {
        for device in &self.devices {
            let mut loaded = device
                .storage
                .data
                .load()
                .await
                .map_err(|e| e.to_string())?;
            let rows = loaded.read_all_rows().map_err(|e| e.to_string())?;
            for (id, row) in &rows {
                let record = Record::from_bytes(row).map_err(|e| {
                    format!(
                        "device {}: stored row {id:?} does not decode: {e}",
                        device.storage.index
                    )
                })?;
                if record.id() != id {
                    return Err(format!(
                        "device {}: row {id:?} holds {:?}",
                        device.storage.index,
                        record.id()
                    ));
                }
            }
            if let Some(vector) = loaded.meta.get(meta_keys::VERSION_VECTOR) {
                VersionVector::from_bytes(vector).map_err(|e| {
                    format!(
                        "device {}: the stored version vector does not decode: {e}",
                        device.storage.index
                    )
                })?;
            }
        }
        Ok(())
    }

    async fn shut_down(&mut self) {
        for device in &mut self.devices {
            for instance in device.instances.drain(..) {
                drop(instance.sync);
                let _ = instance.db.close().await;
            }
        }
    }
}

/// The record holds the write `dot`, or a version that has seen it.
fn holds(record: Option<&Record>, dot: &Dot) -> bool {
    record.is_some_and(|record| {
        record
            .versions()
            .iter()
            .any(|version| version.dot() == *dot || version.clock().covers(dot))
    })
}

/// Runs one seed to the end; the failure text when an invariant broke.
fn run_seed(seed: u64, verbose: bool) -> Result<(), String> {
    PANICKED.with(|flag| flag.set(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let mut world = World::new(seed, verbose).await;
        let steps = 60 + Rng(seed ^ 0x5eed).below(100);
        for _ in 0..steps {
            world.step().await;
            if let Err(what) = world.check_step().await {
                return Err(failure(&world, what));
            }
        }
        world.heal().await;
        if let Some(after) = world.settled_after {
            let mut slowest = SLOWEST_SETTLE.lock().unwrap();
            if after.as_millis() > slowest.0 {
                *slowest = (after.as_millis(), seed);
            }
        }
        let result = world
            .check_end()
            .await
            .map_err(|what| failure(&world, what));
        if verbose {
            let acked = world.log.lock().unwrap().acked.len();
            for device in &world.devices {
                for instance in &device.instances {
                    eprintln!(
                        "{}: {} records, vector {:?}, sync {:?}",
                        instance.name,
                        instance.db.len(),
                        instance.db.version_vector(),
                        instance.sync.as_ref().map(|s| s.status())
                    );
                }
            }
            eprintln!("{acked} acknowledged writes; result {result:?}");
        }
        world.shut_down().await;
        result
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn simulated_worlds_keep_every_guarantee() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.with(|flag| flag.set(true));
        previous(info);
    }));
    if let Some(seed) = env_u64("PLURESDB_SIM_SEED") {
        if let Err(failure) = run_seed(seed, true) {
            panic!("{failure}");
        }
        return;
    }
    let seeds = env_u64("PLURESDB_SIM_SEEDS").unwrap_or(2_000);
    let start = env_u64("PLURESDB_SIM_START").unwrap_or(0);
    let threads = env_u64("PLURESDB_SIM_THREADS")
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(BTreeSet::new()));
    let messages = Arc::new(Mutex::new(Vec::new()));
    let begun = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (next, done, failures, messages) = (
                next.clone(),
                done.clone(),
                failures.clone(),
                messages.clone(),
            );
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + seeds {
                    return;
                }
                if let Err(failure) = run_seed(seed, false) {
                    failures.lock().unwrap().insert(seed);
                    messages.lock().unwrap().push(failure);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % 10_000 == 0 || finished == seeds {
                    let (slowest_ms, slowest_seed) = *SLOWEST_SETTLE.lock().unwrap();
                    eprintln!(
                        "simulation: {finished}/{seeds} seeds in {:.0} s, {} failed; slowest settling {:.0} s after healing (seed {slowest_seed})",
                        begun.elapsed().as_secs_f64(),
                        failures.lock().unwrap().len(),
                        slowest_ms as f64 / 1000.0
                    );
                }
            });
        }
    });
    let failures = failures.lock().unwrap();
    let messages = messages.lock().unwrap();
    for message in messages.iter().take(3) {
        eprintln!("{message}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed: {:?}",
        failures.len(),
        failures.iter().take(20).collect::<Vec<_>>()
    );
}
