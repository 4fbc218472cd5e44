//! Logical time: actor ids, dots, vector clocks, the store-wide version vector
//! and the hybrid logical clock.
//!
//! Invariants this module keeps:
//! - An actor's counter only grows. Every write by actor `A` gets the next
//!   database-wide sequence number `s` of `A`, its *dot* `(A, s)`, and the
//!   record's vector clock stores `A -> s`. So the dot of a version is always
//!   its clock's entry for its writer, and "version `w` has seen version `v`"
//!   is the O(1) test `w.clock[v.writer] >= v.seq` (dotted version vectors).
//! - [`Hlc`] values stamped by one [`HlcClock`] strictly increase, whatever the
//!   wall clock does, and stay above every timestamp the clock has observed
//!   (bounded by [`MAX_FUTURE_DRIFT_MS`] so one peer with a broken clock cannot
//!   drag every replica into the far future).

use smallvec::SmallVec;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;

/// A replica's writer identity: 16 random bytes, shown as 32 hex digits.
///
/// A browser database holds a small set of actor *slots*; each open tab takes
/// one (see `docs/ARCHITECTURE.md`), so the number of actors stays bounded by
/// the number of tabs ever open at once.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId([u8; 16]);

impl ActorId {
    /// Wire length in bytes.
    pub const LEN: usize = 16;

    /// An actor id from raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random actor id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        crate::platform::fill_random(&mut bytes);
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn encode(&self, writer: &mut Writer) {
        writer.raw(&self.0);
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(reader.array()?))
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({self})")
    }
}

impl FromStr for ActorId {
    type Err = DecodeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return Err(DecodeError::Invalid(format!(
                "an actor id is 32 hex digits, got {} characters",
                text.len()
            )));
        }
        let mut out = [0u8; 16];
        for (index, pair) in bytes.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair)
                .map_err(|_| DecodeError::Invalid("actor id is not hex".into()))?;
            out[index] = u8::from_str_radix(pair, 16)
                .map_err(|_| DecodeError::Invalid(format!("actor id is not hex: {text}")))?;
        }
        Ok(Self(out))
    }
}

/// One write's identity: the writer and its per-actor sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// Who wrote.
    pub actor: ActorId,
    /// The writer's database-wide sequence number, starting at 1.
    pub seq: u64,
}

/// Encoded size of one `(actor, counter)` entry.
const ENTRY_LEN: usize = ActorId::LEN + 8;

/// The largest sequence number (and clock or version-vector counter) any
/// encoding may carry: 2^53, the largest integer JavaScript numbers hold
/// exactly. Decoding refuses larger counters, so a peer cannot send
/// `u64::MAX` and make the next `+ 1` overflow; an actor would need 2^53
/// writes (285 years at a million a second) to reach it honestly.
pub const MAX_COUNTER: u64 = 1 << 53;

/// `actor -> counter` as a vector sorted by actor: clocks usually hold one
/// to a few actors, where a sorted vector beats a tree map in both time and
/// allocations. One entry is kept inline: most versions' clocks name only
/// their writer, and every resident record holds one (a heap allocation of
/// its own cost about 32 bytes a record, and time at open). Counters are
/// never zero (absent means zero).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
struct ActorCounters(SmallVec<[Counter; 1]>);

/// One `(actor, counter)` entry. The counter is kept as two halves, so an
/// entry (and a clock, and a version) is aligned to 4 bytes, not 8: in
/// WebAssembly a version takes 8 bytes less, 8 MiB a million records.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Counter {
    actor: ActorId,
    halves: [u32; 2],
}

impl Counter {
    fn new(actor: ActorId, counter: u64) -> Self {
        Self {
            actor,
            halves: [counter as u32, (counter >> 32) as u32],
        }
    }

    fn get(&self) -> u64 {
        u64::from(self.halves[0]) | u64::from(self.halves[1]) << 32
    }
}

impl ActorCounters {
    fn position(&self, actor: &ActorId) -> Result<usize, usize> {
        self.0.binary_search_by(|entry| entry.actor.cmp(actor))
    }

    fn get(&self, actor: &ActorId) -> u64 {
        match self.position(actor) {
            Ok(index) => self.0[index].get(),
            Err(_) => 0,
        }
    }

    /// Raises `actor`'s counter to `counter`; returns whether it changed.
    fn raise(&mut self, actor: ActorId, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        match self.position(&actor) {
            Ok(index) if self.0[index].get() >= counter => false,
            Ok(index) => {
                self.0[index] = Counter::new(actor, counter);
                true
            }
            Err(index) => {
                self.0.insert(index, Counter::new(actor, counter));
                true
            }
        }
    }

