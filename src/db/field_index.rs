//! Secondary indexes on top-level fields that a database declares
//! ([`super::OpenOptions::indexes`], `indexes: ['category', 'score']` in
//! JavaScript): for each field, the ids of the live records under each of
//! its scalar values (null, booleans, numbers, strings), kept up to date on
//! every change, local, from another tab or from a peer.
//!
//! [`FieldIndexes::plan`] picks, among a query's conditions on indexed
//! fields (`=`, `$in`, ranges), the one with the fewest candidates; the
//! query then reads only those records and still checks every condition on
//! them, so an index only ever narrows what is read, never what matches. A
//! query with no such condition scans every record under its prefix.
//!
//! Per field, an ordered map from each value's order-preserving encoding
//! (see [`encode`]) to the ids under it, and each id's value (a sorted
//! vector of the ids that came in order, a hash map of the others); ids
//! are the store's `Arc<str>`s and each value is allocated once, so an
//! index costs a few pointers a record.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde_json::Value;
use smallvec::SmallVec;

use crate::crdt::{Change, CrdtStore, Record};
use crate::error::InputError;
use crate::query::{Condition, Query};

/// The most fields a database may index.
pub(crate) const MAX_INDEXED_FIELDS: usize = 32;
/// The longest indexed field name, in bytes.
pub(crate) const MAX_FIELD_NAME: usize = 256;

/// The order-preserving encoding of a scalar value, or `None` for arrays
/// and objects (no indexable condition matches them): a type tag (`a`
/// null, `b` boolean, `c` number, `d` string, in the query's type order),
/// then the value, such that two encodings of one type compare as the
/// values do and none is a prefix of another:
///
/// - booleans: `0` or `1`;
/// - numbers: the `f64` bits as 16 hex digits, sign-flipped so that they
///   sort as `f64::total_cmp` does (the query's number order);
/// - strings: the text with each NUL written as NUL U+0001, then NUL NUL.
///
/// The flag is false when the encoding stands for more than this value
/// (integers beyond 2^53 share their `f64` with a neighbour): such a bound
/// must be inclusive. Every condition is checked again on each candidate,
/// so a wider candidate set is never wrong.
fn encode(value: &Value) -> Option<(String, bool)> {
    match value {
        Value::Null => Some((encode_null(), true)),
        Value::Bool(flag) => Some((encode_bool(*flag), true)),
        Value::Number(number) => {
            let float = number.as_f64()?;
            let exact = match number.as_i64() {
                Some(integer) => float.abs() < 9_007_199_254_740_992.0 && float as i64 == integer,
                None => number.is_f64(),
            };
            Some((encode_number(float), exact))
        }
        Value::String(text) => Some((encode_string(text), true)),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn encode_null() -> String {
    "a".to_owned()
}

fn encode_bool(flag: bool) -> String {
    (if flag { "b1" } else { "b0" }).to_owned()
}

fn encode_number(float: f64) -> String {
    let bits = float.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    let mut out = String::with_capacity(17);
    let _ = write!(out, "c{ordered:016x}");
    out
}

fn encode_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push('d');
    for (at, part) in text.split('\0').enumerate() {
        if at > 0 {
            out.push_str("\0\u{1}");
        }
        out.push_str(part);
    }
    out.push_str("\0\0");
    out
}

/// The key serde_json (feature `raw_value`) reads as "the value is this
/// JSON text" when it opens an object.
const RAW_VALUE_MARKER: &str = "$serde_json::private::RawValue";

/// The encodings ([`encode`]) of the top-level fields of a document's JSON
/// text at the places `place` gives their names (`None` for a field that
/// is absent, an array or an object), read straight from the text: no
/// value is built, a long body is skipped over, and a string is copied
/// once, into its encoding. A key given twice counts as its last value, as
/// in a parsed document; a text that is not a JSON object has no fields.
fn encoded_fields(
    text: &str,
    count: usize,
    place: &dyn Fn(&str) -> Option<usize>,
) -> SmallVec<[Option<String>; 4]> {
    use serde::de::{
        DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };
    use std::borrow::Cow;

    struct Fields<'p> {
        count: usize,
        place: &'p dyn Fn(&str) -> Option<usize>,
    }

    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = SmallVec<[Option<String>; 4]>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut encoded: Self::Value = smallvec::smallvec![None; self.count];
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match (self.place)(&key) {
                    Some(at) => encoded[at] = map.next_value_seed(Scalar)?,
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(encoded)
        }
    }

    /// One field's value, as its encoding (`None` for arrays and objects).
    struct Scalar;

    impl<'de> DeserializeSeed<'de> for Scalar {
        type Value = Option<String>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Scalar {
        type Value = Option<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a JSON value")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Some(encode_null()))
        }

        fn visit_bool<E>(self, flag: bool) -> Result<Self::Value, E> {
            Ok(Some(encode_bool(flag)))
        }

        // As `serde_json::Number::as_f64` reads each kind of number.
        fn visit_i64<E>(self, number: i64) -> Result<Self::Value, E> {
            Ok(Some(encode_number(number as f64)))
        }

        fn visit_u64<E>(self, number: u64) -> Result<Self::Value, E> {
            Ok(Some(encode_number(number as f64)))
        }

        fn visit_f64<E>(self, number: f64) -> Result<Self::Value, E> {
            Ok(Some(encode_number(number)))
        }

        fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(encode_string(text)))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let Some(first) = map.next_key::<Cow<'de, str>>()? else {
                return Ok(None);
            };
            // serde_json (with its `raw_value` feature, which this crate
            // enables) reads an object whose first key is this marker as
            // the JSON text of its value: a parsed document, which queries
            // match, holds that value there, so the index must too.
            if first == RAW_VALUE_MARKER {
                let text: Cow<'de, str> = map.next_value()?;
                let value: Value = serde_json::from_str(&text).map_err(A::Error::custom)?;
                return Ok(encode(&value).map(|(encoded, _)| encoded));
            }
            map.next_value::<IgnoredAny>()?;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    if !text.starts_with('{') {
        return smallvec::smallvec![None; count];
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // The text was produced by serde_json or checked when it was stored.
    deserializer
        .deserialize_map(Fields { count, place })
        .unwrap_or_else(|_| smallvec::smallvec![None; count])
}

