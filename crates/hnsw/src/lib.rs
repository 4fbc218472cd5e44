//! An HNSW graph (Malkov and Yashunin, "Efficient and robust approximate
//! nearest neighbor search using Hierarchical Navigable Small World
//! graphs", 2016) over byte-quantised unit vectors, for cosine similarity.
//!
//! What it owns: the quantised points (one `i8` code per component and one
//! scale per vector), the layered neighbour lists, and the search and
//! insertion algorithms. What it leaves to its user: ids, tombstones (a
//! search takes a `live` predicate, and passes *through* dead nodes without
//! returning them) and exact re-scoring with the `f32` vectors, which the
//! user keeps once, wherever it likes.
//!
//! Choices, each measured on real sentence embeddings (see the project's
//! `docs/BENCHMARKS.md`):
//! - neighbours are chosen with the paper's heuristic (algorithm 4): a
//!   candidate is linked only if it is closer to the new point than to any
//!   neighbour already chosen, which keeps links between clusters that a
//!   plain "nearest M" graph loses on clustered data;
//! - `M` links per node on the upper layers and `2·M` on layer 0;
//! - the search breadth `ef` is a per-query argument (nothing is fixed at
//!   build time), so a graph can be searched narrowly or widely;
//! - points are bytes: a distance is a 16-lane integer dot product, a
//!   quarter of the memory traffic of `f32`;
//! - the graph grows by insertion, so a larger graph can be extended with
//!   a smaller one's points instead of being rebuilt.
//!
//! Everything is single-threaded and deterministic: the same points in the
//! same order give the same graph (levels come from a seeded generator).

mod kernels;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

pub use kernels::{dot, dot_i8};

/// Highest layer a node may have (a level is drawn with probability
/// `M^-level`, so 16 is never reached in practice with `M >= 4`).
pub const MAX_LEVEL: u8 = 16;
/// Version of [`Hnsw::encode`]'s layout.
pub const ENCODING_VERSION: u8 = 1;
const NONE: u32 = u32::MAX;

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Links per node on the upper layers; layer 0 has twice as many.
    pub m: usize,
    /// Search breadth while inserting.
    pub ef_construction: usize,
    /// Seed of the level generator.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 100,
            seed: 0x5EED_1DE5,
        }
    }
}

/// A unit vector quantised to signed bytes: `value ≈ code × scale` with
/// `scale = max |value| / 127`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    scale: f32,
    codes: Vec<u8>,
}

impl Quantized {
    /// Quantises `unit` (a vector of length 1; any finite vector works, the
    /// distances are then `1 - dot`).
    pub fn new(unit: &[f32]) -> Self {
        let mut codes = Vec::with_capacity(unit.len());
        let scale = quantize_into(unit, &mut codes);
        Self { scale, codes }
    }
}

/// Appends the codes of `values` to `codes`; returns the scale.
fn quantize_into(values: &[f32], codes: &mut Vec<u8>) -> f32 {
    const LEVELS: f32 = 127.0;
    let mut max = 0.0f32;
    for value in values {
        max = max.max(value.abs());
    }
    // An all-zero vector gets codes of zero, and any positive scale.
    let scale = if max > 0.0 { max / LEVELS } else { 1.0 };
    for value in values {
        // |value / scale| <= 127 up to rounding, and the cast saturates.
        let code = (value / scale).round_ties_even() as i8;
        codes.push(code.to_le_bytes()[0]);
    }
    scale
}

/// A node and its (approximate, quantised) distance to a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// `1 - dot` of the quantised vectors.
    pub distance: f32,
    /// The node (its insertion number).
    pub node: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

/// Reusable buffers of a search (one per thread or per owner; a search
/// allocates nothing once they have grown).
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    visited: Vec<u32>,
    stamp: u32,
    candidates: BinaryHeap<Reverse<Scored>>,
    results: BinaryHeap<Scored>,
    found: Vec<Scored>,
}

