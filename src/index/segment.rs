//! Sealed segments: HNSW graphs (`pluresdb-hnsw`) over byte-quantised
//! copies of the vectors, with an id table and tombstones for vectors
//! deleted or replaced after sealing.
//!
//! The exact `f32` vectors are not part of a segment's bytes: a segment
//! holds them shared with the records they came from (a record's embedding
//! is one allocation for both), and a search re-scores the graph's
//! candidates with them, so scores are exact. A decoded segment gets its
//! vectors back from the records when the index reconciles
//! ([`Segment::attach`]); a slot whose record changed stays a tombstone.
//!
//! A segment can also be *extended*: a merge clones the largest segment's
//! graph and inserts only the others' vectors into it, instead of
//! rebuilding every vector from scratch.
//!
//! Encoding (version 3, little-endian):
//!
//! ```text
//! u8   version = 3
//! u32  count, then count x (u32 id length, id bytes, [16] actor, u64 seq)
//! u32  graph length, graph bytes (pluresdb-hnsw's encoding)
//! ```
//!
//! A segment that fails to decode (say, one written in version 2 with
//! `instant-distance` graphs) is dropped and its vectors are indexed again
//! from the records, so the index never disagrees with the data.

use std::sync::Arc;

use pluresdb_hnsw::{Hnsw, Params, Quantized, Scored, Scratch};

use super::distance::{cosine_distance, UnitVector};
use super::IndexError;
use crate::codec::{Reader, Writer};
use crate::crdt::{ActorId, Dot};
use crate::error::DecodeError;

/// Version byte of the segment encoding.
pub const SEGMENT_ENCODING_VERSION: u8 = 3;

/// One entry of a segment: which record version a vector came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    /// The record id.
    pub id: Arc<str>,
    /// The version whose embedding this is.
    pub dot: Dot,
}

/// An HNSW segment: immutable but for tombstones.
#[derive(Clone)]
pub struct Segment {
    /// Storage key.
    pub(crate) key: String,
    entries: Vec<SegmentEntry>,
    /// The exact vectors, by slot; `None` for tombstones.
    vectors: Vec<Option<UnitVector>>,
    graph: Hnsw,
    live: usize,
    scratch: Scratch,
    found: Vec<Scored>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("key", &self.key)
            .field("len", &self.entries.len())
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Segment {
    /// Builds a segment from vectors (the expensive part: HNSW construction).
    pub fn build(
        key: String,
        dimension: usize,
        items: Vec<(SegmentEntry, UnitVector)>,
        params: Params,
    ) -> Self {
        let empty = Self {
            key: String::new(),
            entries: Vec::new(),
            vectors: Vec::new(),
            graph: Hnsw::new(dimension, params),
            live: 0,
            scratch: Scratch::default(),
            found: Vec::new(),
        };
        empty.extend(key, items)
    }

    /// A new segment holding this one's slots (tombstones included, at the
    /// same slot numbers) followed by `items`, which are inserted into a
    /// copy of this graph.
    pub fn extend(mut self, key: String, items: Vec<(SegmentEntry, UnitVector)>) -> Self {
        self.key = key;
        self.graph.reserve(items.len());
        self.entries.reserve(items.len());
        self.vectors.reserve(items.len());
        for (entry, vector) in items {
            self.graph.insert(vector.as_slice());
            self.entries.push(entry);
            self.vectors.push(Some(vector));
            self.live += 1;
        }
        self
    }

    /// Number of vectors (deleted included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a segment without vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Vectors not deleted.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.graph.dimension()
    }

    /// The entry in `slot`.
    pub fn entry(&self, slot: u32) -> &SegmentEntry {
        &self.entries[slot as usize]
    }

    /// Live `(entry, vector)` pairs, for merging segments.
    pub fn live_items(&self) -> Vec<(SegmentEntry, UnitVector)> {
        self.entries
            .iter()
            .zip(&self.vectors)
            .filter_map(|(entry, vector)| Some((entry.clone(), vector.clone()?)))
            .collect()
    }

    /// Marks `slot` deleted (and lets go of its vector); returns whether it
    /// was live.
    pub fn delete(&mut self, slot: u32) -> bool {
        if self.vectors[slot as usize].take().is_none() {
            return false;
        }
        self.live -= 1;
        true
    }

    /// Gives a decoded segment's `slot` its exact vector back (making it
    /// live); the vector must be the one the slot was built from.
    pub fn attach(&mut self, slot: u32, vector: UnitVector) {
        let place = &mut self.vectors[slot as usize];
        if place.is_none() {
            self.live += 1;
        }
        *place = Some(vector);
    }

