//! The replicated record store: local writes, remote merges, the version
//! vector and the delta feed.
//!
//! Writes are two-phase so that storage can make them durable before they are
//! visible: [`CrdtStore::prepare_put`] / [`CrdtStore::prepare_delete`] stamp a
//! dot and an HLC and return an operation; [`CrdtStore::preview`] computes the
//! records as they will be after merging a batch of operations, without
//! changing the store; once the batch is durable,
//! [`CrdtStore::install`] makes it visible and reports what changed. Pure
//! callers (tests, tools) use [`CrdtStore::put`], [`CrdtStore::delete`] and
//! [`CrdtStore::apply`], which do all three at once.

use std::collections::VecDeque;
use std::ops::Bound;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use super::clock::{ActorId, Dot, Hlc, HlcClock, VectorClock, VersionVector};
use super::record::{Body, CrdtOperation, Document, Record, Version};
use super::record_map::RecordMap;
use crate::codec::Writer;

/// What a committed batch changed for one record, for subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The record id.
    pub id: Arc<str>,
    /// Upsert or delete, judged by the winning version after the change.
    pub kind: ChangeKind,
}

/// The kind of a [`Change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The record now has live data (new, updated, or conflicts changed).
    Upsert,
    /// The record is now deleted.
    Delete,
}

/// Records read back from storage for [`CrdtStore::restore`]: in any order,
/// an id possibly repeated (its rows are merged). Each is kept with its id
/// so the store's map can be built in this buffer.
#[derive(Debug, Default)]
pub struct RestoredRecords(Vec<Record>);

impl RestoredRecords {
    /// Room for `records` without growing, when memory allows (otherwise
    /// the buffer grows as records come, and fails only if they do not fit).
    pub fn with_capacity(records: usize) -> Self {
        let mut rows = Vec::new();
        let _ = rows.try_reserve_exact(records);
        Self(rows)
    }

    /// Adds a record read from storage.
    pub fn push(&mut self, record: Record) {
        self.0.push(record);
    }
}

impl FromIterator<Record> for RestoredRecords {
    fn from_iter<I: IntoIterator<Item = Record>>(records: I) -> Self {
        let mut restored = Self::default();
        restored.0.extend(records);
        restored
    }
}

/// Appends the versions of `record` that `seen` lacks to `ops`.
fn push_changes_of(record: &Record, seen: &VersionVector, ops: &mut Vec<CrdtOperation>) {
    for version in record.versions() {
        if !seen.covers(&version.dot()) {
            ops.push(CrdtOperation {
                id: record.shared_id().clone(),
                version: version.clone(),
            });
        }
    }
}

/// A delta planned without copying it ([`CrdtStore::plan_changes`]): the
/// id and dot of each version, in dot order, cut into chunks.
#[derive(Debug, Clone, Default)]
pub struct ChangePlan {
    /// The writers, in the order first met (`PlannedVersion::actor`).
    actors: Vec<ActorId>,
    versions: Vec<PlannedVersion>,
    /// Where each chunk ends in `versions`.
    ends: Vec<usize>,
}

/// One planned version: its record, its dot (the writer an index into
/// `ChangePlan::actors`, the sequence number in two halves, so an entry is
/// aligned to 4 bytes) and its encoded size.
#[derive(Debug, Clone)]
struct PlannedVersion {
    id: Arc<str>,
    seq: [u32; 2],
    actor: u32,
    size: u32,
}

impl PlannedVersion {
    fn seq(&self) -> u64 {
        u64::from(self.seq[0]) | u64::from(self.seq[1]) << 32
    }
}

impl ChangePlan {
    /// How many chunks (none when nothing is missing).
    pub fn chunk_count(&self) -> usize {
        self.ends.len()
    }

    /// How many versions.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// True when nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The last dot of chunk `chunk`.
    pub fn last_dot(&self, chunk: usize) -> Dot {
        self.dot(&self.versions[self.ends[chunk] - 1])
    }

    fn range(&self, chunk: usize) -> std::ops::Range<usize> {
        let start = chunk
            .checked_sub(1)
            .map_or(0, |previous| self.ends[previous]);
        start..self.ends[chunk]
    }

    fn dot(&self, planned: &PlannedVersion) -> Dot {
        Dot {
            actor: self.actors[planned.actor as usize],
            seq: planned.seq(),
        }
    }
}

/// The in-memory CRDT state of one replica.
#[derive(Debug, Clone)]
pub struct CrdtStore {
    actor: ActorId,
    records: RecordMap,
    version_vector: VersionVector,
    hlc: HlcClock,
    /// The last sequence number this replica's actor issued.
    last_seq: u64,
    /// Local writes prepared but not yet installed, by id: the sequence
    /// number of the latest and whether it writes data (`false`: delete).
    /// Needed so a delete of a not-yet-durable put is not a no-op. (Clocks
    /// need no help: a later local write has a higher sequence number of the
    /// same actor and a base clock that only grew, so it covers the pending
    /// one.)
    pending: FxHashMap<Arc<str>, (u64, bool)>,
    /// Bumped by every install: a preview taken at the current epoch can
    /// replace records instead of merging into them.
    epoch: u64,
    /// Which documents stay in memory.
    bodies: BodyCache,
}

/// The bookkeeping of a store whose documents may be left in storage (see
/// [`CrdtStore::keep_bodies_within`]): bytes in memory against a budget,
/// and the order in which bodies came in, oldest first, which is the order
/// they leave in.
#[derive(Debug, Clone)]
struct BodyCache {
    /// Bytes of document text to keep in memory; `usize::MAX` keeps every
    /// body and skips the bookkeeping.
    budget: usize,
    /// Bytes of document text in memory.
    resident: usize,
    /// Records with at least one body left in storage.
    stored: usize,
    /// The bodies in memory when the budget was set came in first: the
    /// records from here on, in id order (all of them at first), before
    /// `arrivals`. Walked through the store instead of queued: a million
    /// ids queued took 12 MiB in the browser as a database opened.
    unswept: Option<Bound<Arc<str>>>,
    /// Ids whose bodies came into memory since, oldest first. An id may
    /// repeat, or name a record whose bodies left since: those entries are
    /// skipped.
    arrivals: VecDeque<Arc<str>>,
    /// Ids read by themselves while their bodies were in memory, since they
    /// last reached the front of `arrivals`: such a record goes to the back
    /// once instead of leaving (a second chance, as in the CLOCK algorithm),
    /// so documents in use stay while others pass through.
    read_again: rustc_hash::FxHashSet<Arc<str>>,
}

impl Default for BodyCache {
    fn default() -> Self {
        Self {
            budget: usize::MAX,
            resident: 0,
            stored: 0,
            unswept: None,
            arrivals: VecDeque::new(),
            read_again: Default::default(),
        }
    }
}

impl BodyCache {
    fn enabled(&self) -> bool {
        self.budget != usize::MAX
    }

    /// What the bookkeeping needs of a record before it changes.
    fn before(&self, record: &Record) -> (usize, bool) {
        if self.enabled() {
            (record.resident_bytes(), record.is_resident())
        } else {
            (0, true)
        }
    }

    /// Accounts for a record that held `before` and now is `after` (`None`:
    /// removed).
    fn changed(&mut self, before: (usize, bool), after: Option<&Record>) {
        if !self.enabled() {
            return;
        }
        let (bytes, resident) = before;
        self.resident = self.resident.saturating_sub(bytes);
        self.stored = self.stored.saturating_sub(usize::from(!resident));
        if let Some(record) = after {
            let bytes = record.resident_bytes();
            self.resident += bytes;
            self.stored += usize::from(!record.is_resident());
            if bytes > 0 {
                self.arrivals.push_back(record.shared_id().clone());
            }
        }
    }

    /// Accounts for a record that was not in the store.
    fn added(&mut self, record: &Record) {
        self.changed((0, true), Some(record));
    }
}

/// The next record from `unswept` on whose bodies are in memory (moving
/// past it), or `None` once there is none.
fn next_unswept(unswept: &mut Option<Bound<Arc<str>>>, records: &RecordMap) -> Option<Arc<str>> {
    let from = unswept.as_ref()?.as_ref().map(|id| &**id);
    let next = records
        .range((from, Bound::Unbounded))
        .find(|(_, record)| record.resident_bytes() > 0)
        .map(|(id, _)| id.clone());
    *unswept = next.clone().map(Bound::Excluded);
    next
}