impl Scratch {
    /// Starts a search over `len` nodes: every node unvisited.
    fn begin(&mut self, len: usize) {
        if self.visited.len() < len {
            self.visited.resize(len, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.visited.fill(0);
            self.stamp = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks `node` visited; true when it was not yet.
    #[inline(always)]
    fn visit(&mut self, node: u32) -> bool {
        let slot = &mut self.visited[node as usize];
        if *slot == self.stamp {
            return false;
        }
        *slot = self.stamp;
        true
    }
}

/// Why a stored graph was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HNSW graph: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// An HNSW graph of quantised unit vectors.
#[derive(Clone)]
pub struct Hnsw {
    dimension: usize,
    m: usize,
    ef_construction: usize,
    /// `len × dimension` codes.
    codes: Vec<u8>,
    scales: Vec<f32>,
    levels: Vec<u8>,
    /// Layer 0: per node a block of `1 + 2m` words, the count then the
    /// neighbours.
    layer0: Vec<u32>,
    /// Per node, where its upper-layer blocks (`level` blocks of `1 + m`
    /// words) start in `upper`; [`NONE`] for nodes of level 0.
    upper_start: Vec<u32>,
    upper: Vec<u32>,
    entry: u32,
    max_level: u8,
    rng: u64,
    scratch: Scratch,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("len", &self.len())
            .field("dimension", &self.dimension)
            .field("m", &self.m)
            .field("max_level", &self.max_level)
            .finish_non_exhaustive()
    }
}

impl Hnsw {
    /// An empty graph of `dimension`-d vectors.
    pub fn new(dimension: usize, params: Params) -> Self {
        let m = params.m.clamp(2, 255);
        Self {
            dimension,
            m,
            ef_construction: params.ef_construction.max(1),
            codes: Vec::new(),
            scales: Vec::new(),
            levels: Vec::new(),
            layer0: Vec::new(),
            upper_start: Vec::new(),
            upper: Vec::new(),
            entry: NONE,
            max_level: 0,
            rng: params.seed | 1,
            scratch: Scratch::default(),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// True for a graph without nodes.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Links per node on the upper layers.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Search breadth used while inserting.
    pub fn ef_construction(&self) -> usize {
        self.ef_construction
    }

    /// Bytes held on the heap (codes, scales, links), for memory reports.
    pub fn heap_bytes(&self) -> usize {
        self.codes.capacity()
            + 4 * self.scales.capacity()
            + self.levels.capacity()
            + 4 * (self.layer0.capacity() + self.upper_start.capacity() + self.upper.capacity())
            + 4 * self.scratch.visited.capacity()
    }

    /// Reserves room for `additional` more nodes.
    pub fn reserve(&mut self, additional: usize) {
        self.codes.reserve(additional * self.dimension);
        self.scales.reserve(additional);
        self.levels.reserve(additional);
        self.layer0.reserve(additional * (1 + 2 * self.m));
        self.upper_start.reserve(additional);
    }

    fn m0(&self) -> usize {
        2 * self.m
    }

    fn code(&self, node: u32) -> &[u8] {
        let start = node as usize * self.dimension;
        &self.codes[start..start + self.dimension]
    }

    /// Quantised distance between two nodes.
    #[inline(always)]
    fn node_distance(&self, a: u32, b: u32) -> f32 {
        1.0 - self.scales[a as usize]
            * self.scales[b as usize]
            * dot_i8(self.code(a), self.code(b)) as f32
    }

    /// Quantised distance from a query to a node.
    #[inline(always)]
    fn query_distance(&self, query: &Quantized, node: u32) -> f32 {
        1.0 - query.scale
            * self.scales[node as usize]
            * dot_i8(&query.codes, self.code(node)) as f32
    }

    /// The neighbours of `node` on `layer`.
    pub fn neighbours(&self, node: u32, layer: u8) -> &[u32] {
        let block = self.block(node, layer);
        let count = self.links_word(block) as usize;
        self.links_slice(block, count)
    }

    /// Where the block of `node` on `layer` starts: `(in upper?, index)`.
    #[inline(always)]
    fn block(&self, node: u32, layer: u8) -> (bool, usize) {
        if layer == 0 {
            (false, node as usize * (1 + self.m0()))
        } else {
            let start = self.upper_start[node as usize] as usize;
            (true, start + (layer as usize - 1) * (1 + self.m))
        }
    }

    #[inline(always)]
    fn links_word(&self, (upper, at): (bool, usize)) -> u32 {
        if upper {
            self.upper[at]
        } else {
            self.layer0[at]
        }
    }

    #[inline(always)]
    fn links_slice(&self, (upper, at): (bool, usize), count: usize) -> &[u32] {
        if upper {
            &self.upper[at + 1..at + 1 + count]
        } else {
            &self.layer0[at + 1..at + 1 + count]
        }
    }

    fn set_links(&mut self, node: u32, layer: u8, links: &[u32]) {
        let capacity = if layer == 0 { self.m0() } else { self.m };
        let (upper, at) = self.block(node, layer);
        let words = if upper {
            &mut self.upper
        } else {
            &mut self.layer0
        };
        words[at] = links.len() as u32;
        words[at + 1..at + 1 + links.len()].copy_from_slice(links);
        words[at + 1 + links.len()..at + 1 + capacity].fill(0);
    }

    /// A level with probability `m^-level` (splitmix64 draws).
    fn random_level(&mut self) -> u8 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in (0, 1]: never ln(0).
        let uniform = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let level = (-uniform.ln() / (self.m as f64).ln()).floor();
        level.min(f64::from(MAX_LEVEL)) as u8
    }

    /// Greedy descent on one layer from `from` (breadth 1).
    fn greedy(&self, distance: &impl Fn(u32) -> f32, mut from: Scored, layer: u8) -> Scored {
        loop {
            let mut improved = false;
            for &next in self.neighbours(from.node, layer) {
                let d = distance(next);
                if d < from.distance {
                    from = Scored {
                        distance: d,
                        node: next,
                    };
                    improved = true;
                }
            }
            if !improved {
                return from;
            }
        }
    }

    /// The best-first search of one layer from `entries`, keeping `ef`
    /// results for which `live` holds; the result is left in
    /// `scratch.found`, nearest first.
    fn search_layer(
        &self,
        distance: &impl Fn(u32) -> f32,
        entries: &[Scored],
        ef: usize,
        layer: u8,
        live: &impl Fn(u32) -> bool,
        scratch: &mut Scratch,
    ) {
        scratch.begin(self.len());
        for &entry in entries {
            if scratch.visit(entry.node) {
                scratch.candidates.push(Reverse(entry));
                if live(entry.node) {
                    scratch.results.push(entry);
                }
            }
        }
        while scratch.results.len() > ef {
            scratch.results.pop();
        }
        while let Some(Reverse(nearest)) = scratch.candidates.pop() {
            let full = scratch.results.len() >= ef;
            if full
                && scratch
                    .results
                    .peek()
                    .is_some_and(|w| nearest.distance > w.distance)
            {
                break;
            }
            let block = self.block(nearest.node, layer);
            let count = self.links_word(block) as usize;
            for &next in self.links_slice(block, count) {
                if !scratch.visit(next) {
                    continue;
                }
                let d = distance(next);
                let worst = scratch.results.peek().map_or(f32::INFINITY, |w| w.distance);
                if scratch.results.len() < ef || d < worst {
                    let scored = Scored {
                        distance: d,
                        node: next,
                    };
                    scratch.candidates.push(Reverse(scored));
                    if live(next) {
                        scratch.results.push(scored);
                        if scratch.results.len() > ef {
                            scratch.results.pop();
                        }
                    }
                }
            }
        }
        scratch.found.clear();
        scratch.found.extend(scratch.results.drain());
        scratch.found.sort_unstable();
    }

    /// The paper's neighbour-selection heuristic: walks `candidates`
    /// (nearest first) and keeps one only when it is nearer to the base
    /// point than to every one kept so far, up to `max`.
    fn select(&self, candidates: &[Scored], max: usize, kept: &mut Vec<u32>) {
        kept.clear();
        for candidate in candidates {
            if kept.len() >= max {
                break;
            }
            let diverse = kept
                .iter()
                .all(|&other| self.node_distance(candidate.node, other) >= candidate.distance);
            if diverse {
                kept.push(candidate.node);
            }
        }
    }

    /// Adds `new` to the links of `node` on `layer`, pruning with the
    /// heuristic when the list is full.
    fn link_back(&mut self, node: u32, new: u32, layer: u8, distance: f32) {
        let capacity = if layer == 0 { self.m0() } else { self.m };
        let (upper, at) = self.block(node, layer);
        let count = self.links_word((upper, at)) as usize;
        if count < capacity {
            let words = if upper {
                &mut self.upper
            } else {
                &mut self.layer0
            };
            words[at + 1 + count] = new;
            words[at] = count as u32 + 1;
            return;
        }
        let mut candidates: Vec<Scored> = self
            .links_slice((upper, at), count)
            .iter()
            .map(|&other| Scored {
                distance: self.node_distance(node, other),
                node: other,
            })
            .collect();
        candidates.push(Scored {
            distance,
            node: new,
        });
        candidates.sort_unstable();
        let mut kept = Vec::with_capacity(capacity);
        self.select(&candidates, capacity, &mut kept);
        self.set_links(node, layer, &kept);
    }

    /// Inserts a unit vector of the graph's dimension; returns its node
    /// number (nodes are numbered in insertion order from 0).
    ///
    /// # Panics
    /// When `unit` does not have the graph's dimension (a caller's bug:
    /// vectors are validated before they reach the index).
    pub fn insert(&mut self, unit: &[f32]) -> u32 {
        assert_eq!(unit.len(), self.dimension, "vector of the wrong dimension");
        let node = self.len() as u32;
        let scale = quantize_into(unit, &mut self.codes);
        self.scales.push(scale);
        let level = self.random_level();
        self.levels.push(level);
        let m0 = self.m0();
        self.layer0.extend(std::iter::repeat_n(0, 1 + m0));
        if level == 0 {
            self.upper_start.push(NONE);
        } else {
            self.upper_start.push(self.upper.len() as u32);
            self.upper
                .extend(std::iter::repeat_n(0, level as usize * (1 + self.m)));
        }
        if self.entry == NONE {
            self.entry = node;
            self.max_level = level;
            return node;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let distance = |other: u32| self.node_distance(node, other);
        let mut nearest = Scored {
            distance: distance(self.entry),
            node: self.entry,
        };
        for layer in (level + 1..=self.max_level).rev() {
            nearest = self.greedy(&distance, nearest, layer);
        }
        let mut entries = vec![nearest];
        let mut kept = Vec::with_capacity(self.m);
        let mut links: Vec<(u8, Vec<Scored>)> = Vec::new();
        for layer in (0..=level.min(self.max_level)).rev() {
            self.search_layer(
                &distance,
                &entries,
                self.ef_construction,
                layer,
                &|_| true,
                &mut scratch,
            );
            self.select(&scratch.found, self.m, &mut kept);
            let chosen: Vec<Scored> = scratch
                .found
                .iter()
                .filter(|s| kept.contains(&s.node))
                .copied()
                .collect();
            links.push((layer, chosen));
            entries.clear();
            entries.extend_from_slice(&scratch.found);
        }
        for (layer, chosen) in links {
            let ids: Vec<u32> = chosen.iter().map(|s| s.node).collect();
            self.set_links(node, layer, &ids);
            for scored in chosen {
                self.link_back(scored.node, node, layer, scored.distance);
            }
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = node;
        }
        self.scratch = scratch;
        node
    }

    /// The `ef` nearest nodes to `query` for which `live` holds, nearest
    /// first, as `(quantised distance, node)`, appended to `out`. Dead
    /// nodes are walked through but never returned.
    pub fn search(
        &self,
        query: &Quantized,
        ef: usize,
        live: impl Fn(u32) -> bool,
        scratch: &mut Scratch,
        out: &mut Vec<Scored>,
    ) {
        if self.entry == NONE || query.codes.len() != self.dimension {
            return;
        }
        let distance = |node: u32| self.query_distance(query, node);
        let mut nearest = Scored {
            distance: distance(self.entry),
            node: self.entry,
        };
        for layer in (1..=self.max_level).rev() {
            nearest = self.greedy(&distance, nearest, layer);
        }
        self.search_layer(&distance, &[nearest], ef.max(1), 0, &live, scratch);
        out.extend_from_slice(&scratch.found);
    }

    /// The length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        1 + 4 * 5
            + 1
            + 8
            + self.levels.len()
            + 4 * self.scales.len()
            + self.codes.len()
            + 4 * (self.layer0.len() + 1 + self.upper.len())
    }

    /// The graph's encoding (all integers little-endian):
    ///
    /// ```text
    /// u8 version = 1, u32 dimension, u32 m, u32 ef_construction,
    /// u32 count, u32 entry (u32::MAX when empty), u8 max_level, u64 rng,
    /// count × u8 level, count × f32 scale, count × dimension code bytes,
    /// count × (1 + 2m) u32 layer-0 words (count, then the links),
    /// u32 upper word count, then the upper-layer words
    /// (per node of level L > 0, in node order: L × (1 + m) words)
    /// ```
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(ENCODING_VERSION);
        for value in [
            self.dimension,
            self.m,
            self.ef_construction,
            self.len(),
            self.entry as usize,
        ] {
            out.extend_from_slice(&(value as u32).to_le_bytes());
        }
        out.push(self.max_level);
        out.extend_from_slice(&self.rng.to_le_bytes());
        out.extend_from_slice(&self.levels);
        for scale in &self.scales {
            out.extend_from_slice(&scale.to_le_bytes());
        }
        out.extend_from_slice(&self.codes);
        for word in &self.layer0 {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&(self.upper.len() as u32).to_le_bytes());
        for word in &self.upper {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }

    /// Decodes [`encode`](Self::encode)'s bytes, checking every count,
    /// level, link and scale, so that no stored bytes can make a later
    /// search index out of bounds or loop. Returns the graph and the number
    /// of bytes read.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.u8()?;
        if version != ENCODING_VERSION {
            return Err(DecodeError(format!(
                "encoding version {version}, this build reads {ENCODING_VERSION}"
            )));
        }
        let dimension = reader.u32()? as usize;
        let m = reader.u32()? as usize;
        let ef_construction = reader.u32()? as usize;
        let count = reader.u32()? as usize;
        let entry = reader.u32()?;
        let max_level = reader.u8()?;
        let rng = reader.u64()?;
        if !(2..=255).contains(&m) || ef_construction == 0 || dimension == 0 {
            return Err(DecodeError("parameters out of range".into()));
        }
        let levels = reader.take(count)?.to_vec();
        let scales: Vec<f32> = reader
            .take(count.checked_mul(4).ok_or_else(too_long)?)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if !scales.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(DecodeError("a scale is not a positive number".into()));
        }
        let codes = reader
            .take(count.checked_mul(dimension).ok_or_else(too_long)?)?
            .to_vec();
        let m0 = 2 * m;
        let layer0_words = count.checked_mul(1 + m0).ok_or_else(too_long)?;
        let layer0 = reader.words(layer0_words)?;
        let upper_words = reader.u32()? as usize;
        let upper = reader.words(upper_words)?;
        let mut graph = Self {
            dimension,
            m,
            ef_construction,
            codes,
            scales,
            levels,
            layer0,
            upper_start: Vec::with_capacity(count),
            upper,
            entry,
            max_level,
            rng,
            scratch: Scratch::default(),
        };
        graph.check_links()?;
        Ok((graph, reader.at))
    }

    /// Rebuilds `upper_start` and checks every structural invariant.
    fn check_links(&mut self) -> Result<(), DecodeError> {
        let count = self.len();
        let mut next = 0usize;
        let mut highest = 0u8;
        for &level in &self.levels {
            if level > MAX_LEVEL {
                return Err(DecodeError(format!("a level above {MAX_LEVEL}")));
            }
            highest = highest.max(level);
            if level == 0 {
                self.upper_start.push(NONE);
            } else {
                self.upper_start.push(next as u32);
                next += level as usize * (1 + self.m);
            }
        }
        if next != self.upper.len() {
            return Err(DecodeError(
                "upper layers do not match the node levels".into(),
            ));
        }
        let entry_valid = if count == 0 {
            self.entry == NONE && self.max_level == 0
        } else {
            (self.entry as usize) < count
                && self.max_level == highest
                && self.levels[self.entry as usize] == highest
        };
        if !entry_valid {
            return Err(DecodeError("entry point is not a highest node".into()));
        }
        for node in 0..count as u32 {
            for layer in 0..=self.levels[node as usize] {
                let capacity = if layer == 0 { self.m0() } else { self.m };
                let block = self.block(node, layer);
                let links = self.links_word(block) as usize;
                if links > capacity {
                    return Err(DecodeError("a node has too many links".into()));
                }
                // Unused link words are zero: one graph, one encoding.
                if self.links_slice(block, capacity)[links..]
                    .iter()
                    .any(|w| *w != 0)
                {
                    return Err(DecodeError("an unused link word is not zero".into()));
                }
                for &other in self.links_slice(block, links) {
                    let valid = (other as usize) < count
                        && other != node
                        && self.levels[other as usize] >= layer;
                    if !valid {
                        return Err(DecodeError("a link to a node that is not there".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn too_long() -> DecodeError {
    DecodeError("sizes overflow".into())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| DecodeError("truncated".into()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn words(&mut self, count: usize) -> Result<Vec<u32>, DecodeError> {
        let bytes = self.take(count.checked_mul(4).ok_or_else(too_long)?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests;
