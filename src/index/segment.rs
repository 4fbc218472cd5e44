//! Sealed segments: immutable HNSW graphs built with `instant-distance`,
//! with tombstones for vectors deleted or replaced after sealing.
//!
//! `instant-distance` fixes a graph's search breadth (`ef_search`) when it
//! is built. A search that needs more (a larger `k`, or an explicit `ef`)
//! uses a *variant*: the same graph with another `ef_search`, made by
//! re-reading the segment's encoding with that one field changed, and
//! cached (at most [`MAX_VARIANTS`] per segment).
//!
//! The graph is built over byte-quantised copies of the vectors
//! ([`QuantizedVector`]); the exact `f32` vectors are kept beside it, and a
//! search re-scores the graph's candidates with them, so scores are exact.
//!
//! Encoding (version 2, fixed-width little-endian):
//!
//! ```text
//! u8   version = 2
//! u32  dimension
//! u32  ef_construction, u32 ef_search (as built)
//! u32  count, then count x (u32 id length, id bytes, [16] actor, u64 seq)
//! count x dimension f32: the unit vectors, by slot
//! u32  graph length, graph bytes
//! ```
//!
//! The graph bytes are `instant-distance` 0.6's
//! `HnswMap<QuantizedVector, u32>` (values: slot numbers into the id table)
//! serialised with serde by `bincode` 2 in fixed-width little-endian mode;
//! its first 8 bytes are the graph's `ef_search`. A segment that fails to
//! decode (say, one written in version 1, with `f32` graph points, or after
//! an upgrade of `instant-distance`) is dropped and its vectors are indexed
//! again from the records, so the index never disagrees with the data.

use std::sync::Arc;

use instant_distance::{Builder, Heuristic, HnswMap, Search};

use super::distance::{cosine_distance, QuantizedVector, UnitVector};
use super::IndexError;
use crate::codec::{Reader, Writer};
use crate::crdt::{ActorId, Dot};
use crate::error::DecodeError;

/// Version byte of the segment encoding.
pub const SEGMENT_ENCODING_VERSION: u8 = 2;
/// Most `ef_search` variants kept per segment.
pub const MAX_VARIANTS: usize = 3;

/// How graphs (and the quantised points inside them) are serialised.
pub(super) fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
}

/// One entry of a segment: which record version a vector came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    /// The record id.
    pub id: Arc<str>,
    /// The version whose embedding this is.
    pub dot: Dot,
}