/// The records as a batch of operations would leave them, computed by
/// [`CrdtStore::preview`] and made visible by [`CrdtStore::install`].
#[derive(Debug, Clone)]
pub struct Preview {
    records: Vec<Record>,
    /// Per record: its id was absent from the store when previewed.
    absent: Vec<bool>,
    /// The batch is large against the store (a bulk load): its new records
    /// join the store in id order (appended, when beyond its last id).
    bulk: bool,
    /// The new records of a bulk batch, moved out of `records` and sorted
    /// by id, ready to join the store, by [`stage`](Self::stage), with their changes
    /// (natively, where staging overlaps with storage's thread).
    #[cfg(not(target_arch = "wasm32"))]
    staged: Vec<(Arc<str>, Record)>,
    #[cfg(not(target_arch = "wasm32"))]
    staged_changes: Vec<Change>,
    epoch: u64,
}

impl Preview {
    /// The new state of every record the batch changes, except the ones
    /// [`stage`](Self::stage) already moved.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Does the work of installing a bulk batch's new records that needs no
    /// access to the store (sorting them), so it can run while
    /// storage commits. Call it after encoding: [`records`](Self::records)
    /// leaves the staged records out.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn stage(&mut self) {
        if !self.bulk || !self.staged.is_empty() {
            return;
        }
        let mut added: Vec<(Arc<str>, Record)> = Vec::new();
        let mut kept = Vec::with_capacity(self.records.len());
        for (record, absent) in std::mem::take(&mut self.records)
            .into_iter()
            .zip(&self.absent)
        {
            if *absent {
                let id = record.shared_id().clone();
                self.staged_changes
                    .extend(change_of(id.clone(), None, record.is_deleted()));
                added.push((id, record));
            } else {
                kept.push(record);
            }
        }
        self.records = kept;
        self.absent = vec![false; self.records.len()];
        // Preview gives one record per id; bulk loads usually come sorted.
        added.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.staged = added;
    }

    /// Replaces the previewed state of a record with a state that includes
    /// it (what storage merged in from another writer). Linear in the batch:
    /// merges happen only when several writers share one database.
    pub fn replace(&mut self, record: Record) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(at) = self
            .staged
            .binary_search_by(|(id, _)| (**id).cmp(record.id()))
        {
            self.staged[at].1 = record;
            return;
        }
        if let Some(slot) = self.records.iter_mut().find(|r| r.id() == record.id()) {
            *slot = record;
        }
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        if !self.staged.is_empty() {
            return false;
        }
        self.records.is_empty()
    }
}

impl CrdtStore {
    /// An empty store writing as `actor`.
    pub fn new(actor: ActorId) -> Self {
        Self {
            actor,
            records: RecordMap::default(),
            version_vector: VersionVector::new(),
            hlc: HlcClock::default(),
            last_seq: 0,
            pending: FxHashMap::default(),
            epoch: 0,
            bodies: BodyCache::default(),
        }
    }

    /// A store restored from persisted state, on a replica whose wall clock
    /// reads `now_ms`. Its actor's next sequence number follows every one
    /// the version vector or a stored version shows it used. The HLC resumes
    /// after the stored timestamps, but never further ahead of `now_ms` than
    /// [`MAX_FUTURE_DRIFT_MS`](super::MAX_FUTURE_DRIFT_MS): a version a peer
    /// stamped years ahead stays as it is, but does not drag this replica's
    /// clock after a restart any more than it did before.
    pub fn restore(
        actor: ActorId,
        records: RestoredRecords,
        version_vector: VersionVector,
        last_hlc: Hlc,
        now_ms: u64,
    ) -> Self {
        Self::restore_noting_repeats(
            actor,
            records,
            version_vector,
            last_hlc,
            now_ms,
            &mut Vec::new(),
        )
    }

    /// [`restore`](Self::restore), adding to `repeated` each id that had
    /// several rows (once).
    pub fn restore_noting_repeats(
        actor: ActorId,
        records: RestoredRecords,
        version_vector: VersionVector,
        last_hlc: Hlc,
        now_ms: u64,
        repeated: &mut Vec<Arc<str>>,
    ) -> Self {
        // Rows may repeat an id (append-only backends): merge them (the
        // merge does not depend on their order). Everything happens in the
        // rows' own buffer: sorted in place (no scratch buffer), repeats
        // merged in place, and that buffer is the map (`RecordMap`). Memory
        // that WebAssembly grows never shrinks, so a second copy of a million
        // rows while opening would stay in the page's footprint for good.
        let mut rows = records.0;
        rows.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        rows.dedup_by(|next, kept| {
            if next.id() == kept.id() {
                kept.merge(next);
                if repeated.last() != Some(kept.shared_id()) {
                    repeated.push(kept.shared_id().clone());
                }
                true
            } else {
                false
            }
        });
        let mut last_seq = version_vector.get(&actor);
        let mut hlc = HlcClock::new(last_hlc.bounded(now_ms));
        for record in &rows {
            for version in record.versions() {
                if version.writer() == actor {
                    last_seq = last_seq.max(version.dot().seq);
                }
                hlc.observe(version.hlc, now_ms);
            }
        }
        let records = RecordMap::from_sorted(rows);
        let mut version_vector = version_vector;
        version_vector.raise(actor, last_seq);
        Self {
            actor,
            records,
            version_vector,
            hlc,
            last_seq,
            pending: FxHashMap::default(),
            epoch: 0,
            bodies: BodyCache::default(),
        }
    }

    /// Keeps at most about `budget` bytes of document text in memory from
    /// now on: past that, the bodies that came in first are left in storage
    /// (their records keep everything else). Only for a store whose every
    /// record is durable in storage that can read rows back by id; bodies
    /// come back through [`fill_bodies`](Self::fill_bodies).
    pub fn keep_bodies_within(&mut self, budget: usize) {
        let budget = budget.min(usize::MAX - 1);
        if !self.bodies.enabled() {
            self.bodies.resident = self.records().map(Record::resident_bytes).sum();
            self.bodies.stored = self.records().filter(|r| !r.is_resident()).count();
            // Nothing to walk when no body is in memory (a database that
            // opened with every document in storage).
            self.bodies.unswept = (self.bodies.resident > 0).then_some(Bound::Unbounded);
        }
        self.bodies.budget = budget;
        self.make_room(0);
    }

    /// Takes `filled` (a copy of a record whose bodies are in storage,
    /// filled from its row while the store did not change) in place of the
    /// record when its documents fit in what the budget leaves: a read of
    /// several records fills the cache while it has room, and never pushes
    /// out what is in it. Returns whether it was taken.
    pub fn admit_if_room(&mut self, filled: Record) -> bool {
        if !self.bodies.enabled() || !filled.is_resident() {
            return false;
        }
        let Some(record) = self.records.get_mut(filled.id()) else {
            return false;
        };
        let bytes = filled.resident_bytes();
        let after =
            (self.bodies.resident.saturating_sub(record.resident_bytes())).saturating_add(bytes);
        if record.is_resident() || after > self.bodies.budget {
            return false;
        }
        let before = self.bodies.before(record);
        *record = filled;
        self.bodies.changed(before, Some(record));
        true
    }

    /// Notes that the record `id` was read by itself while its bodies were
    /// in memory: [`make_room`](Self::make_room) gives it a second chance.
    /// Reads are noted only once the cache is half full: before that
    /// nothing is near leaving, and a get pays no more than a comparison.
    pub fn note_read(&mut self, id: &str) {
        let bodies = &self.bodies;
        if !bodies.enabled()
            || bodies.resident < bodies.budget / 2
            || bodies.read_again.contains(id)
        {
            return;
        }
        if let Some((shared, _)) = self.records.get_key_value(id) {
            self.bodies.read_again.insert(shared.clone());
        }
    }

