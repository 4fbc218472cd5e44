//! The store's records by id ([`RecordMap`]): a sorted vector of the
//! records a store was restored with, and of each new id beyond the last
//! while it has room (as when an app appends), beside an ordered map of
//! the others (boxed).
//!
//! A database opens by decoding every row into one buffer, sorting it and
//! merging repeated ids in place. An ordered map built from that buffer
//! needs a second copy of every entry while the buffer still exists, and
//! memory that WebAssembly grows never shrinks: a million records kept
//! 28 MiB more in the page for good. Kept as the vector, the buffer is the
//! map. Its entries are the records alone (each knows its id, and holds its
//! first version inline): 76 bytes a record in WebAssembly.

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;
use std::sync::Arc;

use super::Record;

/// Records by id, in id order; see the module documentation.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordMap {
    /// Sorted by id, each id once.
    in_order: Vec<Record>,
    /// Records whose ids are not in `in_order`, each in an allocation of
    /// its own: a B-tree's nodes fill to about half as ids come in order
    /// (a fresh peer taking in a database), and a record (76 bytes in
    /// WebAssembly) in every empty slot cost about 150 bytes a record,
    /// where a pointer there costs about 105 with the record's box.
    others: BTreeMap<Arc<str>, Box<Record>>,
}

type Entry<'a> = (&'a Arc<str>, &'a Record);

impl RecordMap {
    /// The map of `records`, sorted by id with no id twice.
    pub(crate) fn from_sorted(records: Vec<Record>) -> Self {
        debug_assert!(records.windows(2).all(|pair| pair[0].id() < pair[1].id()));
        Self {
            in_order: records,
            others: BTreeMap::new(),
        }
    }

    fn position(&self, id: &str) -> Result<usize, usize> {
        self.in_order.binary_search_by(|probe| probe.id().cmp(id))
    }

    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.others.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Record> {
        self.get_key_value(id).map(|(_, record)| record)
    }

    pub(crate) fn get_key_value(&self, id: &str) -> Option<Entry<'_>> {
        match self.position(id) {
            Ok(at) => Some(entry(&self.in_order[at])),
            Err(_) => self.others.get_key_value(id).map(boxed_entry),
        }
    }

    /// The record `id`, to change (never its id).
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Record> {
        match self.position(id) {
            Ok(at) => Some(&mut self.in_order[at]),
            Err(_) => self.others.get_mut(id).map(|record| &mut **record),
        }
    }

    /// Sets the record of its id, returning the one it replaced.
    pub(crate) fn insert(&mut self, record: Record) -> Option<Record> {
        match self.position(record.id()) {
            Ok(at) => Some(std::mem::replace(&mut self.in_order[at], record)),
            // Beyond every id held: appended, as when a database opened,
            // while the vector has room (growing it would copy a million
            // records, and WebAssembly memory never shrinks back).
            Err(at)
                if at == self.in_order.len()
                    && self.in_order.len() < self.in_order.capacity()
                    && self
                        .others
                        .last_key_value()
                        .is_none_or(|(last, _)| **last < *record.id()) =>
            {
                self.in_order.push(record);
                None
            }
            Err(_) => self
                .others
                .insert(record.shared_id().clone(), Box::new(record))
                .map(|replaced| *replaced),
        }
    }

    /// Removes every record `remove` picks (one pass), returning them.
    pub(crate) fn remove_where(&mut self, remove: impl Fn(&Record) -> bool) -> Vec<Record> {
        let mut removed: Vec<Record> = self
            .in_order
            .extract_if(.., |record| remove(record))
            .collect();
        let others: Vec<Arc<str>> = self
            .others
            .values()
            .filter(|record| remove(record))
            .map(|record| record.shared_id().clone())
            .collect();
        removed.extend(
            others
                .iter()
                .filter_map(|id| self.others.remove(id))
                .map(|record| *record),
        );
        removed
    }

    /// Every entry, in id order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter::new(&self.in_order, self.others.range::<str, _>(..))
    }

    /// The entries with ids in `range`, in id order.
    pub(crate) fn range<'a>(&'a self, (low, high): (Bound<&'a str>, Bound<&'a str>)) -> Iter<'a> {
        let at_or_after = |bound: &str, inclusive: bool| {
            self.in_order.partition_point(|record| {
                if inclusive {
                    record.id() < bound
                } else {
                    record.id() <= bound
                }
            })
        };
        let start = match low {
            Bound::Included(id) => at_or_after(id, true),
            Bound::Excluded(id) => at_or_after(id, false),
            Bound::Unbounded => 0,
        };
        let end = match high {
            Bound::Included(id) => at_or_after(id, false),
            Bound::Excluded(id) => at_or_after(id, true),
            Bound::Unbounded => self.in_order.len(),
        };
        Iter::new(
            &self.in_order[start..end.max(start)],
            self.others.range::<str, _>((low, high)),
        )
    }
}