/// The ids under one value of an indexed field, in id order: a sorted
/// vector while there are few (most values of a unique field have one id),
/// an ordered set once there are many (a category shared by a tenth of a
/// million records).
#[derive(Debug)]
enum IdSet {
    Few(Vec<Arc<str>>),
    Many(BTreeSet<Arc<str>>),
    /// While an index is built (see [`FieldIndex::add`]): how many ids
    /// came under the value, for a vector of the right size.
    Counting(usize),
}

/// Ids under one value beyond which an [`IdSet`] is an ordered set.
const FEW_IDS: usize = 32;

impl IdSet {
    fn insert(&mut self, id: Arc<str>) {
        match self {
            IdSet::Few(ids) => {
                if let Err(at) = ids.binary_search(&id) {
                    ids.insert(at, id);
                }
                if ids.len() > FEW_IDS {
                    *self = IdSet::Many(std::mem::take(ids).into_iter().collect());
                }
            }
            IdSet::Many(ids) => {
                ids.insert(id);
            }
            IdSet::Counting(_) => {}
        }
    }

    /// Removes `id`; true when the set is then empty.
    fn remove(&mut self, id: &str) -> bool {
        match self {
            IdSet::Few(ids) => {
                if let Ok(at) = ids.binary_search_by(|probe| (**probe).cmp(id)) {
                    ids.remove(at);
                }
                ids.is_empty()
            }
            IdSet::Many(ids) => {
                ids.remove(id);
                ids.is_empty()
            }
            IdSet::Counting(_) => true,
        }
    }

    fn extend_into(&self, out: &mut Vec<Arc<str>>) {
        match self {
            IdSet::Few(ids) => out.extend(ids.iter().cloned()),
            IdSet::Many(ids) => out.extend(ids.iter().cloned()),
            IdSet::Counting(_) => {}
        }
    }
}

/// Each indexed record's value, to remove it on change: the ids that came
/// in id order (every id as a database opens, and each new id beyond the
/// last while the vector has room, as when an app appends) in a sorted
/// vector, the others in a hash map. A million notes' vector takes 16 MiB in the browser (two pointers
/// an entry), where a hash map of them took 34 MiB, 51 MiB at its last
/// growth, and hashed every id twice while the database opened.
#[derive(Debug, Default)]
struct ValueOf {
    /// Sorted by id; `None` where the record's value was removed (kept, so
    /// that no id moves; dropped once they are half of the vector).
    in_order: Vec<(Arc<str>, Option<Arc<str>>)>,
    /// Ids not in `in_order`: those that came out of order, or beyond the
    /// vector's room.
    others: FxHashMap<Arc<str>, Arc<str>>,
    /// Entries of `in_order` that are `None`.
    removed: usize,
}