    /// Leaves the oldest bodies in storage until `incoming` more bytes fit
    /// the budget (or no body is left in memory).
    pub fn make_room(&mut self, incoming: usize) {
        let bodies = &mut self.bodies;
        if !bodies.enabled() {
            return;
        }
        while bodies.resident.saturating_add(incoming) > bodies.budget {
            let Some(id) = next_unswept(&mut bodies.unswept, &self.records)
                .or_else(|| bodies.arrivals.pop_front())
            else {
                break;
            };
            let Some(record) = self.records.get_mut(&id) else {
                bodies.read_again.remove(&id);
                continue;
            };
            if bodies.read_again.remove(&id) {
                bodies.arrivals.push_back(id);
                continue;
            }
            let was_resident = record.is_resident();
            let freed = record.leave_bodies_in_storage();
            bodies.resident = bodies.resident.saturating_sub(freed);
            bodies.stored += usize::from(was_resident && freed > 0);
        }
        // Ids rewritten over and over repeat in the queue: keep it within
        // about twice the records by dropping all but the newest entry of
        // each (the order of the rest is kept).
        if bodies.arrivals.len() > 2 * self.records.len() + 1024 {
            let mut seen: rustc_hash::FxHashSet<Arc<str>> = Default::default();
            let mut kept: Vec<Arc<str>> = Vec::with_capacity(self.records.len());
            for id in bodies.arrivals.drain(..).rev() {
                if seen.insert(id.clone()) {
                    kept.push(id);
                }
            }
            kept.reverse();
            bodies.arrivals = kept.into();
        }
    }

    /// Bytes of document text in memory, and how many records have a body
    /// left in storage (both zero until
    /// [`keep_bodies_within`](Self::keep_bodies_within)).
    pub fn body_usage(&self) -> (usize, usize) {
        (self.bodies.resident, self.bodies.stored)
    }

    /// Forgets where the bodies `id` left in storage lie
    /// ([`Record::forget_storage_hints`]).
    pub fn forget_storage_hints(&mut self, id: &str) {
        if let Some(record) = self.records.get_mut(id) {
            record.forget_storage_hints();
        }
    }

    /// True once [`keep_bodies_within`](Self::keep_bodies_within) set a
    /// budget.
    pub fn keeps_bodies_within_a_budget(&self) -> bool {
        self.bodies.enabled()
    }

    /// True when some record has a body left in storage.
    pub fn has_stored_bodies(&self) -> bool {
        self.bodies.stored > 0
    }

    /// Fills the bodies a record left in storage from `stored`, its row as
    /// storage holds it. Returns false when a body is still missing:
    /// storage no longer holds that version (another writer superseded it;
    /// merge the row with [`merge_stored`](Self::merge_stored)).
    pub fn fill_bodies(&mut self, stored: &Record) -> bool {
        let Some(record) = self.records.get_mut(stored.id()) else {
            return true;
        };
        if record.is_resident() {
            return true;
        }
        let before = self.bodies.before(record);
        let complete = record.fill_bodies(stored);
        self.bodies.changed(before, Some(record));
        complete
    }

    /// The ids among `ops` whose records must have their bodies in memory
    /// before the operations are previewed: those holding a version whose
    /// body is in storage and that an operation does not supersede, which
    /// the previewed record therefore keeps (a concurrent version) or
    /// compares (the same dot). A local write usually supersedes everything
    /// it merges into, but not a version committed after it was prepared.
    pub fn bodies_needed_by(&self, ops: &[CrdtOperation]) -> Vec<Arc<str>> {
        if !self.has_stored_bodies() {
            return Vec::new();
        }
        let mut ids: Vec<Arc<str>> = ops
            .iter()
            .filter_map(|op| {
                let (id, record) = self.records.get_key_value(&op.id)?;
                let kept = record.versions().iter().any(|version| {
                    version.data.as_ref().is_some_and(Body::is_stored)
                        && !version.is_superseded_by(&op.version)
                });
                kept.then(|| id.clone())
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The actor this replica writes as.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// The store-wide version vector.
    pub fn version_vector(&self) -> &VersionVector {
        &self.version_vector
    }

    /// The greatest HLC timestamp issued or observed.
    pub fn last_hlc(&self) -> Hlc {
        self.hlc.last()
    }

    /// A record by id, including deleted ones (tombstones).
    pub fn record(&self, id: &str) -> Option<&Record> {
        self.records.get(id)
    }

    /// The live document of a record (`None` when absent or deleted).
    pub fn get(&self, id: &str) -> Option<&Document> {
        self.records.get(id).and_then(Record::data)
    }

    /// The losing concurrent versions of a record, by descending precedence.
    pub fn conflicts(&self, id: &str) -> &[Version] {
        self.records.get(id).map_or(&[], Record::conflicts)
    }

    /// Every record (deleted ones included) in id order.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Record> {
        self.records.iter().map(|(_, record)| record)
    }

    /// Records with ids in `range`, in id order.
    pub fn records_in<'a>(
        &'a self,
        range: (std::ops::Bound<&'a str>, std::ops::Bound<&'a str>),
    ) -> impl DoubleEndedIterator<Item = &'a Record> {
        self.records.range(range).map(|(_, r)| r)
    }

