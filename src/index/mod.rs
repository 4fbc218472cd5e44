//! The vector index: cosine similarity over record embeddings.
//!
//! Pure (no I/O). New vectors go to a *growing* segment that is searched
//! exactly; when it passes [`IndexConfig::seal_threshold`] vectors it is
//! sealed into an HNSW [`Segment`] (the project's own graph,
//! `pluresdb-hnsw`), and small segments are merged into larger ones
//! (size-tiered, as Lucene and Milvus do; a merge inserts the smaller
//! segments' vectors into a copy of the largest one's graph). The database lets sealing wait while writes keep
//! arriving, up to `max_segment` growing vectors
//! ([`VectorIndex::seal_can_wait`]), so a bulk load is built once. Deletes and updates of sealed vectors are tombstones.
//! Building a segment is the only expensive step and it is done outside
//! the database lock, through [`VectorIndex::take_seal_job`] /
//! [`VectorIndex::take_merge_job`] and [`VectorIndex::install_segment`].
//!
//! Every vector remembers the record version (dot) it came from, so after
//! a crash the persisted segments can be reconciled with the records
//! ([`VectorIndex::reconcile`]): the index always agrees with the data.
//!
//! Scores are `max(0, 1 - distance)` with the cosine distance of normalised
//! vectors, so 1 is identical, 0 orthogonal or opposite.

mod distance;
mod hash_embedder;
#[cfg(all(not(target_arch = "wasm32"), feature = "minilm"))]
mod minilm_embedder;
mod segment;
#[cfg(not(target_arch = "wasm32"))]
mod static_embedder;
#[cfg(not(target_arch = "wasm32"))]
mod wordpiece;

use std::sync::Arc;

use pluresdb_hnsw::Quantized;
use rustc_hash::FxHashMap;

pub use distance::{cosine_distance, dot, score_of, UnitVector};
pub use hash_embedder::HashEmbedder;
#[cfg(all(not(target_arch = "wasm32"), feature = "minilm"))]
pub use minilm_embedder::{MiniLmEmbedder, MINILM_MODEL};
pub use pluresdb_hnsw::Params as GraphParams;
pub use segment::{Segment, SegmentEntry, SEGMENT_ENCODING_VERSION};
#[cfg(not(target_arch = "wasm32"))]
pub use static_embedder::{StaticEmbedder, STATIC_MODEL};

use crate::crdt::Dot;

/// The largest `k` and `ef` a search accepts: a request (say over HTTP)
/// asking for 10^15 results must be refused, not allocate for them.
pub const MAX_SEARCH_BREADTH: usize = 10_000;

/// The largest stored segment (quantised vectors and links) a merge makes:
/// a segment is one storage row, and is held twice in memory while it is
/// written (the segment and its encoding).
pub const MAX_SEGMENT_BYTES: usize = 48 * 1024 * 1024;

/// The breadth a segment holding `live` of `total` vectors is searched
/// with, for a search of breadth `ef` and `k` results: `ef` scaled by three
/// times the segment's share of the vectors, at least `k`, at most `ef`.
///
/// A segment holding a tenth of the vectors holds about a tenth of the true
/// neighbours, and finding its few nearest needs a much narrower search
/// than finding all of them in one graph. Measured on 20,000 real sentence
/// embeddings (`several_segments_keep_the_default_recall_on_real_embeddings`,
/// `ef` 64): ten segments searched at the full breadth each gave recall@10
/// 0.998 at 8.3 times the time of one segment (0.985); at three times their
/// share, 0.983 at 3.7 times; at twice their share, 0.965 at 2.7 times.
/// Up to three equal segments are searched at the full breadth.
fn segment_breadth(ef: usize, k: usize, live: usize, total: usize) -> usize {
    let share = ef.saturating_mul(3).saturating_mul(live) / total.max(1);
    (share + 1).clamp(k.min(ef), ef)
}

/// Vector index failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// A vector whose length is not the index's dimension.
    #[error("vector has {found} dimensions but this database's vectors have {expected}; embed with the same model, or use another database")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The vector's length.
        found: usize,
    },
    /// An empty vector.
    #[error("the vector is empty")]
    Empty,
    /// A NaN or infinite component.
    #[error("the vector has a NaN or infinite component at index {index}")]
    NotFinite {
        /// The offending component.
        index: usize,
    },
    /// A vector of zeros has no direction.
    #[error("the vector is all zeros and has no direction to compare")]
    ZeroVector,
    /// `k` of zero or a bad parameter.
    #[error("invalid search parameter: {0}")]
    InvalidParameter(String),
}

