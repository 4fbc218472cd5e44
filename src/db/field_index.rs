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
//! An entry is one string, the value's order-preserving encoding followed
//! by the record id (see [`encode`]), in an ordered map of strings: the same
//! map type the rest of the crate uses, so the index adds no B-tree code of
//! its own to the browser build (a map keyed by a value type of its own
//! added about 4 KB to the gzipped `.wasm`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::Value;

use crate::crdt::{Change, CrdtStore, Record};
use crate::error::InputError;
use crate::query::{top_level_fields, Condition, Query};

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
    let mut out = String::new();
    let exact = match value {
        Value::Null => {
            out.push('a');
            true
        }
        Value::Bool(flag) => {
            out.push_str(if *flag { "b1" } else { "b0" });
            true
        }
        Value::Number(number) => {
            let float = number.as_f64()?;
            let bits = float.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | 1 << 63
            };
            let _ = write!(out, "c{ordered:016x}");
            match number.as_i64() {
                Some(integer) => float.abs() < 9_007_199_254_740_992.0 && float as i64 == integer,
                None => number.is_f64(),
            }
        }
        Value::String(text) => {
            out.reserve(text.len() + 3);
            out.push('d');
            for (at, part) in text.split('\0').enumerate() {
                if at > 0 {
                    out.push_str("\0\u{1}");
                }
                out.push_str(part);
            }
            out.push_str("\0\0");
            true
        }
        Value::Array(_) | Value::Object(_) => return None,
    };
    Some((out, exact))
}

/// The length of the encoded value at the start of an entry (the rest is
/// the record id).
fn encoded_length(entry: &str) -> usize {
    let bytes = entry.as_bytes();
    match bytes.first() {
        Some(b'a') => 1,
        Some(b'b') => 2,
        Some(b'c') => 17,
        _ => {
            let mut at = 1;
            while at + 1 < bytes.len() {
                if bytes[at] == 0 {
                    if bytes[at + 1] == 0 {
                        return at + 2;
                    }
                    at += 2;
                } else {
                    at += 1;
                }
            }
            bytes.len()
        }
    }
}

/// One indexed field: entries `encoded value ++ id` in order, and the
/// encoded value each record is under, to remove it on change (values
/// unused: the map type is shared, see the module docs).
#[derive(Debug, Default)]
struct FieldIndex {
    entries: BTreeMap<String, Vec<u8>>,
    value_of: BTreeMap<String, Vec<u8>>,
}

impl FieldIndex {
    fn remove(&mut self, id: &str) {
        if let Some(value) = self.value_of.remove(id) {
            let mut entry = String::from_utf8(value).unwrap_or_default();
            entry.push_str(id);
            self.entries.remove(&entry);
        }
    }

    fn insert(&mut self, id: &str, value: String) {
        let mut entry = value.clone();
        entry.push_str(id);
        self.entries.insert(entry, Vec::new());
        self.value_of.insert(id.to_owned(), value.into_bytes());
    }

    /// The ids of the entries from the encoded value `low` on (skipping
    /// `low` itself unless `inclusive`) while `within` holds for the
    /// encoded value.
    fn ids_from(
        &self,
        (low, inclusive): (String, bool),
        within: &dyn Fn(&str) -> bool,
    ) -> Vec<Arc<str>> {
        let mut ids = Vec::new();
        for entry in self
            .entries
            .range::<String, _>((Bound::Included(&low), Bound::Unbounded))
        {
            let (value, id) = entry.0.split_at(encoded_length(entry.0));
            if !inclusive && value == low {
                continue;
            }
            if !within(value) {
                break;
            }
            ids.push(Arc::from(id));
        }
        ids
    }

    fn equal(&self, value: String) -> Vec<Arc<str>> {
        let wanted = value.clone();
        self.ids_from((value, true), &|found| found == wanted)
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
/// database opens, before their documents may leave memory). The entries
/// are gathered first and each map built in one bulk pass: inserting them
/// one by one took about three seconds at a million records.
pub struct FieldIndexBuilder {
    fields: Vec<String>,
    /// Per field: its entries, and the value each record is under.
    gathered: Vec<(GatheredRows, GatheredRows)>,
}

type GatheredRows = Vec<(String, Vec<u8>)>;

impl FieldIndexBuilder {
    /// A builder of indexes on `fields`.
    pub fn new(fields: &[String]) -> Self {
        Self {
            fields: fields.to_vec(),
            gathered: fields.iter().map(|_| Default::default()).collect(),
        }
    }

    /// Indexes the winning document of `record`, once per record (a
    /// tombstone adds nothing, nor does a document left in storage).
    pub fn add(&mut self, record: &Record) {
        if self.fields.is_empty() {
            return;
        }
        let Some(document) = record.data() else {
            return;
        };
        let fields = &self.fields;
        let value = top_level_fields(document.as_str(), &|key| {
            fields.iter().any(|field| field == key)
        });
        for (field, (entries, value_of)) in fields.iter().zip(&mut self.gathered) {
            let Some((encoded, _)) = value.get(field.as_str()).and_then(encode) else {
                continue;
            };
            entries.push((encoded.clone() + record.id(), Vec::new()));
            value_of.push((record.id().to_owned(), encoded.into_bytes()));
        }
    }

    /// The indexes of every record added.
    pub fn finish(self) -> FieldIndexes {
        FieldIndexes {
            fields: self
                .fields
                .into_iter()
                .zip(self.gathered)
                .map(|(field, (entries, value_of))| {
                    let index = FieldIndex {
                        entries: entries.into_iter().collect(),
                        value_of: value_of.into_iter().collect(),
                    };
                    (field, index)
                })
                .collect(),
        }
    }
}

impl FieldIndexes {
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
        let record = store.record(id);
        if record.is_some_and(|record| !record.is_deleted() && record.data().is_none()) {
            return;
        }
        let value = record.and_then(|record| record.data()).map(|document| {
            top_level_fields(document.as_str(), &|key| {
                self.fields.iter().any(|(field, _)| field == key)
            })
        });
        for (field, index) in &mut self.fields {
            let encoded = value
                .as_ref()
                .and_then(|value| value.as_object())
                .and_then(|object| object.get(field.as_str()))
                .and_then(encode)
                .map(|(encoded, _)| encoded);
            // Most changes leave most indexed fields as they were.
            let current = index.value_of.get(&**id).map(Vec::as_slice);
            if current == encoded.as_ref().map(|encoded| encoded.as_bytes()) {
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