/// An immutable HNSW segment.
pub struct Segment {
    /// Storage key.
    pub(crate) key: String,
    dimension: usize,
    ef_construction: usize,
    ef_search: usize,
    entries: Vec<SegmentEntry>,
    /// The exact vectors, by slot.
    vectors: Vec<UnitVector>,
    graph: HnswMap<QuantizedVector, u32>,
    /// Slots deleted or superseded since sealing.
    deleted: Vec<bool>,
    live: usize,
    variants: Vec<(usize, HnswMap<QuantizedVector, u32>)>,
    search: Search,
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
        ef_construction: usize,
        ef_search: usize,
        heuristic: bool,
    ) -> Self {
        let (entries, vectors): (Vec<SegmentEntry>, Vec<UnitVector>) = items.into_iter().unzip();
        let mut points = Vec::with_capacity(vectors.len());
        for vector in &vectors {
            points.push(QuantizedVector::new(vector));
        }
        let slots: Vec<u32> = (0..entries.len() as u32).collect();
        let graph = Builder::default()
            .ef_construction(ef_construction)
            .ef_search(ef_search)
            .seed(0x5EED_1DE5)
            .select_heuristic(heuristic.then(Heuristic::default))
            .build(points, slots);
        let live = entries.len();
        Self {
            key,
            dimension,
            ef_construction,
            ef_search,
            deleted: vec![false; entries.len()],
            entries,
            vectors,
            graph,
            live,
            variants: Vec::new(),
            search: Search::default(),
        }
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

    /// The entry in `slot`.
    pub fn entry(&self, slot: u32) -> &SegmentEntry {
        &self.entries[slot as usize]
    }

    /// Every `(slot, entry)`.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &SegmentEntry)> {
        self.entries.iter().enumerate().map(|(i, e)| (i as u32, e))
    }

    /// Live `(entry, vector)` pairs, for merging segments.
    pub fn live_items(&self) -> Vec<(SegmentEntry, UnitVector)> {
        self.entries
            .iter()
            .zip(&self.vectors)
            .zip(&self.deleted)
            .filter(|(_, deleted)| !**deleted)
            .map(|((entry, vector), _)| (entry.clone(), vector.clone()))
            .collect()
    }

    /// Marks `slot` deleted; returns whether it was live.
    pub fn delete(&mut self, slot: u32) -> bool {
        let deleted = &mut self.deleted[slot as usize];
        if *deleted {
            return false;
        }
        *deleted = true;
        self.live -= 1;
        true
    }

    /// True when `slot` is deleted.
    pub fn is_deleted(&self, slot: u32) -> bool {
        self.deleted[slot as usize]
    }

    /// Appends the nearest live neighbours of `query` (up to `ef` of them)
    /// to `out` as `(distance, slot)`, with exact distances. `quantized` is
    /// `query` quantised (once per search, for every segment).
    pub fn search(
        &mut self,
        query: &UnitVector,
        quantized: &QuantizedVector,
        ef: usize,
        out: &mut Vec<(f32, u32)>,
    ) {
        if self.live == 0 {
            return;
        }
        let ef = ef.max(1);
        let graph = if ef <= self.ef_search {
            &self.graph
        } else {
            let wanted = ef.next_power_of_two().min(self.len().max(ef));
            if !self.variants.iter().any(|(e, _)| *e == wanted) {
                let variant = self.variant(wanted);
                if self.variants.len() >= MAX_VARIANTS {
                    self.variants.remove(0);
                }
                self.variants.push((wanted, variant));
            }
            &self
                .variants
                .iter()
                .find(|(e, _)| *e == wanted)
                .expect("just added")
                .1
        };
        for item in graph.search(quantized, &mut self.search) {
            let slot = *item.value;
            if !self.deleted[slot as usize] {
                let exact = self.vectors[slot as usize].as_slice();
                out.push((cosine_distance(query.as_slice(), exact), slot));
            }
        }
    }

    fn variant(&self, ef_search: usize) -> HnswMap<QuantizedVector, u32> {
        let mut bytes = bincode::serde::encode_to_vec(&self.graph, bincode_config())
            .expect("an in-memory graph always serialises");
        bytes[..8].copy_from_slice(&(ef_search as u64).to_le_bytes());
        bincode::serde::decode_from_slice(&bytes, bincode_config())
            .expect("a graph just serialised decodes")
            .0
    }

    /// The segment's encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let graph = bincode::serde::encode_to_vec(&self.graph, bincode_config())
            .expect("an in-memory graph always serialises");
        let mut writer = Writer::with_capacity(
            32 + graph.len() + self.entries.len() * (40 + 4 * self.dimension),
        );
        writer
            .u8(SEGMENT_ENCODING_VERSION)
            .u32(crate::codec::len_u32(self.dimension))
            .u32(crate::codec::len_u32(self.ef_construction))
            .u32(crate::codec::len_u32(self.ef_search))
            .u32(crate::codec::len_u32(self.entries.len()));
        for entry in &self.entries {
            writer.str(&entry.id);
            writer.raw(entry.dot.actor.as_bytes()).u64(entry.dot.seq);
        }
        for vector in &self.vectors {
            for value in vector.as_slice() {
                writer.f32(*value);
            }
        }
        writer.blob(&graph);
        writer.finish()
    }

    /// Decodes a segment stored under `key`.
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
        let dimension = reader.u32()? as usize;
        let ef_construction = reader.u32()? as usize;
        let ef_search = reader.u32()? as usize;
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
        // Checked before allocating, so a corrupt dimension cannot ask for a
        // huge buffer.
        let vectors_fit = count
            .checked_mul(dimension)
            .and_then(|values| values.checked_mul(4))
            .is_some_and(|len| len <= reader.remaining());
        if !vectors_fit {
            return Err(DecodeError::Invalid(
                "index segment is shorter than its vectors".into(),
            ));
        }
        let mut vectors = Vec::with_capacity(count);
        for _ in 0..count {
            let mut values = Vec::with_capacity(dimension);
            let mut norm = 0.0f32;
            for _ in 0..dimension {
                let value = reader.f32()?;
                norm += value * value;
                values.push(value);
            }
            // False for NaN and infinite components too.
            let unit_length = (norm - 1.0).abs() < 1e-3;
            if !unit_length {
                return Err(DecodeError::Invalid(
                    "index segment holds a vector that is not unit length".into(),
                ));
            }
            vectors.push(UnitVector(values));
        }
        let graph_bytes = reader.blob()?;
        reader.finish()?;
        let (graph, read): (HnswMap<QuantizedVector, u32>, usize) =
            bincode::serde::decode_from_slice(graph_bytes, bincode_config())
                .map_err(|e| DecodeError::Invalid(format!("index graph: {e}")))?;
        if read != graph_bytes.len() {
            return Err(DecodeError::TrailingBytes {
                count: graph_bytes.len() - read,
            });
        }
        let points = graph.iter().count();
        let slots_valid = graph.values.len() == count
            && points == count
            && graph.values.iter().all(|slot| (*slot as usize) < count)
            && graph.iter().all(|(_, p)| p.len() == dimension);
        if !slots_valid {
            return Err(DecodeError::Invalid(
                "index graph does not match its entry table".into(),
            ));
        }
        Ok(Self {
            key,
            dimension,
            ef_construction,
            ef_search,
            deleted: vec![false; count],
            live: count,
            entries,
            vectors,
            graph,
            variants: Vec::new(),
            search: Search::default(),
        })
    }
}