/// Index settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// The vectors' dimension; set by the first vector when `None`.
    pub dimension: Option<usize>,
    /// HNSW links per node on the upper layers (layer 0 has twice as many).
    pub m: usize,
    /// HNSW construction breadth.
    pub ef_construction: usize,
    /// Default search breadth, when a search does not choose one; every
    /// search uses at least `k`. The default reaches recall@10 >= 0.95 on
    /// real sentence embeddings (`docs/BENCHMARKS.md`).
    pub ef_search: usize,
    /// Growing-segment size that triggers sealing.
    pub seal_threshold: usize,
    /// Segments are not merged beyond this many vectors (nor beyond
    /// [`MAX_SEGMENT_BYTES`] of stored segment, whichever is fewer).
    pub max_segment: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            dimension: None,
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            seal_threshold: 1024,
            max_segment: 65_536,
        }
    }
}

impl IndexConfig {
    /// The names of the JavaScript API's `index: { ... }` options, each a
    /// positive integer (see [`set_option`](Self::set_option)).
    pub const OPTION_NAMES: [&'static str; 6] = [
        "dimension",
        "m",
        "efConstruction",
        "efSearch",
        "sealThreshold",
        "maxSegment",
    ];

    /// Sets the `index` option `name` (one of [`OPTION_NAMES`](Self::OPTION_NAMES))
    /// to `value`, a positive integer, as the JavaScript APIs (WebAssembly
    /// and the Node addon) take them; the message for a value out of range.
    /// `efConstruction` is capped at [`MAX_SEARCH_BREADTH`].
    pub fn set_option(&mut self, name: &str, value: usize) -> Result<(), String> {
        match name {
            "dimension" => self.dimension = Some(value),
            "m" if (2..=64).contains(&value) => self.m = value,
            "m" => return Err("index option `m` must be between 2 and 64".into()),
            "efConstruction" => self.ef_construction = value.min(MAX_SEARCH_BREADTH),
            "efSearch" => self.ef_search = value,
            "sealThreshold" => self.seal_threshold = value,
            "maxSegment" => self.max_segment = value,
            other => return Err(format!("unknown index option `{other}`")),
        }
        Ok(())
    }