    /// True when `slot` is deleted.
    pub fn is_deleted(&self, slot: u32) -> bool {
        self.vectors[slot as usize].is_none()
    }

    /// Bytes of memory the segment holds besides the shared vectors.
    pub fn heap_bytes(&self) -> usize {
        self.graph.heap_bytes()
            + self.entries.capacity() * std::mem::size_of::<SegmentEntry>()
            + self.entries.iter().map(|e| e.id.len() + 16).sum::<usize>()
            + self.vectors.capacity() * std::mem::size_of::<Option<UnitVector>>()
    }

    /// Appends the `ef` nearest live neighbours of `query` the graph finds
    /// to `out` as `(distance, slot)`, with exact distances. `quantized` is
    /// `query` quantised (once per search, for every segment).
    pub fn search(
        &mut self,
        query: &UnitVector,
        quantized: &Quantized,
        ef: usize,
        out: &mut Vec<(f32, u32)>,
    ) {
        if self.live == 0 {
            return;
        }
        self.found.clear();
        let vectors = &self.vectors;
        self.graph.search(
            quantized,
            ef.max(1),
            |slot| vectors[slot as usize].is_some(),
            &mut self.scratch,
            &mut self.found,
        );
        for scored in &self.found {
            if let Some(exact) = &self.vectors[scored.node as usize] {
                out.push((
                    cosine_distance(query.as_slice(), exact.as_slice()),
                    scored.node,
                ));
            }
        }
    }

    /// The segment's encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let ids: usize = self.entries.iter().map(|e| e.id.len()).sum();
        let graph_len = self.graph.encoded_len();
        // One buffer of the exact size: a segment can be tens of megabytes,
        // and WebAssembly memory never shrinks after a peak.
        let mut writer =
            Writer::with_capacity(9 + self.entries.len() * (4 + 16 + 8) + ids + 4 + graph_len);
        writer
            .u8(SEGMENT_ENCODING_VERSION)
            .u32(crate::codec::len_u32(self.entries.len()));
        for entry in &self.entries {
            writer.str(&entry.id);
            writer.raw(entry.dot.actor.as_bytes()).u64(entry.dot.seq);
        }
        writer.u32(crate::codec::len_u32(graph_len));
        let mut bytes = writer.finish();
        self.graph.encode(&mut bytes);
        bytes
    }

    /// Decodes a segment stored under `key`. Every slot starts as a
    /// tombstone until [`attach`](Self::attach) gives it its vector.
    pub fn decode(key: String, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != SEGMENT_ENCODING_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "index segment",
                found: version,
                supported: SEGMENT_ENCODING_VERSION,
            });
        }
        let count = reader.count(4 + 16 + 8)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let id: Arc<str> = reader.str()?.into();
            let actor = ActorId::from_bytes(reader.array()?);
            let seq = reader.u64()?;
            entries.push(SegmentEntry {
                id,
                dot: Dot { actor, seq },
            });
        }
        // Not `blob()`: a graph may be larger than the codec's blob limit;
        // its length must only match what is left.
        let graph_len = reader.u32()? as usize;
        let graph_bytes = reader.take(graph_len)?;
        reader.finish()?;
        let (graph, read) = Hnsw::decode(graph_bytes)
            .map_err(|e| DecodeError::Invalid(format!("index graph: {e}")))?;
        if read != graph_bytes.len() {
            return Err(DecodeError::TrailingBytes {
                count: graph_bytes.len() - read,
            });
        }
        if graph.len() != count {
            return Err(DecodeError::Invalid(
                "index graph does not match its entry table".into(),
            ));
        }
        Ok(Self {
            key,
            vectors: vec![None; count],
            entries,
            graph,
            live: 0,
            scratch: Scratch::default(),
            found: Vec::new(),
        })
    }
}