impl ValueOf {
    fn position(&self, id: &str) -> Result<usize, usize> {
        self.in_order
            .binary_search_by(|(probe, _)| (**probe).cmp(id))
    }

    fn get(&self, id: &str) -> Option<&Arc<str>> {
        match self.position(id) {
            Ok(at) => self.in_order[at].1.as_ref(),
            Err(_) => self.others.get(id),
        }
    }

    /// Sets `id`'s value, returning the one it had.
    fn insert(&mut self, id: &Arc<str>, value: Arc<str>) -> Option<Arc<str>> {
        match self.position(id) {
            Ok(at) => {
                let previous = self.in_order[at].1.replace(value);
                if previous.is_none() {
                    self.removed -= 1;
                }
                previous
            }
            // Past the last id, while the vector has room (growing it would
            // copy a million entries, and WebAssembly memory never shrinks
            // back), unless the others hold it already.
            Err(at)
                if at == self.in_order.len()
                    && self.in_order.len() < self.in_order.capacity()
                    && !self.others.contains_key(&**id) =>
            {
                self.in_order.push((id.clone(), Some(value)));
                None
            }
            Err(_) => self.others.insert(id.clone(), value),
        }
    }

    fn remove(&mut self, id: &str) -> Option<Arc<str>> {
        let Ok(at) = self.position(id) else {
            return self.others.remove(id);
        };
        let previous = self.in_order[at].1.take();
        if previous.is_some() {
            self.removed += 1;
            if self.removed * 2 > self.in_order.len() {
                self.in_order.retain(|(_, value)| value.is_some());
                self.removed = 0;
            }
        }
        previous
    }

    /// How many records have a value.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_order.len() - self.removed + self.others.len()
    }
}

/// One indexed field: the ids under each encoded value, in value order,
/// and the value each record is under, to remove it on change. Ids are the
/// store's own (`Arc<str>`), and each value is allocated once and shared by
/// every record under it, so an entry costs a few pointers a record: a
/// string per entry holding value and id, in two maps, took about 100 bytes
/// a record (99 MiB of a million notes' 324 in the browser).
#[derive(Debug, Default)]
struct FieldIndex {
    by_value: BTreeMap<Arc<str>, IdSet>,
    value_of: ValueOf,
}

impl FieldIndex {
    fn remove(&mut self, id: &str) {
        if let Some(value) = self.value_of.remove(id) {
            if let Some(ids) = self.by_value.get_mut(&value) {
                if ids.remove(id) {
                    self.by_value.remove(&value);
                }
            }
        }
    }