    fn graph_params(&self) -> GraphParams {
        GraphParams {
            m: self.m,
            ef_construction: self.ef_construction,
            ..GraphParams::default()
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    /// The record id.
    pub id: Arc<str>,
    /// `max(0, 1 - cosine distance)`.
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Growing(usize),
    Sealed { segment: u64, slot: u32 },
}

struct Growing {
    id: Arc<str>,
    dot: Dot,
    vector: UnitVector,
}

/// Work that builds a segment outside the database lock.
#[derive(Debug)]
pub struct SegmentJob {
    /// Storage key of the segment to build.
    pub key: String,
    /// The vectors.
    pub items: Vec<(SegmentEntry, UnitVector)>,
    /// Segments the new one replaces (merges).
    pub replaces: Vec<String>,
    /// A copy of the segment the new one extends (a merge into the largest
    /// segment), or `None` to build from nothing.
    base: Option<Segment>,
    dimension: usize,
    params: GraphParams,
}

impl SegmentJob {
    /// Builds the segment (expensive: HNSW construction).
    pub fn build(self) -> (Segment, Vec<String>) {
        let segment = match self.base {
            Some(base) => base.extend(self.key, self.items),
            None => Segment::build(self.key, self.dimension, self.items, self.params),
        };
        (segment, self.replaces)
    }
}

/// Sizes and counts, for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// The vectors' dimension, once known.
    pub dimension: Option<usize>,
    /// Live vectors.
    pub vectors: usize,
    /// Vectors in the growing segment.
    pub growing: usize,
    /// Live vectors per sealed segment.
    pub segments: Vec<usize>,
    /// Memory of the HNSW graphs: quantised vectors, links, id tables
    /// (the sealed segments' own bytes).
    pub graph_bytes: usize,
    /// Memory of the exact `f32` vectors of live entries. A unit-length
    /// embedding is shared with its record, so this is not in addition to
    /// the records' memory.
    pub vector_bytes: usize,
}

/// The vector index of one database.
pub struct VectorIndex {
    config: IndexConfig,
    dimension: Option<usize>,
    growing: Vec<Growing>,
    segments: Vec<(u64, Segment)>,
    located: FxHashMap<Arc<str>, Location>,
    next_serial: u64,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl VectorIndex {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            dimension: config.dimension,
            config,
            growing: Vec::new(),
            segments: Vec::new(),
            located: FxHashMap::default(),
            next_serial: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// The most vectors a segment takes: [`IndexConfig::max_segment`], or
    /// fewer for vectors so wide that the segment would pass
    /// [`MAX_SEGMENT_BYTES`].
    pub fn max_segment(&self) -> usize {
        // Codes and scale, the level, layer-0 links, an id table entry.
        let per_vector = self.dimension.unwrap_or(0) + 4 + 1 + 4 * (1 + 2 * self.config.m) + 64;
        self.config
            .max_segment
            .min(MAX_SEGMENT_BYTES / per_vector)
            .max(self.config.seal_threshold)
    }

    /// The vectors' dimension, once known.
    pub fn dimension(&self) -> Option<usize> {
        self.dimension
    }

    /// Number of live vectors.
    pub fn len(&self) -> usize {
        self.located.len()
    }

    /// True when no vector is indexed.
    pub fn is_empty(&self) -> bool {
        self.located.is_empty()
    }

    /// True when the growing segment is due for sealing but may wait for
    /// writes already queued: it is past the seal threshold and still under
    /// `max_segment`. A bulk load then seals a few large segments instead
    /// of rebuilding small ones merge after merge.
    pub fn seal_can_wait(&self) -> bool {
        let growing = self.growing.len();
        growing >= self.config.seal_threshold && growing < self.max_segment()
    }

    /// Counts for status output.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            dimension: self.dimension,
            vectors: self.located.len(),
            growing: self.growing.len(),
            segments: self.segments.iter().map(|(_, s)| s.live()).collect(),
            graph_bytes: self.segments.iter().map(|(_, s)| s.heap_bytes()).sum(),
            vector_bytes: self.located.len() * self.dimension.unwrap_or(0) * 4,
        }
    }

    /// Checks a vector against the index's dimension (without inserting).
    pub fn check(&self, values: &[f32]) -> Result<(), IndexError> {
        distance::check(values, self.dimension.unwrap_or(values.len()))
    }

    /// Indexes `values` as the embedding of `id`'s version `dot`, replacing
    /// whatever `id` had. A unit-length embedding is shared, not copied.
    pub fn upsert(&mut self, id: Arc<str>, dot: Dot, values: Arc<[f32]>) -> Result<(), IndexError> {
        let dimension = self.dimension.unwrap_or(values.len());
        let vector = UnitVector::shared(values, dimension)?;
        self.dimension = Some(dimension);
        self.remove(&id);
        self.located
            .insert(id.clone(), Location::Growing(self.growing.len()));
        self.growing.push(Growing { id, dot, vector });
        Ok(())
    }