    fn merge(&mut self, other: &ActorCounters) {
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        for entry in &other.0 {
            self.raise(entry.actor, entry.get());
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&ActorId, u64)> {
        self.0.iter().map(|entry| (&entry.actor, entry.get()))
    }

    fn encode(&self, writer: &mut Writer) {
        writer.u32(crate::codec::len_u32(self.0.len()));
        for (actor, counter) in self.iter() {
            actor.encode(writer);
            writer.u64(counter);
        }
    }

    fn decode(reader: &mut Reader<'_>, what: &str) -> Result<Self, DecodeError> {
        let count = reader.count(ENTRY_LEN)?;
        let mut entries: SmallVec<[Counter; 1]> = SmallVec::with_capacity(count);
        for _ in 0..count {
            let actor = ActorId::decode(reader)?;
            let counter = reader.u64()?;
            // Strictly ascending actors and no zero counters: one canonical
            // encoding per value, so equal states are equal bytes.
            if entries
                .last()
                .is_some_and(|previous| previous.actor >= actor)
            {
                return Err(DecodeError::Invalid(format!(
                    "{what} entries are not in strictly ascending actor order"
                )));
            }
            if counter == 0 {
                return Err(DecodeError::Invalid(format!("{what} has a zero counter")));
            }
            if counter > MAX_COUNTER {
                return Err(DecodeError::Invalid(format!(
                    "{what} counter {counter} exceeds the maximum 2^53"
                )));
            }
            entries.push(Counter::new(actor, counter));
        }
        Ok(Self(entries))
    }

    fn debug_map(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(a, c)| (a.to_string(), c)))
            .finish()
    }
}

/// A record version's causal history: actor -> highest sequence number seen.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VectorClock {
    entries: ActorCounters,
}

impl VectorClock {
    /// The empty clock (nothing seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `actor` (0 when never seen).
    pub fn get(&self, actor: &ActorId) -> u64 {
        self.entries.get(actor)
    }

    /// Raises `actor`'s entry to `counter` (never lowers it).
    pub fn observe(&mut self, actor: ActorId, counter: u64) {
        self.entries.raise(actor, counter);
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &VectorClock) {
        self.entries.merge(&other.entries);
    }

    /// True when this clock has seen the write `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.seq
    }

    /// Causal order: `Some(Less)` when `self` happened before `other`,
    /// `None` when they are concurrent.
    pub fn causal_cmp(&self, other: &VectorClock) -> Option<Ordering> {
        let mut less = false;
        let mut greater = false;
        let actors = self.entries.iter().chain(other.entries.iter());
        for (actor, _) in actors {
            match self.get(actor).cmp(&other.get(actor)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
            if less && greater {
                return None;
            }
        }
        Some(match (less, greater) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Less,
            _ => Ordering::Greater,
        })
    }

    /// Iterates `(actor, counter)` in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&ActorId, u64)> {
        self.entries.iter()
    }

    /// Number of actors in the clock.
    pub fn len(&self) -> usize {
        self.entries.0.len()
    }

    /// True when no actor is in the clock.
    pub fn is_empty(&self) -> bool {
        self.entries.0.is_empty()
    }

    /// Where `actor`'s entry lies among the entries (in actor order), if
    /// it has one.
    pub(crate) fn place_of(&self, actor: &ActorId) -> Option<usize> {
        self.entries.position(actor).ok()
    }

    /// The `(actor, counter)` entry at `place` (see
    /// [`place_of`](Self::place_of)).
    pub(crate) fn entry_at(&self, place: usize) -> (ActorId, u64) {
        let entry = &self.entries.0[place];
        (entry.actor, entry.get())
    }

    pub(crate) fn encode(&self, writer: &mut Writer) {
        self.entries.encode(writer);
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            entries: ActorCounters::decode(reader, "vector clock")?,
        })
    }
}

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.entries.debug_map(f)
    }
}

impl FromIterator<(ActorId, u64)> for VectorClock {
    fn from_iter<I: IntoIterator<Item = (ActorId, u64)>>(iter: I) -> Self {
        let mut clock = VectorClock::new();
        for (actor, counter) in iter {
            clock.observe(actor, counter);
        }
        clock
    }
}