    /// Files `id` under `value`, and no longer under the value it had.
    fn insert(&mut self, id: &Arc<str>, value: String) {
        let value = match self.by_value.get_key_value(value.as_str()) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(value),
        };
        if let Some(previous) = self.value_of.insert(id, value.clone()) {
            if previous == value {
                return;
            }
            if let Some(ids) = self.by_value.get_mut(&previous) {
                if ids.remove(id) {
                    self.by_value.remove(&previous);
                }
            }
        }
        self.by_value
            .entry(value.clone())
            .or_insert_with(|| IdSet::Few(Vec::new()))
            .insert(id.clone());
    }

    /// Notes `id`'s `value` as indexes are built, where ids may come in
    /// any order and more than once: filed by [`settle`](Self::settle).
    fn add(&mut self, id: &Arc<str>, value: String) {
        let this_value = (
            Bound::Included(value.as_str()),
            Bound::Included(value.as_str()),
        );
        let value = match self.by_value.range_mut::<str, _>(this_value).next() {
            Some((shared, ids)) => {
                if let IdSet::Counting(count) = ids {
                    *count += 1;
                }
                shared.clone()
            }
            None => {
                let value: Arc<str> = Arc::from(value);
                self.by_value.insert(value.clone(), IdSet::Counting(1));
                value
            }
        };
        self.value_of.in_order.push((id.clone(), Some(value)));
    }

    /// Files the ids [`add`](Self::add)ed, keeping one value for an id
    /// added more than once (a record in several rows, indexed again from
    /// all of them once the database has merged them). Sorted by id first,
    /// each value's ids come in order, so each set is built in one pass (an
    /// ordered set's nodes full, where insertions one at a time in order
    /// leave them about half full).
    fn settle(&mut self) {
        let in_order = &mut self.value_of.in_order;
        if !in_order.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            in_order.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            in_order.dedup_by(|again, kept| again.0 == kept.0);
        }
        for ids in self.by_value.values_mut() {
            if let IdSet::Counting(count) = *ids {
                *ids = IdSet::Few(Vec::with_capacity(count));
            }
        }
        for (id, value) in in_order.iter() {
            let filed = value
                .as_ref()
                .and_then(|value| self.by_value.get_mut(value));
            match filed {
                // In id order: each value's ids stay sorted.
                Some(IdSet::Few(ids)) => ids.push(id.clone()),
                Some(ids) => ids.insert(id.clone()),
                None => {}
            }
        }
        for ids in self.by_value.values_mut() {
            if let IdSet::Few(few) = ids {
                if few.len() > FEW_IDS {
                    *ids = IdSet::Many(std::mem::take(few).into_iter().collect());
                } else {
                    few.shrink_to_fit();
                }
            }
        }
        self.by_value.retain(|_, ids| match ids {
            IdSet::Few(ids) => !ids.is_empty(),
            IdSet::Many(ids) => !ids.is_empty(),
            IdSet::Counting(_) => false,
        });
    }

    /// The ids under the encoded values from `low` on (skipping `low`
    /// itself unless `inclusive`) while `within` holds for the value, in
    /// (value, id) order.
    fn ids_from(
        &self,
        (low, inclusive): (String, bool),
        within: &dyn Fn(&str) -> bool,
    ) -> Vec<Arc<str>> {
        let mut ids = Vec::new();
        for (value, under) in self
            .by_value
            .range::<str, _>((Bound::Included(low.as_str()), Bound::Unbounded))
        {
            if !inclusive && **value == *low {
                continue;
            }
            if !within(value) {
                break;
            }
            under.extend_into(&mut ids);
        }
        ids
    }

    fn equal(&self, value: String) -> Vec<Arc<str>> {
        let mut ids = Vec::new();
        if let Some(under) = self.by_value.get(value.as_str()) {
            under.extend_into(&mut ids);
        }
        ids
    }
}

/// Which records a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPlan {
    /// The indexed field whose condition chose the records, or `None` for a
    /// scan of every record under the prefix.
    pub index: Option<String>,
    /// How many records the query reads (candidates, or the records under
    /// the prefix for a scan).
    pub reads: usize,
}

/// The declared indexes of one database.
#[derive(Debug, Default)]
pub(crate) struct FieldIndexes {
    fields: Vec<(String, FieldIndex)>,
}

/// Builds [`FieldIndexes`] from records handed over one at a time (as a
/// database opens, before their documents may leave memory), in any order:
/// storage hands rows over by where they lie, sorted by id within each
/// part. A record handed over twice (in two rows) may stay under both
/// values until [`finish`](Self::finish).
pub struct FieldIndexBuilder {
    indexes: FieldIndexes,
}

impl FieldIndexBuilder {
    /// A builder of indexes on `fields`.
    pub fn new(fields: &[String]) -> Self {
        Self {
            indexes: FieldIndexes {
                fields: fields
                    .iter()
                    .map(|field| (field.clone(), FieldIndex::default()))
                    .collect(),
            },
        }
    }

    /// Makes room for `records` more records in each index at once (see
    /// [`FieldIndexes::build`]).
    pub fn reserve(&mut self, records: usize) {
        for (_, index) in &mut self.indexes.fields {
            // Only when memory allows: a hint, never a reason to fail.
            let _ = index.value_of.in_order.try_reserve(records);
        }
    }

    /// Indexes the winning document of `record`, once per record (a
    /// tombstone adds nothing, nor does a document left in storage).
    pub fn add(&mut self, record: &Record) {
        let fields = &mut self.indexes.fields;
        if fields.is_empty() {
            return;
        }
        let Some(document) = record.data() else {
            return;
        };
        let encoded = encoded_fields(document.as_str(), fields.len(), &|key| {
            fields.iter().position(|(field, _)| field == key)
        });
        for ((_, index), encoded) in fields.iter_mut().zip(encoded) {
            if let Some(encoded) = encoded {
                index.add(record.shared_id(), encoded);
            }
        }
    }