/// Checks a decoded segment against an index's dimension.
pub fn check_dimension(segment: &Segment, dimension: usize) -> Result<(), IndexError> {
    if segment.dimension != dimension {
        return Err(IndexError::DimensionMismatch {
            expected: dimension,
            found: segment.dimension,
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

    #[test]
    fn segments_round_trip_and_search_the_same() {
        let mut segment = Segment::build("s".into(), 16, items(300, 16), 100, 16, true);
        let query = items(301, 16).pop().unwrap().1;
        let mut before = Vec::new();
        segment.search(&query, &QuantizedVector::new(&query), 16, &mut before);
        let bytes = segment.encode();
        let mut decoded = Segment::decode("s".into(), &bytes).unwrap();
        let mut after = Vec::new();
        decoded.search(&query, &QuantizedVector::new(&query), 16, &mut after);
        assert_eq!(before, after);
        assert_eq!(decoded.encode(), bytes);
        for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(Segment::decode("s".into(), &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn an_older_encoding_or_a_corrupt_vector_fails_to_decode() {
        let segment = Segment::build("s".into(), 16, items(50, 16), 64, 16, true);
        let bytes = segment.encode();
        let mut version_1 = bytes.clone();
        version_1[0] = 1;
        assert!(matches!(
            Segment::decode("s".into(), &version_1),
            Err(DecodeError::UnsupportedVersion { found: 1, .. })
        ));
        let graph = bincode::serde::encode_to_vec(&segment.graph, bincode_config()).unwrap();
        let last_vector = bytes.len() - 4 - graph.len() - 16 * 4;
        for value in [2.0f32, f32::NAN] {
            let mut corrupt = bytes.clone();
            corrupt[last_vector..last_vector + 4].copy_from_slice(&value.to_le_bytes());
            assert!(matches!(
                Segment::decode("s".into(), &corrupt),
                Err(DecodeError::Invalid(message)) if message.contains("unit length")
            ));
        }
        let mut huge_dimension = bytes.clone();
        huge_dimension[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Segment::decode("s".into(), &huge_dimension).is_err());
    }

    #[test]
    fn search_scores_are_exact() {
        let mut segment = Segment::build("s".into(), 16, items(200, 16), 64, 16, true);
        let query = items(201, 16).pop().unwrap().1;
        let mut hits = Vec::new();
        segment.search(&query, &QuantizedVector::new(&query), 16, &mut hits);
        assert!(!hits.is_empty());
        for (distance, slot) in hits {
            let exact =
                cosine_distance(query.as_slice(), segment.vectors[slot as usize].as_slice());
            assert_eq!(distance, exact);
        }
    }

    #[test]
    fn variants_widen_the_search() {
        let mut segment = Segment::build("s".into(), 8, items(500, 8), 64, 8, true);
        let query = items(501, 8).pop().unwrap().1;
        let mut narrow = Vec::new();
        segment.search(&query, &QuantizedVector::new(&query), 8, &mut narrow);
        assert_eq!(narrow.len(), 8);
        let mut wide = Vec::new();
        segment.search(&query, &QuantizedVector::new(&query), 50, &mut wide);
        assert!(
            wide.len() >= 50,
            "a variant with ef >= 50 returned {}",
            wide.len()
        );
        assert!(wide[0].0 <= narrow[0].0 + 1e-6);
    }

    #[test]
    fn deleted_slots_are_never_returned() {
        let mut segment = Segment::build("s".into(), 8, items(100, 8), 64, 16, true);
        let query = items(101, 8).pop().unwrap().1;
        let mut hits = Vec::new();
        segment.search(&query, &QuantizedVector::new(&query), 16, &mut hits);
        let first = hits[0].1;
        assert!(segment.delete(first));
        assert!(!segment.delete(first));
        hits.clear();
        segment.search(&query, &QuantizedVector::new(&query), 16, &mut hits);
        assert!(hits.iter().all(|(_, slot)| *slot != first));
        assert_eq!(segment.live(), 99);
    }
}