    /// Drops `id` from the index; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.located.remove(id) {
            None => false,
            Some(Location::Growing(position)) => {
                self.growing.swap_remove(position);
                if let Some(moved) = self.growing.get(position) {
                    self.located
                        .insert(moved.id.clone(), Location::Growing(position));
                }
                true
            }
            Some(Location::Sealed { segment, slot }) => {
                if let Some((_, segment)) = self.segments.iter_mut().find(|(s, _)| *s == segment) {
                    segment.delete(slot);
                }
                true
            }
        }
    }

    /// The `k` nearest live vectors to `query` (`k` and `ef` at most
    /// [`MAX_SEARCH_BREADTH`]), best first, using a search breadth of
    /// `max(ef, k)` (`ef` defaults to [`IndexConfig::ef_search`]) in every
    /// sealed segment and an exact scan of the growing one.
    pub fn search(
        &mut self,
        query: &[f32],
        k: usize,
        ef: Option<usize>,
    ) -> Result<Vec<Neighbour>, IndexError> {
        if k == 0 {
            return Err(IndexError::InvalidParameter("k must be at least 1".into()));
        }
        if k > MAX_SEARCH_BREADTH || ef.is_some_and(|ef| ef > MAX_SEARCH_BREADTH) {
            return Err(IndexError::InvalidParameter(format!(
                "k and ef must be at most {MAX_SEARCH_BREADTH}"
            )));
        }
        let Some(dimension) = self.dimension else {
            // Nothing indexed yet: only the query's own validity matters.
            distance::check(query, query.len())?;
            return Ok(Vec::new());
        };
        let query = UnitVector::new(query, dimension)?;
        let quantized = Quantized::new(query.as_slice());
        let ef = ef.unwrap_or(self.config.ef_search).max(k);
        let mut candidates: Vec<(f32, Arc<str>)> = Vec::with_capacity(ef * 2);
        let mut found = Vec::with_capacity(ef);
        let total: usize = self.segments.iter().map(|(_, s)| s.live()).sum();
        for (_, segment) in &mut self.segments {
            found.clear();
            segment.search(
                &query,
                &quantized,
                segment_breadth(ef, k, segment.live(), total),
                &mut found,
            );
            candidates.extend(
                found
                    .iter()
                    .map(|(distance, slot)| (*distance, segment.entry(*slot).id.clone())),
            );
        }
        for entry in &self.growing {
            candidates.push((
                cosine_distance(query.as_slice(), entry.vector.as_slice()),
                entry.id.clone(),
            ));
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        candidates.truncate(k);
        Ok(candidates
            .into_iter()
            .map(|(distance, id)| Neighbour {
                id,
                score: score_of(distance),
            })
            .collect())
    }

    /// Exact nearest neighbours over every live vector (for tests and
    /// benchmarks: the ground truth of recall).
    pub fn exact_search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbour>, IndexError> {
        let Some(dimension) = self.dimension else {
            return Ok(Vec::new());
        };
        let query = UnitVector::new(query, dimension)?;
        let mut all: Vec<(f32, Arc<str>)> = Vec::with_capacity(self.located.len());
        for entry in &self.growing {
            all.push((
                cosine_distance(query.as_slice(), entry.vector.as_slice()),
                entry.id.clone(),
            ));
        }
        for (_, segment) in &self.segments {
            for (entry, vector) in segment.live_items() {
                all.push((
                    cosine_distance(query.as_slice(), vector.as_slice()),
                    entry.id,
                ));
            }
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        all.truncate(k);
        Ok(all
            .into_iter()
            .map(|(distance, id)| Neighbour {
                id,
                score: score_of(distance),
            })
            .collect())
    }

    fn job(
        &self,
        key: String,
        items: Vec<(SegmentEntry, UnitVector)>,
        replaces: Vec<String>,
    ) -> SegmentJob {
        SegmentJob {
            key,
            items,
            replaces,
            base: None,
            dimension: self.dimension.unwrap_or(0),
            params: self.config.graph_params(),
        }
    }

    /// When the growing segment is full: a job that seals it. The growing
    /// vectors stay searchable until [`install_segment`](Self::install_segment).
    pub fn take_seal_job(&self, key: String) -> Option<SegmentJob> {
        self.take_seal_job_at(key, self.config.seal_threshold)
    }

    /// Like [`take_seal_job`](Self::take_seal_job) but seals once the growing
    /// segment holds `minimum` vectors (at least one).
    pub fn take_seal_job_at(&self, key: String, minimum: usize) -> Option<SegmentJob> {
        if self.growing.is_empty() || self.growing.len() < minimum {
            return None;
        }
        let items = self
            .growing
            .iter()
            .map(|g| {
                (
                    SegmentEntry {
                        id: g.id.clone(),
                        dot: g.dot,
                    },
                    g.vector.clone(),
                )
            })
            .collect();
        Some(self.job(key, items, Vec::new()))
    }

    /// When several small segments exist: a job that merges the smallest
    /// ones (at least four of similar size, or any whose tombstones exceed
    /// half their vectors) into one of at most `max_segment` vectors.
    pub fn take_merge_job(&self, key: String) -> Option<SegmentJob> {
        self.take_merge_job_of(key, 4)
    }

    /// [`take_merge_job`](Self::take_merge_job) that merges as few as
    /// `at_least` similar segments (an explicit flush merges pairs, so a
    /// finished bulk load is left in fewer segments to search).
    pub fn take_merge_job_of(&self, key: String, at_least: usize) -> Option<SegmentJob> {
        // A segment that is mostly tombstones is rebuilt on its own.
        let wasteful = self
            .segments
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.len() >= 64 && s.live() * 2 < s.len());
        let chosen: Vec<&Segment> = match wasteful {
            Some(segment) => vec![segment],
            None => {
                let mut by_size: Vec<&Segment> = self.segments.iter().map(|(_, s)| s).collect();
                by_size.sort_by_key(|s| s.live());
                let mut chosen: Vec<&Segment> = Vec::new();
                let mut total = 0;
                for segment in by_size {
                    let smallest = chosen.first().map_or(segment.live(), |s| s.live().max(1));
                    if total + segment.live() > self.max_segment() || segment.live() > smallest * 4
                    {
                        break;
                    }
                    total += segment.live();
                    chosen.push(segment);
                }
                if chosen.len() < at_least.max(2) {
                    return None;
                }
                chosen
            }
        };
        let replaces = chosen.iter().map(|s| s.key.clone()).collect();
        // The largest chosen segment is extended with the others' vectors
        // when few of its slots are tombstones; otherwise everything is
        // rebuilt, dropping the tombstones.
        let largest = chosen.iter().copied().max_by_key(|s| s.live());
        let base = largest.filter(|s| chosen.len() > 1 && (s.len() - s.live()) * 8 <= s.len());
        let items = chosen
            .iter()
            .filter(|s| !base.is_some_and(|b| std::ptr::eq(**s, b)))
            .flat_map(|s| s.live_items())
            .collect();
        let mut job = self.job(key, items, replaces);
        job.base = base.cloned();
        Some(job)
    }

    /// Installs a built segment: its vectors that are still current move out
    /// of the growing segment (or out of the segments it replaces); entries
    /// superseded while it was built are tombstoned. Returns the keys of the
    /// segments it replaced (to delete from storage).
    pub fn install_segment(&mut self, mut segment: Segment, replaces: Vec<String>) -> Vec<String> {
        let serial = self.next_serial;
        self.next_serial += 1;
        let replaced_serials: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| replaces.contains(&s.key))
            .map(|(serial, _)| *serial)
            .collect();
        let mut moved_growing = Vec::new();
        for slot in 0..segment.len() as u32 {
            let entry = segment.entry(slot).clone();
            let current = self.located.get(&entry.id).copied();
            let still_current = match current {
                Some(Location::Growing(position)) => {
                    let growing = &self.growing[position];
                    if growing.dot == entry.dot {
                        moved_growing.push(position);
                        true
                    } else {
                        false
                    }
                }
                Some(Location::Sealed { segment, slot: old }) => {
                    replaced_serials.contains(&segment)
                        && self
                            .segments
                            .iter()
                            .find(|(s, _)| *s == segment)
                            .is_some_and(|(_, s)| s.entry(old).dot == entry.dot)
                }
                None => false,
            };
            if still_current {
                self.located.insert(
                    entry.id.clone(),
                    Location::Sealed {
                        segment: serial,
                        slot,
                    },
                );
            } else {
                segment.delete(slot);
            }
        }
        // Remove moved growing entries, highest position first so the
        // positions of the others stay valid.
        moved_growing.sort_unstable_by(|a, b| b.cmp(a));
        for position in moved_growing {
            self.growing.swap_remove(position);
            if let Some(moved) = self.growing.get(position) {
                self.located
                    .insert(moved.id.clone(), Location::Growing(position));
            }
        }
        self.segments.retain(|(s, _)| !replaced_serials.contains(s));
        self.segments.push((serial, segment));
        replaces
    }

    /// Loads persisted segments and reconciles them with the records:
    /// `current(id)` gives the dot and embedding of a record's winning
    /// version. Segment vectors whose record changed are tombstoned;
    /// embeddings not in any segment go to the growing segment. Segments that
    /// fail to decode or have another dimension are dropped (their keys are
    /// returned, to delete) and re-indexed from the records.
    pub fn reconcile(
        &mut self,
        stored: Vec<(String, Vec<u8>)>,
        records: impl Iterator<Item = (Arc<str>, Dot, Arc<[f32]>)>,
    ) -> Vec<String> {
        let mut dropped = Vec::new();
        let mut records: FxHashMap<Arc<str>, (Dot, Arc<[f32]>)> = records
            .map(|(id, dot, values)| (id, (dot, values)))
            .collect();
        for (key, bytes) in stored {
            let segment = match Segment::decode(key.clone(), &bytes) {
                Ok(segment) => segment,
                Err(error) => {
                    tracing::warn!(%key, %error, "dropping an index segment that does not decode; re-indexing its vectors");
                    dropped.push(key);
                    continue;
                }
            };
            let dimension = *self.dimension.get_or_insert(segment.dimension());
            if segment::check_dimension(&segment, dimension).is_err() {
                dropped.push(key);
                continue;
            }
            let mut segment = segment;
            let serial = self.next_serial;
            self.next_serial += 1;
            for slot in 0..segment.len() as u32 {
                let entry = segment.entry(slot).clone();
                let Some((dot, values)) = records.get(&entry.id) else {
                    continue;
                };
                if *dot != entry.dot || self.located.contains_key(&entry.id) {
                    continue;
                }
                // Decoded slots are tombstones until given their vector.
                let Ok(vector) = UnitVector::shared(values.clone(), dimension) else {
                    continue;
                };
                segment.attach(slot, vector);
                self.located.insert(
                    entry.id.clone(),
                    Location::Sealed {
                        segment: serial,
                        slot,
                    },
                );
            }
            self.segments.push((serial, segment));
        }
        records.retain(|id, _| !self.located.contains_key(id));
        let mut missing: Vec<_> = records.into_iter().collect();
        missing.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, (dot, values)) in missing {
            if let Err(error) = self.upsert(id.clone(), dot, values) {
                tracing::warn!(%id, %error, "a stored embedding cannot be indexed");
            }
        }
        dropped
    }

    /// Every sealed segment key.
    pub fn segment_keys(&self) -> Vec<String> {
        self.segments.iter().map(|(_, s)| s.key.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::ActorId;

    #[test]
    fn javascript_index_options_are_checked_once_for_both_apis() {
        let mut config = IndexConfig::default();
        for name in IndexConfig::OPTION_NAMES {
            config.set_option(name, 40).unwrap();
        }
        assert_eq!(
            config,
            IndexConfig {
                dimension: Some(40),
                m: 40,
                ef_construction: 40,
                ef_search: 40,
                seal_threshold: 40,
                max_segment: 40,
            }
        );
        assert!(config
            .set_option("m", 1)
            .unwrap_err()
            .contains("between 2 and 64"));
        assert!(config.set_option("m", 65).is_err());
        assert_eq!(config.m, 40, "a refused value changes nothing");
        config.set_option("efConstruction", 1_000_000).unwrap();
        assert_eq!(config.ef_construction, MAX_SEARCH_BREADTH);
        assert!(config.set_option("ef", 10).is_err());
    }

    fn dot(seq: u64) -> Dot {
        Dot {
            actor: ActorId::from_bytes([1; 16]),
            seq,
        }
    }

    /// A pseudo-random vector per `i` (xorshift; no two alike).
    fn vector(i: usize, dim: usize) -> Vec<f32> {
        let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn config() -> IndexConfig {
        IndexConfig {
            seal_threshold: 64,
            ef_construction: 64,
            ..IndexConfig::default()
        }
    }

    fn seal(index: &mut VectorIndex, key: &str) {
        let job = index.take_seal_job(key.into()).expect("growing is full");
        let (segment, replaces) = job.build();
        index.install_segment(segment, replaces);
    }

    #[test]
    fn upserts_deletes_and_sealing_keep_results_consistent() {
        let mut index = VectorIndex::new(config());
        for i in 0..100 {
            index
                .upsert(
                    format!("v{i}").into(),
                    dot(i as u64 + 1),
                    vector(i, 12).into(),
                )
                .unwrap();
        }
        seal(&mut index, "s1");
        assert_eq!(index.stats().growing, 0);
        assert_eq!(index.stats().segments, vec![100]);
        // The exact neighbour of v3's vector is v3, sealed or not.
        let hits = index.search(&vector(3, 12), 1, None).unwrap();
        assert_eq!(&*hits[0].id, "v3");
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        // Replacing and deleting sealed vectors hides the old ones.
        index
            .upsert("v3".into(), dot(500), vector(999, 12).into())
            .unwrap();
        assert!(index.remove("v4"));
        let hits = index.search(&vector(4, 12), 5, None).unwrap();
        assert!(hits.iter().all(|h| &*h.id != "v4"));
        let hits = index.search(&vector(3, 12), 100, None).unwrap();
        let v3 = hits.iter().find(|h| &*h.id == "v3").unwrap();
        assert!(v3.score < 0.99, "the old v3 vector is gone");
        assert_eq!(index.len(), 99);
    }

    #[test]
    fn a_seal_racing_with_updates_keeps_the_newer_vector() {
        let mut index = VectorIndex::new(config());
        for i in 0..64 {
            index
                .upsert(
                    format!("v{i}").into(),
                    dot(i as u64 + 1),
                    vector(i, 8).into(),
                )
                .unwrap();
        }
        let job = index.take_seal_job("s".into()).unwrap();
        // While the segment builds, v0 changes and v1 is deleted.
        index
            .upsert("v0".into(), dot(100), vector(700, 8).into())
            .unwrap();
        index.remove("v1");
        let (segment, replaces) = job.build();
        index.install_segment(segment, replaces);
        assert_eq!(index.len(), 63);
        let hits = index.search(&vector(700, 8), 1, None).unwrap();
        assert_eq!(&*hits[0].id, "v0");
        assert!((hits[0].score - 1.0).abs() < 1e-5, "v0 has its new vector");
        let all = index.search(&vector(1, 8), 64, None).unwrap();
        assert!(all.iter().all(|h| &*h.id != "v1"));
    }

    #[test]
    fn small_segments_merge() {
        let mut index = VectorIndex::new(config());
        for round in 0..4 {
            for i in 0..64 {
                let n = round * 64 + i;
                index
                    .upsert(
                        format!("v{n}").into(),
                        dot(n as u64 + 1),
                        vector(n, 8).into(),
                    )
                    .unwrap();
            }
            seal(&mut index, &format!("s{round}"));
        }
        assert_eq!(index.stats().segments.len(), 4);
        let job = index
            .take_merge_job("merged".into())
            .expect("four small segments");
        let (segment, replaces) = job.build();
        let removed = index.install_segment(segment, replaces);
        assert_eq!(removed.len(), 4);
        assert_eq!(index.stats().segments, vec![256]);
        let hits = index.search(&vector(200, 8), 1, None).unwrap();
        assert_eq!(&*hits[0].id, "v200");
    }

    #[test]
    fn a_flush_merges_pairs_of_similar_segments_but_not_unlike_ones() {
        let mut index = VectorIndex::new(config());
        let mut n = 0;
        for (round, size) in [1024usize, 64, 64, 64].into_iter().enumerate() {
            for _ in 0..size {
                index
                    .upsert(
                        format!("v{n}").into(),
                        dot(n as u64 + 1),
                        vector(n, 8).into(),
                    )
                    .unwrap();
                n += 1;
            }
            seal(&mut index, &format!("s{round}"));
        }
        // Three small ones: too few for the background policy...
        assert!(index.take_merge_job("m".into()).is_none());
        // ...but a flush merges them, leaving the large one alone (more
        // than four times their size).
        let job = index
            .take_merge_job_of("m".into(), 2)
            .expect("three similar segments");
        let (segment, replaces) = job.build();
        index.install_segment(segment, replaces);
        let mut sizes = index.stats().segments;
        sizes.sort_unstable();
        assert_eq!(sizes, vec![192, 1024]);
        assert!(index.take_merge_job_of("m".into(), 2).is_none());
        let hits = index.search(&vector(1100, 8), 1, None).unwrap();
        assert_eq!(&*hits[0].id, "v1100");
    }

    #[test]
    fn segments_are_searched_at_three_times_their_share_of_the_breadth() {
        assert_eq!(segment_breadth(64, 10, 20_000, 20_000), 64);
        assert_eq!(segment_breadth(64, 10, 10_000, 20_000), 64);
        assert_eq!(segment_breadth(64, 10, 2_000, 20_000), 20);
        assert_eq!(segment_breadth(64, 10, 10, 20_000), 10, "at least k");
        assert_eq!(segment_breadth(10, 10, 10, 20_000), 10);
        assert_eq!(segment_breadth(64, 10, 5, 0), 64, "no division by zero");
    }

    #[test]
    fn bad_vectors_and_queries_are_typed_errors() {
        let mut index = VectorIndex::new(IndexConfig::default());
        index
            .upsert("a".into(), dot(1), Arc::from([1.0, 0.0, 0.0]))
            .unwrap();
        assert!(matches!(
            index.upsert("b".into(), dot(2), Arc::from([1.0, 0.0])),
            Err(IndexError::DimensionMismatch {
                expected: 3,
                found: 2
            })
        ));
        assert!(matches!(
            index.search(&[1.0, f32::INFINITY, 0.0], 1, None),
            Err(IndexError::NotFinite { .. })
        ));
        assert!(matches!(
            index.search(&[1.0, 0.0, 0.0], 0, None),
            Err(IndexError::InvalidParameter(_))
        ));
        assert!(matches!(index.search(&[], 1, None), Err(IndexError::Empty)));
    }

    /// The stored form of one sealed segment holding `v0`..`v63` (8-d).
    fn stored_segment() -> Vec<(String, Vec<u8>)> {
        let mut index = VectorIndex::new(config());
        for i in 0..64 {
            index
                .upsert(
                    format!("v{i}").into(),
                    dot(i as u64 + 1),
                    vector(i, 8).into(),
                )
                .unwrap();
        }
        seal(&mut index, "s");
        index
            .segments
            .iter()
            .map(|(_, s)| (s.key.clone(), s.encode()))
            .collect()
    }

    /// A new index reconciled with `stored` segments and `records`; also
    /// the keys of the segments it dropped.
    fn reopen(
        stored: Vec<(String, Vec<u8>)>,
        records: &[(Arc<str>, Dot, Vec<f32>)],
    ) -> (VectorIndex, Vec<String>) {
        let mut reopened = VectorIndex::new(config());
        let dropped = reopened.reconcile(
            stored,
            records
                .iter()
                .map(|(id, d, v)| (id.clone(), *d, Arc::from(v.as_slice()))),
        );
        (reopened, dropped)
    }

    #[test]
    fn reconcile_drops_stale_entries_and_indexes_the_rest() {
        let stored = stored_segment();
        // Records now: v0 changed (new dot), v1 deleted, v100 new, the rest as sealed.
        let mut records: Vec<(Arc<str>, Dot, Vec<f32>)> = (2..64)
            .map(|i| (format!("v{i}").into(), dot(i as u64 + 1), vector(i, 8)))
            .collect();
        records.push(("v0".into(), dot(1000), vector(500, 8)));
        records.push(("v100".into(), dot(1001), vector(100, 8)));
        let (mut reopened, dropped) = reopen(stored, &records);
        assert!(dropped.is_empty());
        assert_eq!(reopened.len(), 64);
        assert_eq!(reopened.stats().growing, 2);
        assert_eq!(reopened.stats().segments, vec![62]);
        let hits = reopened.search(&vector(500, 8), 1, None).unwrap();
        assert_eq!(&*hits[0].id, "v0");
        assert!(reopened
            .search(&vector(1, 8), 64, None)
            .unwrap()
            .iter()
            .all(|h| &*h.id != "v1"));
    }

    #[test]
    fn a_segment_in_an_older_encoding_is_dropped_and_its_vectors_indexed_again() {
        let mut stored = stored_segment();
        stored[0].1[0] = 1;
        let records: Vec<(Arc<str>, Dot, Vec<f32>)> = (0..64)
            .map(|i| (format!("v{i}").into(), dot(i as u64 + 1), vector(i, 8)))
            .collect();
        let (mut reopened, dropped) = reopen(stored, &records);
        assert_eq!(dropped, vec!["s".to_string()]);
        assert_eq!(reopened.len(), 64);
        assert_eq!(reopened.stats().growing, 64);
        let hits = reopened.search(&vector(5, 8), 1, None).unwrap();
        assert_eq!(&*hits[0].id, "v5");
    }
}