/// Checks a decoded segment against an index's dimension.
pub fn check_dimension(segment: &Segment, dimension: usize) -> Result<(), IndexError> {
    if segment.dimension() != dimension {
        return Err(IndexError::DimensionMismatch {
            expected: dimension,
            found: segment.dimension(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::distance::tests::unit;

    fn items(n: usize, dim: usize) -> Vec<(SegmentEntry, UnitVector)> {
        (0..n)
            .map(|i| {
                (
                    SegmentEntry {
                        id: format!("v{i}").into(),
                        dot: Dot {
                            actor: ActorId::from_bytes([1; 16]),
                            seq: i as u64 + 1,
                        },
                    },
                    unit(i as u64 + 1, dim),
                )
            })
            .collect()
    }

    fn params() -> Params {
        Params {
            ef_construction: 64,
            ..Params::default()
        }
    }

    fn search(segment: &mut Segment, query: &UnitVector, ef: usize) -> Vec<(f32, u32)> {
        let mut out = Vec::new();
        segment.search(query, &Quantized::new(query.as_slice()), ef, &mut out);
        out
    }

    /// Decodes `bytes` and attaches every vector of `items` again.
    fn reattached(bytes: &[u8], items: &[(SegmentEntry, UnitVector)]) -> Segment {
        let mut decoded = Segment::decode("s".into(), bytes).unwrap();
        assert_eq!(decoded.live(), 0, "tombstones until attached");
        for (slot, (_, vector)) in items.iter().enumerate() {
            decoded.attach(slot as u32, vector.clone());
        }
        decoded
    }

    #[test]
    fn segments_round_trip_and_search_the_same() {
        let all = items(300, 16);
        let mut segment = Segment::build("s".into(), 16, all.clone(), params());
        let query = items(301, 16).pop().unwrap().1;
        let before = search(&mut segment, &query, 16);
        let bytes = segment.encode();
        let mut decoded = reattached(&bytes, &all);
        assert_eq!(search(&mut decoded, &query, 16), before);
        assert_eq!(decoded.encode(), bytes);
        for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(Segment::decode("s".into(), &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn an_older_encoding_or_a_corrupt_graph_fails_to_decode() {
        let segment = Segment::build("s".into(), 16, items(50, 16), params());
        let bytes = segment.encode();
        let mut version_2 = bytes.clone();
        version_2[0] = 2;
        assert!(matches!(
            Segment::decode("s".into(), &version_2),
            Err(DecodeError::UnsupportedVersion { found: 2, .. })
        ));
        let mut wrong_count = bytes.clone();
        wrong_count[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Segment::decode("s".into(), &wrong_count).is_err());
        let mut corrupt_graph = bytes.clone();
        let last = corrupt_graph.len() - 1;
        corrupt_graph[last] ^= 0xFF;
        // The last word is an upper-layer link or a layer-0 one.
        assert!(Segment::decode("s".into(), &corrupt_graph).is_err());
    }

    #[test]
    fn search_scores_are_exact() {
        let mut segment = Segment::build("s".into(), 16, items(200, 16), params());
        let query = items(201, 16).pop().unwrap().1;
        let hits = search(&mut segment, &query, 16);
        assert_eq!(hits.len(), 16);
        for (distance, slot) in hits {
            let exact = cosine_distance(
                query.as_slice(),
                segment.vectors[slot as usize].as_ref().unwrap().as_slice(),
            );
            assert_eq!(distance, exact);
        }
    }

    #[test]
    fn the_breadth_is_per_search_below_and_above_the_default() {
        let mut segment = Segment::build("s".into(), 8, items(500, 8), params());
        let query = items(501, 8).pop().unwrap().1;
        for ef in [1, 4, 10, 50, 200] {
            assert_eq!(search(&mut segment, &query, ef).len(), ef, "ef {ef}");
        }
    }

    #[test]
    fn deleted_slots_are_never_returned_and_extending_keeps_slots() {
        let all = items(150, 8);
        let mut segment = Segment::build("s".into(), 8, all[..100].to_vec(), params());
        let query = items(101, 8).pop().unwrap().1;
        let hits = search(&mut segment, &query, 16);
        let first = hits[0].1;
        assert!(segment.delete(first));
        assert!(!segment.delete(first));
        assert!(search(&mut segment, &query, 16)
            .iter()
            .all(|(_, slot)| *slot != first));
        assert_eq!(segment.live(), 99);
        let mut extended = segment.extend("t".into(), all[100..].to_vec());
        assert_eq!((extended.len(), extended.live()), (150, 149));
        assert!(extended.is_deleted(first));
        assert_eq!(extended.entry(120).id, all[120].0.id);
        let hits = search(&mut extended, &all[120].1, 4);
        assert_eq!(hits[0].1, 120);
    }

    #[test]
    fn mutated_segments_are_refused_or_searched_safely() {
        let segment = Segment::build("s".into(), 8, items(120, 8), params());
        let bytes = segment.encode();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut mutated = bytes.clone();
            let at = (state % mutated.len() as u64) as usize;
            mutated[at] ^= (state >> 32) as u8 | 1;
            if round % 10 == 0 {
                mutated.truncate(at);
            }
            // Panics on a decoder that accepts bytes it cannot re-encode, or
            // a graph whose search leaves its bounds.
            crate::fuzzing::check_decoders(&mutated);
        }
    }
}