    /// The indexes of every record added.
    pub fn finish(mut self) -> FieldIndexes {
        for (_, index) in &mut self.indexes.fields {
            index.settle();
        }
        self.indexes
    }
}

impl FieldIndexes {
    /// True when no field is indexed.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Checks the declared field names: at most [`MAX_INDEXED_FIELDS`],
    /// non-empty, at most [`MAX_FIELD_NAME`] bytes, no repeats.
    pub fn validate(fields: &[String]) -> Result<(), InputError> {
        let invalid = |message: String| Err(InputError::InvalidArgument(message));
        if fields.len() > MAX_INDEXED_FIELDS {
            return invalid(format!(
                "{} indexes declared; at most {MAX_INDEXED_FIELDS} fields can be indexed",
                fields.len()
            ));
        }
        for (at, field) in fields.iter().enumerate() {
            if field.is_empty() || field.len() > MAX_FIELD_NAME {
                return invalid(format!(
                    "an indexed field name must be 1 to {MAX_FIELD_NAME} bytes, got {} bytes",
                    field.len()
                ));
            }
            if fields[..at].contains(field) {
                return invalid(format!("the field `{field}` is indexed twice"));
            }
        }
        Ok(())
    }

    /// Indexes `fields` over every live record of `store`.
    pub fn build(fields: &[String], store: &CrdtStore) -> Self {
        let mut builder = FieldIndexBuilder::new(fields);
        // Room for every record at once: a vector that doubles as it fills
        // holds both buffers at its last growth, and WebAssembly memory
        // never shrinks back.
        builder.reserve(store.len());
        for record in store.records() {
            builder.add(record);
        }
        builder.finish()
    }

    /// Brings the indexes up to date with changed records.
    pub fn apply(&mut self, changes: &[Change], store: &CrdtStore) {
        if self.fields.is_empty() {
            return;
        }
        for change in changes {
            self.index_record(&change.id, store);
        }
    }

    /// Indexes the record's current winning document (or removes it, when
    /// it is deleted or gone). A winner whose document was left in storage
    /// is the one indexed before (a new winner is in memory when indexed):
    /// its entries stay.
    fn index_record(&mut self, id: &Arc<str>, store: &CrdtStore) {
        self.index_as(id, store.record(id));
    }

    /// Indexes `record` (the state of `id`, `None` when it is gone) as
    /// [`apply`](Self::apply) indexes a changed record.
    pub(crate) fn index_as(&mut self, id: &Arc<str>, record: Option<&Record>) {
        if record.is_some_and(|record| !record.is_deleted() && record.data().is_none()) {
            return;
        }
        let fields = &mut self.fields;
        let encoded = match record.and_then(|record| record.data()) {
            Some(document) => encoded_fields(document.as_str(), fields.len(), &|key| {
                fields.iter().position(|(field, _)| field == key)
            }),
            None => smallvec::smallvec![None; fields.len()],
        };
        for ((_, index), encoded) in fields.iter_mut().zip(encoded) {
            // Most changes leave most indexed fields as they were.
            let current = index.value_of.get(id).map(|value| &**value);
            if current == encoded.as_deref() {
                continue;
            }
            index.remove(id);
            if let Some(encoded) = encoded {
                index.insert(id, encoded);
            }
        }
    }

    /// The candidates of the most selective indexed condition of `query`:
    /// the field and the ids (each once, as a record has one key per field;
    /// not in id order), or `None` when no condition can use an index.
    pub fn plan(&self, query: &Query) -> Option<(String, Vec<Arc<str>>)> {
        let mut best: Option<(&str, Vec<Arc<str>>)> = None;
        for (field, index) in &self.fields {
            let conditions: Vec<&Condition> = query
                .filters
                .iter()
                .filter(|filter| &filter.field == field)
                .map(|filter| &filter.condition)
                .collect();
            let Some(ids) = candidates(index, &conditions) else {
                continue;
            };
            if best.as_ref().is_none_or(|(_, best)| ids.len() < best.len()) {
                best = Some((field, ids));
            }
        }
        let (field, mut ids) = best?;
        ids.retain(|id| id.starts_with(query.prefix.as_str()));
        Some((field.to_owned(), ids))
    }
}