/// What a whole replica has seen: for each actor, every write with a
/// sequence number up to the entry is present in the replica or superseded by
/// a version that is.
///
/// Sync exchanges version vectors and answers with
/// [`CrdtStore::changes_since`](super::CrdtStore::changes_since): exactly the
/// versions whose dots the other side's vector does not cover.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: ActorCounters,
}

impl VersionVector {
    /// The empty vector (a new replica).
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest contiguous sequence number of `actor` seen.
    pub fn get(&self, actor: &ActorId) -> u64 {
        self.entries.get(actor)
    }

    /// True when the write `dot` is known (present or superseded).
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.seq
    }

    /// Records a write that is the immediate successor of what was seen from
    /// its actor. A dot further ahead leaves a gap, so the vector is left as
    /// it is (the next resync fills the gap). Returns whether it advanced.
    pub fn advance(&mut self, dot: &Dot) -> bool {
        self.get(&dot.actor).checked_add(1) == Some(dot.seq)
            && self.entries.raise(dot.actor, dot.seq)
    }

    /// Raises `actor`'s entry to `seq` (for the replica's own writes, which
    /// are known completely).
    pub fn raise(&mut self, actor: ActorId, seq: u64) {
        self.entries.raise(actor, seq);
    }

    /// Pointwise maximum: used after a complete delta from a peer has been
    /// applied, when everything the peer's vector covers is now present here.
    pub fn merge(&mut self, other: &VersionVector) {
        self.entries.merge(&other.entries);
    }

    /// True when every entry of `other` is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(a, s)| self.get(a) >= s)
    }

    /// Iterates `(actor, seq)` in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&ActorId, u64)> {
        self.entries.iter()
    }

    /// Number of actors known.
    pub fn len(&self) -> usize {
        self.entries.0.len()
    }

    /// True for a replica that has seen no write.
    pub fn is_empty(&self) -> bool {
        self.entries.0.is_empty()
    }

    /// Sum of all entries: the number of writes this replica accounts for.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|(_, s)| s).sum()
    }

    /// Encodes as `u32 count, count x (actor[16], u64 seq)`.
    pub fn encode(&self, writer: &mut Writer) {
        self.entries.encode(writer);
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            entries: ActorCounters::decode(reader, "version vector")?,
        })
    }

    /// The encoding as a standalone byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::with_capacity(4 + self.len() * ENTRY_LEN);
        self.encode(&mut writer);
        writer.finish()
    }

    /// Decodes a standalone encoding, rejecting trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let vector = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(vector)
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.entries.debug_map(f)
    }
}

/// A hybrid logical clock timestamp: wall-clock milliseconds plus a logical
/// counter that orders events within the same millisecond (or while the wall
/// clock lags behind a timestamp already seen).
///
/// Packed to 4-byte alignment (12 bytes, not 16): every version holds one,
/// 4 MiB a million records in WebAssembly. Fields are read by value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C, packed(4))]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Tie-breaker within one millisecond.
    pub logical: u32,
}

impl Hlc {
    /// Encoded size.
    pub const LEN: usize = 12;

    pub(crate) fn encode(&self, writer: &mut Writer) {
        writer.u64(self.wall_ms).u32(self.logical);
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            wall_ms: reader.u64()?,
            logical: reader.u32()?,
        })
    }

    /// The next timestamp; saturates at the greatest one (a wall clock at
    /// `u64::MAX` milliseconds is not a real clock, and must not overflow).
    fn successor(self) -> Hlc {
        match (self.logical.checked_add(1), self.wall_ms.checked_add(1)) {
            (Some(logical), _) => Hlc {
                wall_ms: self.wall_ms,
                logical,
            },
            (None, Some(wall_ms)) => Hlc {
                wall_ms,
                logical: 0,
            },
            (None, None) => self,
        }
    }

    /// This timestamp, or the latest one a replica whose wall clock reads
    /// `now_ms` accepts from others (`now + MAX_FUTURE_DRIFT_MS`), whichever
    /// is earlier.
    pub fn bounded(self, now_ms: u64) -> Hlc {
        self.min(Hlc {
            wall_ms: now_ms.saturating_add(MAX_FUTURE_DRIFT_MS),
            logical: 0,
        })
    }
}

/// How far ahead of the local wall clock an observed timestamp may pull the
/// local clock (one hour). Records with later timestamps are still stored and
/// merged normally; they only stop dragging this replica's clock along.
pub const MAX_FUTURE_DRIFT_MS: u64 = 60 * 60 * 1000;