fn entry(record: &Record) -> Entry<'_> {
    (record.shared_id(), record)
}

/// An entry of the others, its record unboxed.
fn boxed_entry<'a, R>((id, record): (&'a Arc<str>, &'a R)) -> Entry<'a>
where
    R: std::ops::Deref<Target = Record>,
{
    (id, record)
}

/// Entries of a [`RecordMap`] in id order, from either end: the two sorted
/// sources merged. Each entry is in exactly one place: still in its
/// source, or taken out to be compared at the front or at the back.
pub(crate) struct Iter<'a> {
    in_order: std::slice::Iter<'a, Record>,
    others: btree_map::Range<'a, Arc<str>, Box<Record>>,
    in_order_front: Option<Entry<'a>>,
    in_order_back: Option<Entry<'a>>,
    others_front: Option<Entry<'a>>,
    others_back: Option<Entry<'a>>,
}

impl<'a> Iter<'a> {
    fn new(in_order: &'a [Record], others: btree_map::Range<'a, Arc<str>, Box<Record>>) -> Self {
        Self {
            in_order: in_order.iter(),
            others,
            in_order_front: None,
            in_order_back: None,
            others_front: None,
            others_back: None,
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        if self.in_order_front.is_none() {
            self.in_order_front = self
                .in_order
                .next()
                .map(entry)
                .or_else(|| self.in_order_back.take());
        }
        if self.others_front.is_none() {
            self.others_front = self
                .others
                .next()
                .map(boxed_entry)
                .or_else(|| self.others_back.take());
        }
        match (self.in_order_front, self.others_front) {
            (Some((a, _)), Some((b, _))) if b < a => self.others_front.take(),
            (Some(_), _) => self.in_order_front.take(),
            (None, _) => self.others_front.take(),
        }
    }
}

impl<'a> DoubleEndedIterator for Iter<'a> {
    fn next_back(&mut self) -> Option<Entry<'a>> {
        if self.in_order_back.is_none() {
            self.in_order_back = self
                .in_order
                .next_back()
                .map(entry)
                .or_else(|| self.in_order_front.take());
        }
        if self.others_back.is_none() {
            self.others_back = self
                .others
                .next_back()
                .map(boxed_entry)
                .or_else(|| self.others_front.take());
        }
        match (self.in_order_back, self.others_back) {
            (Some((a, _)), Some((b, _))) if b > a => self.others_back.take(),
            (Some(_), _) => self.in_order_back.take(),
            (None, _) => self.others_back.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{ActorId, Dot, Hlc, VectorClock, Version};
    use crate::test_random::Random;

    fn record(id: &str, wall_ms: u64) -> Record {
        let writer = Dot {
            actor: ActorId::from_bytes([1; 16]),
            seq: 1,
        };
        let hlc = Hlc {
            wall_ms,
            logical: 0,
        };
        Record::new(
            id,
            Version::new(writer, VectorClock::new(), hlc, None, None),
        )
    }

    fn tag(entry: Option<Entry<'_>>) -> Option<(String, u64)> {
        entry.map(|(id, record)| (id.to_string(), record.versions()[0].hlc.wall_ms))
    }

    /// An id kept among the others stays there when the vector's last ids
    /// go: writing it again replaces it, never adds it twice.
    #[test]
    fn an_id_beyond_the_vector_once_its_last_ids_went_is_found_where_it_is() {
        let mut map = RecordMap::from_sorted(vec![record("a", 1), record("c", 1)]);
        assert!(map.insert(record("b", 1)).is_none());
        assert_eq!(map.remove_where(|r| r.id() == "c").len(), 1);
        assert_eq!(map.remove_where(|r| r.id() == "a").len(), 1);
        assert!(map.insert(record("b", 2)).is_some(), "b replaced");
        assert_eq!(map.len(), 1);
        assert_eq!(map.iter().count(), 1);
        assert_eq!(tag(map.get_key_value("b")), Some(("b".to_owned(), 2)));
    }

    /// Records beyond the last are appended only while the vector has
    /// room: it never grows (a copy of every record), the rest go to the
    /// ordered map, and every id is still found once, in order.
    #[test]
    fn the_restored_vector_never_grows() {
        let mut restored = Vec::with_capacity(3);
        restored.extend([record("a", 1), record("b", 1)]);
        let mut map = RecordMap::from_sorted(restored);
        for name in ["c", "d", "e"] {
            assert!(map.insert(record(name, 1)).is_none());
        }
        assert_eq!(map.in_order.capacity(), 3, "the vector grew");
        assert_eq!(map.in_order.len(), 3);
        assert!(
            map.insert(record("d", 2)).is_some(),
            "d replaced, not added"
        );
        let ids: Vec<String> = map.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    }

    /// Inserts, replacements and removals at random, against an ordered map,
    /// starting from a restored vector; after each step lookups, whole and
    /// ranged iteration from both ends (and from both at once) agree.
    #[test]
    fn a_record_map_answers_as_an_ordered_map() {
        let ids: Vec<Arc<str>> = (0..120).map(|n| Arc::from(format!("r{n:03}"))).collect();
        let mut random = Random(0x853C_49E6_748F_EA9B);
        // Room for some records beyond the last, as a restored buffer has.
        let mut restored: Vec<Record> = Vec::with_capacity(60);
        restored.extend(ids.iter().step_by(3).take(25).map(|id| record(id, 0)));
        let mut model: BTreeMap<Arc<str>, u64> = restored
            .iter()
            .map(|r| (r.shared_id().clone(), 0))
            .collect();
        let mut map = RecordMap::from_sorted(restored);
        let mut longest = (0, 0);
        for step in 1..4_000u64 {
            longest = (
                longest.0.max(map.in_order.len()),
                longest.1.max(map.others.len()),
            );
            let id = &ids[random.below(ids.len() as u64) as usize];
            // Waves of removals, so the vector loses entries (its last
            // among them) and fills up again.
            let removals = if step % 1_000 < 500 { 1 } else { 5 };
            if random.below(8) < removals {
                assert_eq!(
                    map.remove_where(|r| r.id() == &**id).len() == 1,
                    model.remove(id).is_some(),
                    "step {step}: remove {id}"
                );
            } else {
                let replaced = map.insert(record(id, step)).is_some();
                assert_eq!(
                    replaced,
                    model.insert(id.clone(), step).is_some(),
                    "step {step}"
                );
            }
            assert_eq!(map.len(), model.len(), "step {step}");
            for id in &ids {
                let found = map.get(id).map(|record| record.versions()[0].hlc.wall_ms);
                assert_eq!(found, model.get(id).copied(), "step {step}: get {id}");
            }
            let wanted: Vec<(String, u64)> =
                model.iter().map(|(id, at)| (id.to_string(), *at)).collect();
            let forward: Vec<_> = map.iter().map(|entry| tag(Some(entry)).unwrap()).collect();
            assert_eq!(forward, wanted, "step {step}: iteration");
            let mut backward: Vec<_> = map.iter().rev().map(|e| tag(Some(e)).unwrap()).collect();
            backward.reverse();
            assert_eq!(backward, wanted, "step {step}: reverse iteration");
            // Both ends at once, in a random pattern, meet without loss.
            let mut both = map.iter();
            let (mut front, mut back) = (Vec::new(), Vec::new());
            loop {
                let entry = if random.below(2) == 0 {
                    both.next().map(|e| (true, e))
                } else {
                    both.next_back().map(|e| (false, e))
                };
                match entry {
                    Some((true, e)) => front.push(tag(Some(e)).unwrap()),
                    Some((false, e)) => back.push(tag(Some(e)).unwrap()),
                    None => break,
                }
            }
            back.reverse();
            front.extend(back);
            assert_eq!(front, wanted, "step {step}: from both ends");
            let low = &ids[random.below(ids.len() as u64) as usize];
            let high = &ids[random.below(ids.len() as u64) as usize];
            if low <= high {
                let bounds = [Bound::Included(&**low), Bound::Excluded(&**low)];
                let highs = [
                    Bound::Included(&**high),
                    Bound::Excluded(&**high),
                    Bound::Unbounded,
                ];
                for low_bound in bounds {
                    for high_bound in highs {
                        if low == high
                            && matches!(low_bound, Bound::Excluded(_))
                            && matches!(high_bound, Bound::Excluded(_))
                        {
                            continue;
                        }
                        let found: Vec<_> = map
                            .range((low_bound, high_bound))
                            .map(|e| tag(Some(e)).unwrap())
                            .collect();
                        let wanted: Vec<_> = model
                            .range::<str, _>((low_bound, high_bound))
                            .map(|(id, at)| (id.to_string(), *at))
                            .collect();
                        assert_eq!(found, wanted, "step {step}: {low_bound:?}..{high_bound:?}");
                        let last = map.range((low_bound, high_bound)).next_back();
                        assert_eq!(
                            tag(last),
                            wanted.last().cloned(),
                            "step {step}: last in range"
                        );
                    }
                }
            }
        }
        assert!(longest.0 > 25, "nothing was appended to the vector");
        assert!(longest.1 > 0, "nothing reached the ordered map");
    }
}