/// Replaces `bound` in `current` when it is tighter (`tighter`: the order
/// a tighter encoded value has to the current one); true when the two are
/// of different types, so the range is empty.
fn tighten(
    current: &mut Option<(String, bool)>,
    bound: (String, bool),
    tighter: std::cmp::Ordering,
) -> bool {
    match current {
        Some((value, _)) if value.as_bytes()[0] != bound.0.as_bytes()[0] => true,
        Some((value, inclusive)) => {
            let order = bound.0.cmp(value);
            if order == tighter || (order.is_eq() && *inclusive && !bound.1) {
                *current = Some(bound);
            }
            false
        }
        None => {
            *current = Some(bound);
            false
        }
    }
}

/// The ids an index can narrow `conditions` (all on its field) to: the
/// smallest of an `=`/`$in` set and the range of the range conditions, or
/// `None` when none of them can use the index.
fn candidates(index: &FieldIndex, conditions: &[&Condition]) -> Option<Vec<Arc<str>>> {
    let mut best: Option<Vec<Arc<str>>> = None;
    let mut keep = |ids: Vec<Arc<str>>| {
        if best.as_ref().is_none_or(|best| ids.len() < best.len()) {
            best = Some(ids);
        }
    };
    // The tightest bounds of the range conditions: (encoded value,
    // inclusive).
    let mut lower: Option<(String, bool)> = None;
    let mut upper: Option<(String, bool)> = None;
    let mut empty_range = false;
    for condition in conditions {
        match condition {
            Condition::Eq(value) => {
                // `=` an array or object cannot use the index.
                if let Some((encoded, _)) = encode(value) {
                    keep(index.equal(encoded));
                }
            }
            Condition::In(values) => {
                let encoded: Option<Vec<(String, bool)>> = values.iter().map(encode).collect();
                if let Some(encoded) = encoded {
                    // Each distinct key once (`1` and `1.0` are one key), so
                    // each id is listed once; an ordered set keeps that
                    // O(k log k) for a long list (the crate's map type, as
                    // for the entries).
                    let mut distinct: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                    for (value, _) in encoded {
                        distinct.insert(value, Vec::new());
                    }
                    let mut ids = Vec::new();
                    for value in distinct.into_keys() {
                        ids.extend(index.equal(value));
                    }
                    keep(ids);
                }
            }
            Condition::Gt(value) | Condition::Gte(value) => {
                let Some((encoded, exact)) = encode(value) else {
                    continue;
                };
                // An inexact bound is always inclusive.
                let bound = (encoded, matches!(condition, Condition::Gte(_)) || !exact);
                empty_range |= tighten(&mut lower, bound, std::cmp::Ordering::Greater);
            }
            Condition::Lt(value) | Condition::Lte(value) => {
                let Some((encoded, exact)) = encode(value) else {
                    continue;
                };
                let bound = (encoded, matches!(condition, Condition::Lte(_)) || !exact);
                empty_range |= tighten(&mut upper, bound, std::cmp::Ordering::Less);
            }
            Condition::Ne(_) | Condition::Exists(_) => {}
        }
    }
    if lower.is_some() || upper.is_some() {
        // A range condition only matches values of its operand's type, so
        // bounds of two types match nothing.
        let ids = match (lower, upper) {
            _ if empty_range => Vec::new(),
            (Some(low), Some(high)) if low.0.as_bytes()[0] != high.0.as_bytes()[0] => Vec::new(),
            (low, high) => {
                let tag = low.as_ref().or(high.as_ref()).expect("one bound").0[..1].to_owned();
                // Without a lower bound: from the type's first value.
                let low = low.unwrap_or_else(|| (tag.clone(), true));
                index.ids_from(low, &|value| {
                    value.starts_with(tag.as_str())
                        && match &high {
                            Some((high, true)) => value <= high.as_str(),
                            Some((high, false)) => value < high.as_str(),
                            None => true,
                        }
                })
            }
        };
        keep(ids);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use std::collections::BTreeSet;

    /// What the index must answer, as plainly as possible: (value, id)
    /// pairs in order.
    fn expected_from(
        model: &BTreeSet<(String, String)>,
        low: &str,
        inclusive: bool,
        within: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        model
            .iter()
            .filter(|(value, _)| value.as_str() > low || (inclusive && value == low))
            .take_while(|(value, _)| within(value))
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Inserts, moves and removals over few values and many ids, so that a
    /// value's ids grow past `FEW_IDS` into an ordered set and shrink
    /// again, checked against a plain ordered set of (value, id) after
    /// every step; then the same contents built in one pass answer alike.
    #[test]
    fn an_index_answers_as_an_ordered_set_of_value_and_id() {
        let values: Vec<String> = ["a", "b\u{1}", "b\u{2}", "dabc\0\0", "dabd\0\0"]
            .into_iter()
            .map(String::from)
            .collect();
        let ids: Vec<Arc<str>> = (0..300).map(|n| Arc::from(format!("id{n:03}"))).collect();
        let mut index = FieldIndex::default();
        // Room for some ids beyond the last, as an index built at open has.
        index.value_of.in_order.reserve_exact(60);
        let room = index.value_of.in_order.capacity();
        let mut model: BTreeSet<(String, String)> = BTreeSet::new();
        let mut current: BTreeMap<Arc<str>, String> = BTreeMap::new();
        let mut random = Random(0x2545_F491_4F6C_DD1D);
        let mut largest = 0;
        for step in 0..6_000 {
            // Ids in order first (as a database opens), every other one
            // skipped, then at random: before, between and after them.
            let id = if step < 100 {
                &ids[step * 2]
            } else {
                &ids[random.below(ids.len() as u64) as usize]
            };
            // Removals more often late, so the sets shrink back.
            let remove = random.below(10) < if step < 3_000 { 2 } else { 6 };
            if let Some(old) = current.remove(id) {
                model.remove(&(old, id.to_string()));
            }
            // A move is a removal and an insertion, or an insertion alone
            // (as when a record comes again while a database opens).
            if remove || random.below(2) == 0 {
                index.remove(id);
            }
            if !remove {
                let value = values[random.below(values.len() as u64) as usize].clone();
                model.insert((value.clone(), id.to_string()));
                current.insert(id.clone(), value.clone());
                index.insert(id, value);
            }
            for value in &values {
                let found: Vec<String> = index
                    .equal(value.clone())
                    .iter()
                    .map(|id| id.to_string())
                    .collect();
                let wanted = expected_from(&model, value, true, &|v| v == value);
                assert_eq!(found, wanted, "step {step}: ids under {value:?}");
                largest = largest.max(found.len());
            }
            let low = &values[random.below(values.len() as u64) as usize];
            let inclusive = random.below(2) == 0;
            let found: Vec<String> = index
                .ids_from((low.clone(), inclusive), &|v| v.starts_with('b') || v < "c")
                .iter()
                .map(|id| id.to_string())
                .collect();
            let wanted = expected_from(&model, low, inclusive, &|v| v.starts_with('b') || v < "c");
            assert_eq!(found, wanted, "step {step}: range from {low:?}");
            assert_eq!(index.value_of.len(), current.len(), "step {step}");
            for id in &ids {
                let value = index.value_of.get(id).map(|value| value.to_string());
                assert_eq!(
                    value.as_ref(),
                    current.get(id),
                    "step {step}: value of {id}"
                );
            }
            let in_order = &index.value_of.in_order;
            assert!(
                in_order.windows(2).all(|pair| pair[0].0 < pair[1].0)
                    && index.value_of.others.keys().all(|id| {
                        in_order
                            .binary_search_by(|(probe, _)| probe.cmp(id))
                            .is_err()
                    }),
                "step {step}: ids out of order or kept twice"
            );
            let empty = index.by_value.values().any(|ids| match ids {
                IdSet::Few(ids) => ids.is_empty(),
                IdSet::Many(ids) => ids.is_empty(),
                IdSet::Counting(_) => true,
            });
            assert!(!empty, "step {step}: a value with no ids is kept");
        }
        assert!(largest > FEW_IDS, "no value held more than {FEW_IDS} ids");
        assert_eq!(index.value_of.in_order.capacity(), room, "the vector grew");
    }

    /// Ids handed over out of order and some more than once (as storage
    /// hands rows over while a database opens) settle into one value each,
    /// filed under that value only; changes after that keep it so.
    #[test]
    fn an_index_built_from_ids_in_any_order_files_each_once() {
        let values: Vec<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
        let ids: Vec<Arc<str>> = (0..200).map(|n| Arc::from(format!("id{n:03}"))).collect();
        let mut random = Random(0x9E37_79B9_7F4A_7C15);
        let mut index = FieldIndex::default();
        let mut added: BTreeMap<Arc<str>, BTreeSet<String>> = BTreeMap::new();
        // Runs of ascending ids from scattered starts, as parts are.
        for _ in 0..40 {
            let start = random.below(ids.len() as u64) as usize;
            for id in ids.iter().skip(start).take(1 + random.below(12) as usize) {
                let value = values[random.below(3) as usize].clone();
                added.entry(id.clone()).or_default().insert(value.clone());
                index.add(id, value);
            }
        }
        index.settle();
        assert!(
            added.values().any(|values| values.len() > 1),
            "no id came twice"
        );
        let filed_under = |index: &FieldIndex, id: &str| -> Vec<String> {
            values
                .iter()
                .filter(|value| {
                    index
                        .equal((*value).clone())
                        .iter()
                        .any(|found| &**found == id)
                })
                .cloned()
                .collect()
        };
        for id in &ids {
            let value = index.value_of.get(id).map(|value| value.to_string());
            match added.get(id) {
                Some(candidates) => {
                    let value = value.expect("an added id has a value");
                    assert!(candidates.contains(&value), "{id}: {value} was never added");
                    assert_eq!(filed_under(&index, id), vec![value], "{id}");
                }
                None => {
                    assert_eq!(value, None, "{id}");
                    assert!(filed_under(&index, id).is_empty(), "{id}");
                }
            }
        }
        assert_eq!(index.value_of.len(), added.len());
        // Moves and removals after settling find each id's one value.
        for (at, id) in added.keys().enumerate() {
            if at % 2 == 0 {
                index.remove(id);
                assert!(filed_under(&index, id).is_empty(), "{id} removed");
            } else {
                index.insert(id, "c".to_owned());
                assert_eq!(filed_under(&index, id), vec!["c".to_owned()], "{id} moved");
            }
        }
    }

    /// The encodings read straight from a document's text are those of the
    /// fields queries parse (and compare with encoded operands), for
    /// every kind of value, repeated keys, escapes, nesting, texts that are
    /// not objects and texts that are not JSON.
    #[test]
    fn fields_read_from_the_text_encode_as_the_parsed_values_do() {
        let values = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "7",
            "-7",
            "18446744073709551615",
            "-9223372036854775808",
            "9007199254740993",
            "1.5",
            "-2.5e-3",
            "1e300",
            "\"\"",
            "\"plain\"",
            "\"tab\\there\"",
            "\"nul\\u0000in\"",
            "\"é\\u00e9\"",
            "[]",
            "[1,{\"a\":2}]",
            "{}",
            "{\"a\":{\"b\":[3]}}",
            "{\"$serde_json::private::RawValue\":\"5\"}",
            "{\"$serde_json::private::RawValue\":\"\\\"text\\\"\"}",
            "{\"$serde_json::private::RawValue\":\"[1\"}",
            "{\"$serde_json::private::RawValue\":\"5\",\"b\":1}",
            "{\"b\":1,\"$serde_json::private::RawValue\":\"5\"}",
        ];
        let keys = ["a", "b", "c", "\\u0061", "z"];
        let fields = ["a", "b", "z"];
        let mut random = Random(0x2545_F491_4F6C_DD1D);
        let mut texts: Vec<String> = vec![
            "[1,2]".into(),
            "\"a\"".into(),
            "7".into(),
            "null".into(),
            "{".into(),
            "{\"a\":1,".into(),
            "{\"a\":}".into(),
            " {\"a\":1}".into(),
            "{}".into(),
        ];
        for _ in 0..2_000 {
            let entries = random.below(5);
            let body: Vec<String> = (0..entries)
                .map(|_| {
                    let key = keys[random.below(keys.len() as u64) as usize];
                    let value = values[random.below(values.len() as u64) as usize];
                    format!("\"{key}\": {value}")
                })
                .collect();
            texts.push(format!("{{{}}}", body.join(", ")));
        }
        for text in &texts {
            let found = encoded_fields(text, fields.len(), &|key| {
                fields.iter().position(|field| *field == key)
            });
            // What queries match a document with: its wanted fields parsed
            // as values, the others skipped.
            let parsed = crate::query::top_level_fields(text, &|key| fields.contains(&key));
            let wanted: Vec<Option<String>> = fields
                .iter()
                .map(|field| encode(parsed.get(*field)?).map(|(encoded, _)| encoded))
                .collect();
            assert_eq!(found.to_vec(), wanted, "{text}");
        }
    }
}