/// The state of a hybrid logical clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has seen `last`.
    pub fn new(last: Hlc) -> Self {
        Self { last }
    }

    /// The greatest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new timestamp for a local event: greater than every timestamp
    /// issued or observed before, and at least the wall clock.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let next = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            self.last.successor()
        };
        self.last = next;
        next
    }

    /// Takes a remote timestamp into account so later local events sort
    /// after it (bounded by [`MAX_FUTURE_DRIFT_MS`]).
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) {
        let remote = remote.bounded(now_ms);
        if remote > self.last {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(n: u8) -> ActorId {
        ActorId::from_bytes([n; 16])
    }

    #[test]
    fn causal_order_of_clocks() {
        let a: VectorClock = [(actor(1), 2)].into_iter().collect();
        let b: VectorClock = [(actor(1), 2), (actor(2), 1)].into_iter().collect();
        let c: VectorClock = [(actor(1), 1), (actor(2), 2)].into_iter().collect();
        assert_eq!(a.causal_cmp(&b), Some(Ordering::Less));
        assert_eq!(b.causal_cmp(&a), Some(Ordering::Greater));
        assert_eq!(a.causal_cmp(&c), None);
        assert_eq!(b.causal_cmp(&b.clone()), Some(Ordering::Equal));
    }

    #[test]
    fn hlc_is_monotonic_when_the_wall_clock_goes_back() {
        let mut clock = HlcClock::default();
        let first = clock.tick(1_000);
        let second = clock.tick(500);
        let third = clock.tick(500);
        assert!(first < second && second < third);
        assert_eq!({ second.wall_ms }, 1_000);
        let fourth = clock.tick(2_000);
        assert_eq!(
            fourth,
            Hlc {
                wall_ms: 2_000,
                logical: 0
            }
        );
    }

    #[test]
    fn hlc_observe_orders_later_events_after_remote_ones() {
        let mut clock = HlcClock::default();
        clock.observe(
            Hlc {
                wall_ms: 5_000,
                logical: 3,
            },
            1_000,
        );
        let next = clock.tick(1_000);
        assert_eq!(
            next,
            Hlc {
                wall_ms: 5_000,
                logical: 4
            }
        );
        // A timestamp a year ahead only pulls the clock one hour ahead.
        clock.observe(
            Hlc {
                wall_ms: 1_000 + 365 * 86_400_000,
                logical: 0,
            },
            1_000,
        );
        assert_eq!({ clock.last().wall_ms }, 1_000 + MAX_FUTURE_DRIFT_MS);
    }

    #[test]
    fn logical_overflow_moves_to_the_next_millisecond() {
        let mut clock = HlcClock::new(Hlc {
            wall_ms: 10,
            logical: u32::MAX,
        });
        assert_eq!(
            clock.tick(0),
            Hlc {
                wall_ms: 11,
                logical: 0
            }
        );
    }

    #[test]
    fn version_vector_advances_only_contiguously() {
        let mut vv = VersionVector::new();
        assert!(vv.advance(&Dot {
            actor: actor(1),
            seq: 1
        }));
        assert!(!vv.advance(&Dot {
            actor: actor(1),
            seq: 3
        }));
        assert_eq!(vv.get(&actor(1)), 1);
        assert!(vv.advance(&Dot {
            actor: actor(1),
            seq: 2
        }));
        assert_eq!(vv.get(&actor(1)), 2);
    }

    #[test]
    fn actor_ids_round_trip_through_hex() {
        let id = ActorId::from_bytes(*b"0123456789abcdef");
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ActorId>().unwrap(), id);
        assert!("zz".parse::<ActorId>().is_err());
        assert!("é".repeat(16).parse::<ActorId>().is_err());
    }

    #[test]
    fn clock_encoding_is_canonical() {
        let clock: VectorClock = [(actor(2), 5), (actor(1), 7)].into_iter().collect();
        let mut writer = Writer::new();
        clock.encode(&mut writer);
        let bytes = writer.finish();
        let decoded = VectorClock::decode(&mut Reader::new(&bytes)).unwrap();
        assert_eq!(decoded, clock);
        // Swap the two entries: out of order is rejected.
        let mut swapped = bytes.clone();
        swapped[4..28].copy_from_slice(&bytes[28..52]);
        swapped[28..52].copy_from_slice(&bytes[4..28]);
        assert!(VectorClock::decode(&mut Reader::new(&swapped)).is_err());
    }
}