    /// Number of records, tombstones included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the store holds no record at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn next_version(
        &mut self,
        id: &str,
        data: Option<Document>,
        embedding: Option<Arc<[f32]>>,
        now_ms: u64,
    ) -> CrdtOperation {
        let (id, history) = match self.records.get_key_value(id) {
            Some((key, record)) => (key.clone(), record.clock()),
            None => (Arc::<str>::from(id), VectorClock::new()),
        };
        // Counters are capped at 2^53 on decode, so this cannot overflow
        // short of 2^53 local writes.
        self.last_seq = self.last_seq.saturating_add(1);
        let dot = Dot {
            actor: self.actor,
            seq: self.last_seq,
        };
        let live = data.is_some();
        // `insert` keeps the existing key and replaces the value: one lookup.
        self.pending.insert(id.clone(), (self.last_seq, live));
        CrdtOperation {
            id,
            version: Version::new(
                dot,
                history,
                self.hlc.tick(now_ms),
                data.map(Body::Resident),
                embedding,
            ),
        }
    }

    /// Makes room for `additional` more local writes awaiting commit (a
    /// batch), so preparing it does not rehash the pending map as it grows.
    pub fn reserve_local_writes(&mut self, additional: usize) {
        self.pending.reserve(additional);
    }

    /// Stamps a local write of `data` (and optional `embedding`) to `id`.
    /// The id must already be validated. Nothing is visible until the
    /// operation is installed.
    pub fn prepare_put(
        &mut self,
        id: &str,
        data: Document,
        embedding: Option<Arc<[f32]>>,
        now_ms: u64,
    ) -> CrdtOperation {
        self.next_version(id, Some(data), embedding, now_ms)
    }

    /// Stamps a local delete of `id`, or returns `None` when there is nothing
    /// to delete (no record, or already deleted without conflicts).
    pub fn prepare_delete(&mut self, id: &str, now_ms: u64) -> Option<CrdtOperation> {
        let live_pending = self.pending.get(id).is_some_and(|(_, live)| *live);
        let live_record = self
            .records
            .get(id)
            .is_some_and(|r| !r.is_deleted() || !r.conflicts().is_empty());
        if !live_pending && !live_record {
            return None;
        }
        Some(self.next_version(id, None, None, now_ms))
    }

    /// The records as they would be after merging `ops`, without changing
    /// the store: one entry per id whose record would change, in first-seen
    /// order.
    pub fn preview(&self, ops: &[CrdtOperation]) -> Preview {
        let mut touched: Vec<Record> = Vec::with_capacity(ops.len());
        let mut changed: Vec<bool> = Vec::with_capacity(ops.len());
        let mut absent: Vec<bool> = Vec::with_capacity(ops.len());
        let mut index: FxHashMap<&str, usize> = FxHashMap::default();
        // Ids in strictly ascending order (a sorted bulk load) cannot repeat:
        // no index needed.
        let unique = ops.windows(2).all(|pair| pair[0].id < pair[1].id);
        if !unique {
            index.reserve(ops.len());
        }
        for op in ops {
            let known = if unique {
                None
            } else {
                index.get(&*op.id).copied()
            };
            let slot = match known {
                Some(slot) => slot,
                None => {
                    match self.records.get(&op.id) {
                        Some(existing) => {
                            if !would_change(existing, &op.version) {
                                continue;
                            }
                            touched.push(existing.clone());
                            changed.push(false);
                            absent.push(false);
                        }
                        None => {
                            touched.push(Record::new(op.id.clone(), op.version.clone()));
                            changed.push(true);
                            absent.push(true);
                            if !unique {
                                index.insert(&op.id, touched.len() - 1);
                            }
                            continue;
                        }
                    }
                    if !unique {
                        index.insert(&op.id, touched.len() - 1);
                    }
                    touched.len() - 1
                }
            };
            changed[slot] |= touched[slot].merge_version(op.version.clone());
        }
        let mut records = Vec::with_capacity(touched.len());
        let mut absent_kept = Vec::with_capacity(touched.len());
        for ((record, changed), absent) in touched.into_iter().zip(changed).zip(absent) {
            if changed {
                records.push(record);
                absent_kept.push(absent);
            }
        }
        let bulk = records.len() >= BULK_INSERT_MIN && records.len() * 4 >= self.records.len();
        Preview {
            records,
            absent: absent_kept,
            bulk,
            #[cfg(not(target_arch = "wasm32"))]
            staged: Vec::new(),
            #[cfg(not(target_arch = "wasm32"))]
            staged_changes: Vec::new(),
            epoch: self.epoch,
        }
    }

    /// Makes durable records visible: `records` are the new states (from
    /// [`preview`](Self::preview), possibly merged further with what storage
    /// held), `ops` the operations they came from (their dots advance the
    /// version vector and their timestamps the HLC). `peer_vector` is given
    /// when `ops` were a complete delta from a peer holding that vector.
    /// Returns the changes, one per changed record: in the preview's order,
    /// except that records [staged](Preview::stage) come last, in id order.
    pub fn install(
        &mut self,
        preview: Preview,
        ops: &[CrdtOperation],
        peer_vector: Option<&VersionVector>,
        now_ms: u64,
    ) -> Vec<Change> {
        #[cfg(not(target_arch = "wasm32"))]
        let (staged, staged_changes, preview) = {
            let mut preview = preview;
            let staged = std::mem::take(&mut preview.staged);
            let changes = std::mem::take(&mut preview.staged_changes);
            (staged, changes, preview)
        };
        let Preview {
            records,
            absent,
            bulk,
            epoch,
            ..
        } = preview;
        // Nothing was installed since the preview: its records include every
        // current state and can replace them (merging a record of many
        // concurrent versions into itself would cost quadratic time), and the
        // ids it found absent still are.
        let fresh = epoch == self.epoch;
        self.epoch += 1;
        for op in ops {
            let dot = op.version.dot();
            self.note_dot(dot);
            self.hlc.observe(op.version.hlc, now_ms);
        }
        self.settle_all(ops);
        if let Some(peer) = peer_vector {
            self.version_vector.merge(peer);
        }
        let mut changes = Vec::with_capacity(records.len());
        let mut added: Vec<(Arc<str>, Record)> = Vec::new();
        for (record, absent) in records.into_iter().zip(absent) {
            let id = record.shared_id().clone();
            if bulk && fresh && absent {
                // Preview gives one record per id, so none is added twice.
                changes.extend(change_of(id.clone(), None, record.is_deleted()));
                added.push((id, record));
                continue;
            }
            changes.extend(self.merge_in(record, fresh));
        }
        if !added.is_empty() {
            for (_, record) in &added {
                self.bodies.added(record);
            }
            // In id order, new ids beyond the last are appended.
            added.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (_, record) in added {
                self.records.insert(record);
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        if fresh {
            let mut staged = staged;
            for (_, record) in std::mem::take(&mut staged) {
                self.bodies.added(&record);
                self.records.insert(record);
            }
            changes.extend(staged_changes);
        } else {
            // Another batch was installed since: merge one by one.
            for (_, record) in staged {
                changes.extend(self.merge_in(record, false));
            }
        }
        changes
    }

    /// Merges one previewed record into the store (replacing the stored one
    /// when the preview is `fresh`); the change, if anything changed.
    fn merge_in(&mut self, record: Record, fresh: bool) -> Option<Change> {
        let id = record.shared_id().clone();
        let bodies = &mut self.bodies;
        let (was_deleted, deleted) = match self.records.get_mut(&id) {
            Some(existing) => {
                let was_deleted = existing.is_deleted();
                let before = bodies.before(existing);
                if fresh {
                    if *existing == record {
                        return None;
                    }
                    *existing = record;
                } else if !existing.merge(&record) {
                    return None;
                }
                bodies.changed(before, Some(existing));
                (Some(was_deleted), existing.is_deleted())
            }
            None => {
                let deleted = record.is_deleted();
                bodies.added(&record);
                self.records.insert(record);
                (None, deleted)
            }
        };
        change_of(id, was_deleted, deleted)
    }

    /// Merges a record row another writer of the same storage stored (read
    /// back by a stale commit, see `CommitReceipt::foreign_records`): its
    /// versions are durable already. Returns the change, if any.
    pub fn merge_stored(&mut self, record: Record, now_ms: u64) -> Option<Change> {
        for version in record.versions() {
            if version.writer() == self.actor {
                self.last_seq = self.last_seq.max(version.dot().seq);
            }
            self.hlc.observe(version.hlc, now_ms);
        }
        self.epoch += 1;
        self.merge_in(record, false)
    }

    /// Raises the version vector to include `stored`, the vector another
    /// writer of the same storage stored, once every row it stored is merged
    /// (see [`merge_stored`](Self::merge_stored)).
    pub fn merge_stored_vector(&mut self, stored: &VersionVector) {
        self.version_vector.merge(stored);
        self.last_seq = self.last_seq.max(self.version_vector.get(&self.actor));
    }

    /// Takes the greatest HLC another writer of the same storage stored into
    /// account (bounded like any observed timestamp).
    pub fn observe_hlc(&mut self, hlc: Hlc, now_ms: u64) {
        self.hlc.observe(hlc, now_ms);
    }

    /// Forgets prepared local operations that will never be installed (their
    /// commit failed). Their dots stay used: sequence numbers never repeat.
    pub fn abandon(&mut self, ops: &[CrdtOperation]) {
        self.settle_all(ops);
    }

    /// Forgets the pending entries of `ops` (installed or abandoned local
    /// writes). The browser build settles one at a time, which spares the
    /// download the code of the bulk pass below.
    #[cfg(target_arch = "wasm32")]
    fn settle_all(&mut self, ops: &[CrdtOperation]) {
        for op in ops {
            self.settle(op);
        }
    }

    /// Forgets the pending entries of `ops` (installed or abandoned local
    /// writes, in the order they were prepared).
    #[cfg(not(target_arch = "wasm32"))]
    fn settle_all(&mut self, ops: &[CrdtOperation]) {
        let actor = self.actor;
        let local = ops.iter().filter(move |op| op.version.writer() == actor);
        let Some(first) = local.clone().next() else {
            return;
        };
        let newest = local.clone().map(|op| op.version.dot().seq).max();
        // The batch holds the newest local write: every pending entry at or
        // after its first is this batch's (batches settle in order), so one
        // pass clears them without hashing each id of a bulk load.
        if newest == Some(self.last_seq) && local.clone().count() >= 64 {
            let oldest = first.version.dot().seq;
            self.pending.retain(|_, (seq, _)| *seq < oldest);
            return;
        }
        for op in local {
            self.settle(op);
        }
    }

    /// Forgets the pending entry of `op` if it is the latest local write.
    fn settle(&mut self, op: &CrdtOperation) {
        if op.version.writer() != self.actor {
            return;
        }
        // One hash lookup in the common case: the entry is this operation's.
        if let Some((id, (seq, live))) = self.pending.remove_entry(&*op.id) {
            if seq != op.version.dot().seq {
                self.pending.insert(id, (seq, live));
            }
        }
    }

    fn note_dot(&mut self, dot: Dot) {
        if dot.actor == self.actor {
            self.last_seq = self.last_seq.max(dot.seq);
            self.version_vector.raise(dot.actor, dot.seq);
        } else {
            self.version_vector.advance(&dot);
        }
    }

    /// Writes `data` to `id` now (prepare, preview and install at once).
    pub fn put(&mut self, id: &str, data: Document, now_ms: u64) -> CrdtOperation {
        let op = self.prepare_put(id, data, None, now_ms);
        self.apply(op.clone(), now_ms);
        op
    }

    /// Deletes `id` now; `None` when there was nothing to delete.
    pub fn delete(&mut self, id: &str, now_ms: u64) -> Option<CrdtOperation> {
        let op = self.prepare_delete(id, now_ms)?;
        self.apply(op.clone(), now_ms);
        Some(op)
    }

    /// Merges one operation (local or remote) now. Returns the change, if the
    /// record changed.
    pub fn apply(&mut self, op: CrdtOperation, now_ms: u64) -> Option<Change> {
        // In place: no preview copy of the record (which may hold hundreds of
        // concurrent versions).
        self.note_dot(op.version.dot());
        self.hlc.observe(op.version.hlc, now_ms);
        self.settle(&op);
        self.epoch += 1;
        let CrdtOperation { id, version } = op;
        let bodies = &mut self.bodies;
        let (was_deleted, deleted) = match self.records.get_mut(&id) {
            Some(existing) => {
                let was_deleted = existing.is_deleted();
                let before = bodies.before(existing);
                if !existing.merge_version(version) {
                    return None;
                }
                bodies.changed(before, Some(existing));
                (Some(was_deleted), existing.is_deleted())
            }
            None => {
                let deleted = version.is_tombstone();
                let record = Record::new(id.clone(), version);
                bodies.added(&record);
                self.records.insert(record);
                (None, deleted)
            }
        };
        change_of(id, was_deleted, deleted)
    }

    /// Merges a complete delta from a peer whose version vector was
    /// `peer_vector` when it computed the delta, then adopts that vector.
    pub fn apply_delta(
        &mut self,
        ops: Vec<CrdtOperation>,
        peer_vector: &VersionVector,
        now_ms: u64,
    ) -> Vec<Change> {
        let records = self.preview(&ops);
        self.install(records, &ops, Some(peer_vector), now_ms)
    }

    /// Exactly the versions a replica whose version vector is `seen` lacks:
    /// every maximal version whose dot `seen` does not cover, in id order.
    pub fn changes_since(&self, seen: &VersionVector) -> Vec<CrdtOperation> {
        let mut ops = Vec::new();
        for record in self.records() {
            push_changes_of(record, seen, &mut ops);
        }
        ops
    }

    /// Plans [`changes_since`](Self::changes_since)`(seen)`, without the
    /// versions up to `after`, as chunks of at most `chunk_bytes` encoded
    /// bytes in dot order (a larger operation alone in its chunk), holding
    /// each version's id, dot and size (24 bytes in WebAssembly, 32
    /// natively), not the version: [`planned_chunk`](Self::planned_chunk)
    /// gives a chunk's operations when it is sent, so a database far larger
    /// than memory can answer a peer that has nothing.
    pub fn plan_changes(
        &self,
        seen: &VersionVector,
        after: Option<Dot>,
        chunk_bytes: usize,
    ) -> ChangePlan {
        let wanted = |dot: &Dot| !seen.covers(dot) && after.is_none_or(|after| *dot > after);
        // Counted first, so the plan is one allocation of its exact size
        // (a vector grown by doubling would copy it, and in WebAssembly
        // memory never shrinks back).
        let count = self
            .records()
            .map(|record| {
                record
                    .versions()
                    .iter()
                    .filter(|v| wanted(&v.dot()))
                    .count()
            })
            .sum();
        let mut actors: Vec<ActorId> = Vec::new();
        let mut index_of: FxHashMap<ActorId, u32> = FxHashMap::default();
        let mut versions = Vec::with_capacity(count);
        for record in self.records() {
            for version in record.versions() {
                let dot = version.dot();
                if !wanted(&dot) {
                    continue;
                }
                let actor = *index_of.entry(dot.actor).or_insert_with(|| {
                    actors.push(dot.actor);
                    (actors.len() - 1) as u32
                });
                let size = CrdtOperation::encoded_len_of(record.id(), version);
                versions.push(PlannedVersion {
                    id: record.shared_id().clone(),
                    seq: [dot.seq as u32, (dot.seq >> 32) as u32],
                    actor,
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                });
            }
        }
        // Dot order: writers by id, then sequence numbers.
        let mut by_id: Vec<u32> = (0..actors.len() as u32).collect();
        by_id.sort_unstable_by_key(|&index| actors[index as usize]);
        let mut rank = vec![0u32; actors.len()];
        for (position, &index) in by_id.iter().enumerate() {
            rank[index as usize] = position as u32;
        }
        versions.sort_unstable_by_key(|version| (rank[version.actor as usize], version.seq()));
        let mut ends = Vec::new();
        let mut bytes = 0usize;
        for (at, version) in versions.iter().enumerate() {
            let size = version.size as usize;
            // A dot claimed twice (by two records) is never split between
            // chunks: a resume hint names a chunk's largest dot.
            let repeated = at > 0
                && (version.actor, version.seq) == (versions[at - 1].actor, versions[at - 1].seq);
            if at > 0 && !repeated && bytes.saturating_add(size) > chunk_bytes {
                ends.push(at);
                bytes = 0;
            }
            bytes = bytes.saturating_add(size);
        }
        if !versions.is_empty() {
            ends.push(versions.len());
        }
        ChangePlan {
            actors,
            versions,
            ends,
        }
    }

    /// The first of the versions `seen` lacks after the dot `after` (from
    /// the first when `None`), in dot order: as many as fit in `max_bytes`
    /// encoded (at least one), and whether that was all of them. One pass
    /// over the records holding only what it returns, so the changes of a
    /// database far larger than memory can be read window by window.
    pub fn changes_after(
        &self,
        seen: &VersionVector,
        after: Option<Dot>,
        max_bytes: usize,
    ) -> (Vec<CrdtOperation>, bool) {
        use std::collections::BinaryHeap;
        // The smallest dots met so far whose sizes, less the largest's,
        // stay under `max_bytes`; the largest on top.
        let mut window: BinaryHeap<(Dot, usize, Arc<str>)> = BinaryHeap::new();
        let mut bytes = 0usize;
        let mut cut = false;
        for record in self.records() {
            for version in record.versions() {
                let dot = version.dot();
                if seen.covers(&dot) || after.is_some_and(|after| dot <= after) {
                    continue;
                }
                let full = window
                    .peek()
                    .is_some_and(|(_, size, _)| bytes - size >= max_bytes);
                if full && window.peek().is_some_and(|(largest, _, _)| dot > *largest) {
                    cut = true;
                    continue;
                }
                let size = CrdtOperation::encoded_len_of(record.id(), version);
                window.push((dot, size, record.shared_id().clone()));
                bytes += size;
                while window.len() > 1
                    && window
                        .peek()
                        .is_some_and(|(_, size, _)| bytes - size >= max_bytes)
                {
                    let (largest, size, _) = window.pop().expect("checked");
                    bytes -= size;
                    cut = true;
                    // A dot claimed twice (by two records) leaves whole: the
                    // next window starts after it.
                    while window.peek().is_some_and(|(dot, _, _)| *dot == largest) {
                        let (_, size, _) = window.pop().expect("checked");
                        bytes -= size;
                    }
                }
            }
        }
        let ops = window
            .into_sorted_vec()
            .into_iter()
            .filter_map(|(dot, _, id)| {
                let record = self.records.get(&id)?;
                let version = record.versions().iter().find(|v| v.dot() == dot)?;
                Some(CrdtOperation {
                    id,
                    version: version.clone(),
                })
            })
            .collect();
        (ops, !cut)
    }

    /// Chunk `chunk` of `plan` as the store stands now: each planned
    /// version still here (in dot order), and the ids of the records whose
    /// planned version was superseded since (see
    /// [`current_changes_of`](Self::current_changes_of)).
    pub fn planned_chunk(
        &self,
        plan: &ChangePlan,
        chunk: usize,
    ) -> (Vec<CrdtOperation>, Vec<Arc<str>>) {
        let mut ops = Vec::new();
        let mut superseded = Vec::new();
        for planned in &plan.versions[plan.range(chunk)] {
            let dot = plan.dot(planned);
            let version = self
                .records
                .get(&planned.id)
                .and_then(|record| record.versions().iter().find(|v| v.dot() == dot));
            match version {
                Some(version) => ops.push(CrdtOperation {
                    id: planned.id.clone(),
                    version: version.clone(),
                }),
                None => superseded.push(planned.id.clone()),
            }
        }
        (ops, superseded)
    }

    /// The versions of records `ids` that `seen` lacks, as they stand now:
    /// what superseded planned versions (a record gone altogether, its
    /// tombstone compacted, has none).
    pub fn current_changes_of(&self, ids: &[Arc<str>], seen: &VersionVector) -> Vec<CrdtOperation> {
        let mut ops = Vec::new();
        for record in ids.iter().filter_map(|id| self.records.get(id)) {
            push_changes_of(record, seen, &mut ops);
        }
        ops
    }

    /// Removes tombstone-only records whose delete every replica has seen,
    /// returning their ids. `horizon` must be covered by the version vector
    /// of every replica that will ever sync with this one (for example the
    /// pointwise minimum of all members' acknowledged vectors); removing a
    /// tombstone earlier could let a concurrent old write resurrect the
    /// record. See `docs/ARCHITECTURE.md`, "Tombstones".
    pub fn compact_tombstones(&mut self, horizon: &VersionVector) -> Vec<String> {
        let removed = self.records.remove_where(|r| {
            r.versions()
                .iter()
                .all(|v| v.is_tombstone() && horizon.covers(&v.dot()))
        });
        let mut removable = Vec::with_capacity(removed.len());
        for record in removed {
            let before = self.bodies.before(&record);
            self.bodies.changed(before, None);
            removable.push(record.id().to_owned());
        }
        // In id order, as the records are.
        removable.sort_unstable();
        removable
    }

    /// A canonical encoding of the replicated state (records and version
    /// vector): two replicas that converged have equal bytes.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::new();
        self.version_vector.encode(&mut writer);
        writer.u32(crate::codec::len_u32(self.records.len()));
        for record in self.records() {
            record.encode(&mut writer);
        }
        writer.finish()
    }
}

/// What a changed record means to subscribers: `was_deleted` is `None` for
/// a record not seen before. Deleting something never seen changes nothing
/// visible.
/// Batches of at least this many records may take the bulk insert path of
/// [`CrdtStore::install`].
const BULK_INSERT_MIN: usize = 1024;

fn change_of(id: Arc<str>, was_deleted: Option<bool>, deleted: bool) -> Option<Change> {
    if deleted && was_deleted.is_none() {
        return None;
    }
    let kind = if deleted {
        ChangeKind::Delete
    } else {
        ChangeKind::Upsert
    };
    Some(Change { id, kind })
}

/// Cheap check that merging `version` into `record` changes something.
fn would_change(record: &Record, version: &Version) -> bool {
    let dot = version.dot();
    !record
        .versions()
        .iter()
        .any(|v| v == version || (v.dot() != dot && v.clock().covers(&dot)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor(n: u8) -> ActorId {
        ActorId::from_bytes([n; 16])
    }

    fn doc(value: serde_json::Value) -> Document {
        Document::from_value(&value).unwrap()
    }

    /// Bodies in memory when a budget is set leave first, in id order;
    /// then those that came in since, oldest first; a body read since it
    /// came gets one more turn.
    #[test]
    fn bodies_leave_memory_oldest_first_and_read_ones_get_a_second_turn() {
        let mut store = CrdtStore::new(actor(1));
        // Written out of id order: the bodies there at the budget leave in
        // id order all the same.
        for i in [3, 0, 9, 5, 1, 7, 2, 8, 4, 6] {
            store.put(
                &format!("r{i}"),
                doc(json!({ "pad": "x".repeat(90 + i) })),
                10,
            );
        }
        let bytes =
            |store: &CrdtStore, i: usize| store.record(&format!("r{i}")).unwrap().resident_bytes();
        let resident = |store: &CrdtStore| -> Vec<usize> {
            (0..12)
                .filter(|i| {
                    store
                        .record(&format!("r{i}"))
                        .is_some_and(Record::is_resident)
                })
                .collect()
        };
        let budget = (6..10).map(|i| bytes(&store, i)).sum::<usize>();
        store.keep_bodies_within(budget);
        assert_eq!(resident(&store), vec![6, 7, 8, 9]);
        assert_eq!(store.body_usage(), (budget, 6));
        // r6 was read: r7 leaves in its place.
        store.note_read("r6");
        store.put("r10", doc(json!({ "pad": "y".repeat(10) })), 20);
        store.make_room(0);
        assert_eq!(resident(&store), vec![6, 8, 9, 10]);
        // Then r8 and r9 (before r10, which came later, and r6, read).
        store.put("r11", doc(json!({ "pad": "z".repeat(200) })), 30);
        store.make_room(0);
        assert_eq!(resident(&store), vec![6, 10, 11]);
        // r6 went to the back once, behind r10: both leave now.
        store.put("r0", doc(json!({ "pad": "w".repeat(150) })), 40);
        store.make_room(0);
        assert_eq!(resident(&store), vec![0, 11]);
    }

    /// A planned delta resolved chunk by chunk carries exactly the
    /// changes, in dot order, in chunks of the planned size; a version
    /// superseded after the plan is named by its record, whose current
    /// versions cover it.
    #[test]
    fn a_planned_delta_resolves_to_the_changes_in_dot_order_and_chunk_sizes() {
        let mut random = crate::test_random::Random(17);
        let mut stores: Vec<CrdtStore> = (1..=3).map(|n| CrdtStore::new(actor(n))).collect();
        for step in 0..600u64 {
            let writer = random.below(3) as usize;
            let id = format!("r{:03}", random.below(150));
            if random.below(8) == 0 {
                stores[writer].delete(&id, step);
            } else {
                let pad = "p".repeat(random.below(300) as usize);
                stores[writer].put(&id, doc(json!({ "step": step, "pad": pad })), step);
            }
            // Now and then one replica merges another's changes (causality
            // across writers, concurrent versions, gaps in sequences).
            if random.below(10) == 0 {
                let from = random.below(3) as usize;
                let ops = stores[from].changes_since(stores[writer].version_vector());
                for op in ops {
                    stores[writer].apply(op, step);
                }
            }
        }
        let mut store = stores.remove(0);
        for other in &stores {
            for op in other.changes_since(&VersionVector::new()) {
                store.apply(op, 1_000);
            }
        }
        let seen = stores[0].version_vector().clone();
        let mut expected = store.changes_since(&seen);
        expected.sort_unstable_by_key(|op| op.version.dot());
        assert!(expected.len() > 100, "{} changes", expected.len());
        let chunk_bytes = 2_000;
        let plan = store.plan_changes(&seen, None, chunk_bytes);
        assert_eq!(plan.len(), expected.len());
        let mut resolved: Vec<CrdtOperation> = Vec::new();
        for chunk in 0..plan.chunk_count() {
            let (ops, superseded) = store.planned_chunk(&plan, chunk);
            assert!(superseded.is_empty());
            assert_eq!(
                ops.last().map(|op| op.version.dot()),
                Some(plan.last_dot(chunk))
            );
            let bytes: usize = ops.iter().map(|op| op.to_bytes().len()).sum();
            assert!(bytes <= chunk_bytes || ops.len() == 1, "{bytes} bytes");
            // Filled as far as the next operation allows.
            if chunk + 1 < plan.chunk_count() {
                let next = &expected[resolved.len() + ops.len()];
                assert!(bytes + next.to_bytes().len() > chunk_bytes);
            }
            resolved.extend(ops);
        }
        assert_eq!(resolved, expected);
        // Planned after a dot: only what follows it.
        let after = expected[expected.len() / 2].version.dot();
        let rest_plan = store.plan_changes(&seen, Some(after), chunk_bytes);
        let rest: Vec<CrdtOperation> = (0..rest_plan.chunk_count())
            .flat_map(|chunk| store.planned_chunk(&rest_plan, chunk).0)
            .collect();
        assert_eq!(rest, expected[expected.len() / 2 + 1..].to_vec());
        // A version superseded after the plan: its record is named, and its
        // current versions cover the planned one.
        let victim = expected[0].clone();
        store.put(&victim.id, doc(json!({ "newer": true })), 2_000);
        let (ops, superseded) = store.planned_chunk(&plan, 0);
        assert_eq!(superseded, vec![victim.id.clone()]);
        assert!(!ops
            .iter()
            .any(|op| op.version.dot() == victim.version.dot()));
        let current = store.current_changes_of(&superseded, &seen);
        assert!(!current.is_empty());
        assert!(current
            .iter()
            .all(|op| op.id == victim.id && op.version.clock().covers(&victim.version.dot())));
        let mut everything = VersionVector::new();
        for n in 1..=3 {
            everything.raise(actor(n), crate::crdt::MAX_COUNTER);
        }
        assert!(store
            .plan_changes(&everything, None, chunk_bytes)
            .is_empty());
        // Read window by window: the same changes, each window within its
        // bytes, the last one known to be the last.
        let mut expected = store.changes_since(&seen);
        expected.sort_unstable_by_key(|op| op.version.dot());
        let mut windows = Vec::new();
        let mut after = None;
        loop {
            let (ops, all) = store.changes_after(&seen, after, chunk_bytes);
            let bytes: usize = ops.iter().map(|op| op.to_bytes().len()).sum();
            assert!(bytes < chunk_bytes + ops.last().map_or(0, |op| op.to_bytes().len()));
            after = ops.last().map(|op| op.version.dot());
            windows.extend(ops);
            if all {
                break;
            }
        }
        assert_eq!(windows, expected);
        assert_eq!(
            store.changes_after(&everything, None, chunk_bytes),
            (Vec::new(), true)
        );
    }

    #[test]
    fn a_bulk_batch_installs_as_one_operation_at_a_time_would() {
        // Large enough for install's bulk path (new ids added in one merge
        // of sorted maps), mixing ids the store already holds, new ids, and
        // records the batch writes and then deletes.
        fn seeded() -> CrdtStore {
            let mut store = CrdtStore::new(actor(1));
            for i in 0..600 {
                store.put(&format!("k{i:05}"), doc(json!({ "old": i })), 10);
            }
            store
        }
        let mut remote = CrdtStore::new(actor(2));
        let mut ops = Vec::new();
        for i in 300..3_000 {
            ops.push(remote.put(&format!("k{i:05}"), doc(json!({ "remote": i })), 20));
        }
        for i in (300..3_000).step_by(7) {
            ops.extend(remote.delete(&format!("k{i:05}"), 30));
        }
        assert!(ops.len() >= BULK_INSERT_MIN);

        // Staged or not; and with another batch installed between preview
        // and install (a write of another tab), which must fall back to
        // merging each record.
        for (stage, interleaved) in [(false, false), (true, false), (true, true)] {
            let mut other = CrdtStore::new(actor(3));
            let between = [
                other.put("k02000", doc(json!({ "other": 1 })), 35),
                other.put("k09999", doc(json!({ "other": 2 })), 35),
            ];
            let mut bulk = seeded();
            #[cfg_attr(target_arch = "wasm32", allow(unused_mut))]
            let mut preview = bulk.preview(&ops);
            // Staging exists natively only (it overlaps with SQLite's thread).
            #[cfg(not(target_arch = "wasm32"))]
            if stage {
                preview.stage();
                assert!(preview.records().len() < 600, "new records were staged");
            }
            if interleaved {
                for op in &between {
                    bulk.apply(op.clone(), 40);
                }
            }
            let changes = bulk.install(preview, &ops, None, 40);
            let mut stepwise = seeded();
            if interleaved {
                for op in &between {
                    stepwise.apply(op.clone(), 40);
                }
            }
            for op in ops.clone() {
                stepwise.apply(op, 40);
            }
            assert_eq!(
                bulk.state_bytes(),
                stepwise.state_bytes(),
                "stage {stage}, interleaved {interleaved}"
            );
            check_bulk(bulk, stepwise, changes, &ops, interleaved);
        }
    }

    fn check_bulk(
        bulk: CrdtStore,
        stepwise: CrdtStore,
        changes: Vec<Change>,
        ops: &[CrdtOperation],
        interleaved: bool,
    ) {
        let mut touched: Vec<Arc<str>> = ops.iter().map(|op| op.id.clone()).collect();
        // One change per record the batch touched, judged by its final
        // state; a record both created and deleted by the batch never showed.
        touched.sort();
        touched.dedup();
        let expected: Vec<Change> = touched
            .into_iter()
            .filter_map(|id| {
                let existed = id.as_ref() < "k00600";
                let deleted = stepwise.get(&id).is_none();
                change_of(id, existed.then_some(false), deleted)
            })
            .collect();
        assert_eq!(bulk.len(), 3_000 + usize::from(interleaved));
        let sorted = |mut changes: Vec<Change>| {
            changes.sort_by(|a, b| a.id.cmp(&b.id));
            changes
        };
        assert_eq!(sorted(changes), sorted(expected));
        assert_eq!(bulk.get("k00299").unwrap().as_str(), r#"{"old":299}"#);
        assert!(bulk.get("k00300").is_none()); // deleted by the batch
        assert_eq!(bulk.get("k02999").unwrap().as_str(), r#"{"remote":2999}"#);
        let live = bulk.records().filter(|r| !r.is_deleted()).count();
        // The interleaved write adds k09999 (and only a conflict to k02000).
        assert_eq!(live, 3_000 - 386 + usize::from(interleaved));
        let ids: Vec<&str> = bulk.records().map(|r| r.id()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "records stay in id order"
        );
    }

    #[test]
    fn one_dot_with_two_payloads_settles_the_same_in_any_order() {
        // Issue #20, bug 3: a reused actor writes `k` twice under one dot,
        // once after seeing another replica's version and once without.
        let reused = actor(7);
        let mut witness = CrdtStore::new(actor(8));
        let seen = witness.put("k", doc(json!("witness")), 10);
        let mut honest = CrdtStore::new(reused);
        honest.apply(seen.clone(), 11);
        let covering = honest.put("k", doc(json!("covering")), 20);
        let mut copy = CrdtStore::new(reused);
        let blind = copy.put("k", doc(json!("blind")), 30);
        assert_eq!(covering.version.dot(), blind.version.dot());
        let ops = [seen, covering, blind];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let mut states = Vec::new();
        for order in orders {
            let mut store = CrdtStore::new(actor(9));
            for index in order {
                store.apply(ops[index].clone(), 40);
            }
            let record = store.record("k").expect("record");
            let bytes = record.to_bytes();
            Record::from_bytes(&bytes).expect("the merged record stays an antichain");
            states.push(store.state_bytes());
        }
        assert!(
            states.windows(2).all(|pair| pair[0] == pair[1]),
            "every delivery order gives the same state"
        );
    }

    #[test]
    fn restoring_rows_that_repeat_ids_merges_them_in_any_order() {
        // Append-only storage hands an id over once per row that holds it,
        // in no particular order: a superseded version, two concurrent
        // ones, and an id written once, interleaved.
        let now = 1_700_000_000_000u64;
        let mut first = CrdtStore::new(actor(1));
        let old = first.put("shared", doc(json!("old")), now);
        let lone = first.put("lone", doc(json!(1)), now + 1);
        let mut second = CrdtStore::new(actor(2));
        second.apply(old.clone(), now);
        let newer = second.put("shared", doc(json!("newer")), now + 2);
        let concurrent = first.put("shared", doc(json!("concurrent")), now + 3);
        let row = |op: &CrdtOperation| Record::new(op.id.clone(), op.version.clone());
        let mut expected = CrdtStore::new(actor(3));
        for op in [&old, &lone, &newer, &concurrent] {
            expected.apply(op.clone(), now);
        }
        let orders = [
            [&old, &lone, &newer, &concurrent],
            [&concurrent, &lone, &old, &newer],
            [&newer, &concurrent, &lone, &old],
        ];
        for order in orders {
            let rows: RestoredRecords = order.into_iter().map(row).collect();
            let restored = CrdtStore::restore(
                actor(3),
                rows,
                expected.version_vector().clone(),
                expected.last_hlc(),
                now,
            );
            let records: Vec<&Record> = restored.records().collect();
            assert_eq!(records, expected.records().collect::<Vec<_>>());
            assert_eq!(restored.record("shared").unwrap().versions().len(), 2);
        }
    }

    #[test]
    fn a_far_future_version_does_not_drag_the_clock_after_restart() {
        // Issue #20, bug 2: a remote write stamped ten years ahead.
        let now = 1_700_000_000_000u64;
        let ten_years = 10 * 365 * 24 * 3_600_000;
        let mut peer = CrdtStore::new(actor(2));
        let future = peer.put("far", doc(json!("future")), now + ten_years);
        let mut store = CrdtStore::new(actor(1));
        store.apply(future, now);
        let records: RestoredRecords = store.records().cloned().collect();
        let restored = CrdtStore::restore(
            actor(1),
            records,
            store.version_vector().clone(),
            Hlc {
                wall_ms: now + ten_years,
                logical: 0,
            },
            now,
        );
        assert!(restored.last_hlc().wall_ms <= now + crate::crdt::MAX_FUTURE_DRIFT_MS);
        assert_eq!(
            restored.get("far").unwrap().as_str(),
            r#""future""#,
            "the version itself is kept"
        );
        let mut restored = restored;
        let local = restored.put("mine", doc(json!(1)), now + 1);
        assert!(local.version.hlc.wall_ms <= now + crate::crdt::MAX_FUTURE_DRIFT_MS);
    }

    #[test]
    fn counters_from_peers_never_overflow() {
        // Issue #20, bug 2: u64::MAX sequence numbers and timestamps.
        let mut peer = CrdtStore::new(actor(2));
        let mut op = peer.put("x", doc(json!(1)), 10);
        op.version
            .set_clock([(actor(2), u64::MAX)].into_iter().collect());
        let bytes = op.to_bytes();
        assert!(
            CrdtOperation::from_bytes(&bytes).is_err(),
            "refused on decode"
        );
        op.version
            .set_clock([(actor(2), crate::crdt::MAX_COUNTER)].into_iter().collect());
        let op = CrdtOperation::from_bytes(&op.to_bytes()).expect("2^53 decodes");
        let mut store = CrdtStore::new(actor(1));
        store.apply(op, 10);
        let mut vector = VersionVector::new();
        vector.raise(actor(2), u64::MAX);
        assert!(!vector.advance(&Dot {
            actor: actor(2),
            seq: 0
        }));
        let mut clock = crate::crdt::HlcClock::new(Hlc {
            wall_ms: u64::MAX,
            logical: u32::MAX,
        });
        assert_eq!({ clock.tick(5).wall_ms }, u64::MAX, "saturates, no panic");
    }

    #[test]
    fn local_writes_supersede_each_other() {
        let mut store = CrdtStore::new(actor(1));
        store.put("a", doc(json!({"n": 1})), 10);
        store.put("a", doc(json!({"n": 2})), 10);
        assert_eq!(store.get("a").unwrap().as_str(), r#"{"n":2}"#);
        assert!(store.conflicts("a").is_empty());
        assert_eq!(store.version_vector().get(&actor(1)), 2);
    }

    #[test]
    fn concurrent_writes_keep_a_conflict_and_pick_the_same_winner() {
        let mut a = CrdtStore::new(actor(1));
        let mut b = CrdtStore::new(actor(2));
        let op_a = a.put("x", doc(json!("from a")), 100);
        let op_b = b.put("x", doc(json!("from b")), 200);
        a.apply(op_b, 300);
        b.apply(op_a, 300);
        assert_eq!(a.get("x").unwrap().as_str(), "\"from b\"");
        assert_eq!(a.state_bytes(), b.state_bytes());
        assert_eq!(a.conflicts("x").len(), 1);
        // A later write from either side resolves the conflict everywhere.
        let resolve = a.put("x", doc(json!("resolved")), 400);
        b.apply(resolve, 500);
        assert!(b.conflicts("x").is_empty());
        assert_eq!(a.state_bytes(), b.state_bytes());
    }

    #[test]
    fn stale_write_does_not_resurrect_a_delete() {
        let mut a = CrdtStore::new(actor(1));
        let mut b = CrdtStore::new(actor(2));
        let create = a.put("x", doc(json!(1)), 100);
        b.apply(create.clone(), 100);
        let delete = b.delete("x", 200).unwrap();
        a.apply(delete, 300);
        assert!(a.get("x").is_none());
        // The original create arriving again changes nothing.
        assert!(a.apply(create, 400).is_none());
        assert!(a.get("x").is_none());
    }

    #[test]
    fn concurrent_older_write_loses_to_a_delete() {
        let mut a = CrdtStore::new(actor(1));
        let mut b = CrdtStore::new(actor(2));
        let create = a.put("x", doc(json!(1)), 100);
        b.apply(create, 100);
        let older_update = a.put("x", doc(json!(2)), 150);
        let delete = b.delete("x", 200).unwrap();
        a.apply(delete.clone(), 300);
        b.apply(older_update, 300);
        assert!(a.get("x").is_none() && b.get("x").is_none());
        assert_eq!(a.conflicts("x").len(), 1);
        assert_eq!(a.state_bytes(), b.state_bytes());
    }

    #[test]
    fn changes_since_sends_only_what_is_missing() {
        let mut a = CrdtStore::new(actor(1));
        for i in 0..10 {
            a.put(&format!("k{i}"), doc(json!(i)), 100 + i);
        }
        let mut b = CrdtStore::new(actor(2));
        let delta = a.changes_since(b.version_vector());
        assert_eq!(delta.len(), 10);
        b.apply_delta(delta, &a.version_vector().clone(), 200);
        assert!(a.changes_since(b.version_vector()).is_empty());
        a.put("k3", doc(json!("new")), 300);
        let delta = a.changes_since(b.version_vector());
        assert_eq!(delta.len(), 1);
        assert_eq!(&*delta[0].id, "k3");
    }

    #[test]
    fn prepared_writes_are_invisible_until_installed() {
        let mut store = CrdtStore::new(actor(1));
        let first = store.prepare_put("x", doc(json!(1)), None, 10);
        let second = store.prepare_put("x", doc(json!(2)), None, 10);
        assert!(store.get("x").is_none());
        // Both land in one batch: the second supersedes the first.
        let ops = [first, second];
        let preview = store.preview(&ops);
        assert_eq!(preview.records().len(), 1);
        store.install(preview, &ops, None, 10);
        assert_eq!(store.get("x").unwrap().as_str(), "2");
        assert!(store.conflicts("x").is_empty());
    }

    #[test]
    fn delete_of_a_pending_put_is_not_a_no_op() {
        let mut store = CrdtStore::new(actor(1));
        let put = store.prepare_put("x", doc(json!(1)), None, 10);
        let delete = store
            .prepare_delete("x", 10)
            .expect("pending put is deletable");
        let ops = [put, delete];
        let preview = store.preview(&ops);
        store.install(preview, &ops, None, 10);
        assert!(store.get("x").is_none());
        assert!(store.prepare_delete("x", 11).is_none());
    }

    #[test]
    fn a_bulk_install_keeps_later_pending_writes() {
        // A batch of 100 local writes is installed while later writes are
        // still pending: those stay pending (a put of a new id stays
        // deletable); without later writes the batch is settled in one pass.
        let mut store = CrdtStore::new(actor(1));
        store.put("gone", doc(json!(0)), 10);
        let batch: Vec<_> = (0..100)
            .map(|n| store.prepare_put(&format!("k{n:03}"), doc(json!(n)), None, 10))
            .collect();
        let later_put = store.prepare_put("new", doc(json!("later")), None, 11);
        let later_delete = store.prepare_delete("gone", 11).expect("live record");
        let preview = store.preview(&batch);
        store.install(preview, &batch, None, 12);
        assert_eq!(store.pending.len(), 2, "later writes stay pending");
        let delete_new = store
            .prepare_delete("new", 12)
            .expect("a pending put is deletable");
        let later = [later_put, later_delete, delete_new];
        let preview = store.preview(&later);
        store.install(preview, &later, None, 13);
        assert!(store.pending.is_empty());
        assert!(store.get("new").is_none() && store.get("gone").is_none());
        assert_eq!(store.get("k099").unwrap().as_str(), "99");

        let batch: Vec<_> = (0..100)
            .map(|n| store.prepare_put(&format!("j{n:03}"), doc(json!(n)), None, 14))
            .collect();
        store.abandon(&batch);
        assert!(store.pending.is_empty(), "an abandoned batch settles too");
        assert!(store.prepare_delete("j000", 15).is_none(), "never written");
    }

    #[test]
    fn abandoned_sequence_numbers_are_never_reused() {
        let mut store = CrdtStore::new(actor(1));
        let lost = store.prepare_put("x", doc(json!(1)), None, 10);
        store.abandon(std::slice::from_ref(&lost));
        let next = store.put("x", doc(json!(2)), 10);
        assert!(next.version.dot().seq > lost.version.dot().seq);
    }

    #[test]
    fn compaction_removes_only_covered_tombstones() {
        let mut a = CrdtStore::new(actor(1));
        a.put("gone", doc(json!(1)), 10);
        a.put("kept", doc(json!(1)), 10);
        a.delete("gone", 20);
        let horizon = VersionVector::new();
        assert!(a.compact_tombstones(&horizon).is_empty());
        let horizon = a.version_vector().clone();
        assert_eq!(a.compact_tombstones(&horizon), vec!["gone".to_string()]);
        assert!(a.record("kept").is_some());
    }
}
