//! Vector search on a [`Database`]: embeddings with records, embedders,
//! search with filters, and index upkeep (sealing and merging segments off
//! the database lock, persisting them, reconciling after a reopen).

use std::sync::Arc;

use serde_json::Value;

use super::{Database, Shared, State};
use crate::crdt::{Change, CrdtOperation, Document};
use crate::error::{Error, InputError, Result};
use crate::index::{IndexStats, VectorIndex};
use crate::platform::{BoxFuture, MaybeSend, MaybeSync};
use crate::query::Query;
use crate::storage::{CommitBatch, Storage};

/// Turns texts into embedding vectors: a Rust trait natively, a JavaScript
/// async function in the browser. Attached with
/// [`OpenOptions::embedder`](super::OpenOptions::embedder).
pub trait EmbedText: MaybeSend + MaybeSync {
    /// One vector per text, all of the same dimension.
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, std::result::Result<Vec<Vec<f32>>, String>>;

    /// The model's name and version (`minilm-static@1`, `hash@1/256`), when
    /// it has one: a database remembers the model that filled it and
    /// refuses to open with another, whose vectors would not be comparable.
    fn model(&self) -> Option<String> {
        None
    }
}

/// What to search with.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchQuery {
    /// A vector of the database's dimension.
    Vector(Vec<f32>),
    /// Text, embedded with the attached embedder.
    Text(String),
}

/// A vector search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// The query vector or text.
    pub query: SearchQuery,
    /// How many results at most (default 10).
    pub k: usize,
    /// Drop results scoring below this.
    pub min_score: Option<f32>,
    /// Only records matching this query's filters (and prefix).
    pub filter: Option<Query>,
    /// Search breadth (at least `k`); the index's `ef_search` when `None`.
    pub ef: Option<usize>,
}

impl SearchRequest {
    /// The 10 nearest neighbours of `vector`.
    pub fn vector(vector: Vec<f32>) -> Self {
        Self {
            query: SearchQuery::Vector(vector),
            k: 10,
            min_score: None,
            filter: None,
            ef: None,
        }
    }

    /// The 10 records nearest to `text` (needs an embedder).
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            query: SearchQuery::Text(text.into()),
            ..Self::vector(Vec::new())
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The record id.
    pub id: String,
    /// `max(0, 1 - cosine distance)`: 1 is identical.
    pub score: f32,
    /// The record's document.
    pub data: Document,
}

/// The text an embedder sees for a document: the named top-level string
/// fields (all of them when `fields` is empty), one per line; a document
/// that is itself a string is that string.
pub fn text_of(document: &Value, fields: &[String]) -> String {
    match document {
        Value::String(text) => text.clone(),
        Value::Object(object) => {
            // The parts joined with newlines.
            let mut text = String::new();
            let mut first = true;
            let mut add = |part: &str| {
                if !std::mem::take(&mut first) {
                    text.push('\n');
                }
                text.push_str(part);
            };
            if fields.is_empty() {
                object.values().filter_map(Value::as_str).for_each(&mut add);
            } else {
                fields
                    .iter()
                    .filter_map(|f| object.get(f).and_then(Value::as_str))
                    .for_each(&mut add);
            }
            text
        }
        _ => String::new(),
    }
}

fn embedder_error(message: impl Into<String>) -> Error {
    Error::Embedder(message.into())
}

impl<S: Storage> Database<S> {
    /// Stores `value` under `id` with `vector` as its embedding. The vector
    /// must have the database's dimension (set by the first vector) and only
    /// finite components.
    pub async fn put_with_embedding(&self, id: &str, value: Value, vector: Vec<f32>) -> Result<()> {
        let document = Document::from_value(&value)?;
        self.put_document(id, document, Some(vector.into())).await
    }

    /// Runs the attached embedder over one text.
    pub(crate) async fn embed_one(&self, text: String) -> Result<Vec<f32>> {
        let embedder = self.shared.embedder.as_ref().ok_or_else(|| {
            embedder_error(
                "no embedder is attached: pass a vector, or open the database with an embedder",
            )
        })?;
        let texts = [text];
        let mut vectors = embedder.embed(&texts).await.map_err(embedder_error)?;
        if vectors.len() != 1 {
            return Err(embedder_error(format!(
                "the embedder returned {} vectors for 1 text",
                vectors.len()
            )));
        }
        Ok(vectors.remove(0))
    }

    /// When an embedder is attached: the embedding of `document`'s text
    /// fields (`None` when they hold no text).
    pub(crate) async fn auto_embedding(&self, document: &Document) -> Result<Option<Arc<[f32]>>> {
        if self.shared.embedder.is_none() {
            return Ok(None);
        }
        let text = text_of(&document.to_value(), &self.shared.embed_fields);
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(self.embed_one(text).await?.into()))
    }

    /// One embedding (or `None`) per entry, from a single embedder call; all
    /// `None` without an embedder.
    pub(crate) async fn auto_embeddings(
        &self,
        entries: &[(String, Document)],
    ) -> Result<Vec<Option<Arc<[f32]>>>> {
        let Some(embedder) = &self.shared.embedder else {
            return Ok(vec![None; entries.len()]);
        };
        let texts: Vec<String> = entries
            .iter()
            .map(|(_, document)| text_of(&document.to_value(), &self.shared.embed_fields))
            .collect();
        let wanted: Vec<String> = texts
            .iter()
            .filter(|t| !t.trim().is_empty())
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(vec![None; entries.len()]);
        }
        let mut vectors = embedder
            .embed(&wanted)
            .await
            .map_err(embedder_error)?
            .into_iter();
        if vectors.len() != wanted.len() {
            return Err(embedder_error(format!(
                "the embedder returned {} vectors for {} texts",
                vectors.len(),
                wanted.len()
            )));
        }
        Ok(texts
            .iter()
            .map(|text| {
                if text.trim().is_empty() {
                    None
                } else {
                    vectors.next().map(Arc::from)
                }
            })
            .collect())
    }

    /// The records nearest to the query, best first, with their data.
    pub async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>> {
        if request.k == 0 {
            return Err(InputError::InvalidArgument("k must be at least 1".into()).into());
        }
        let max = crate::index::MAX_SEARCH_BREADTH;
        if request.k > max || request.ef.is_some_and(|ef| ef > max) {
            return Err(
                InputError::InvalidArgument(format!("k and ef must be at most {max}")).into(),
            );
        }
        if let Some(min) = request.min_score {
            if !min.is_finite() {
                return Err(
                    InputError::InvalidArgument("minScore must be a finite number".into()).into(),
                );
            }
        }
        let vector = match &request.query {
            SearchQuery::Vector(vector) => vector.clone(),
            SearchQuery::Text(text) => self.embed_one(text.clone()).await?,
        };
        // With a filter, fetch more candidates until enough pass it (or
        // everything was considered).
        let mut fetch = if request.filter.is_some() {
            request.k.saturating_mul(4).min(max)
        } else {
            request.k
        };
        loop {
            let (neighbours, indexed) = {
                let mut state = self.readable()?;
                (
                    state.index.search(&vector, fetch, request.ef)?,
                    state.index.len(),
                )
            };
            let exhausted = neighbours.len() < fetch;
            let candidates: Vec<_> = neighbours
                .into_iter()
                .take_while(|n| request.min_score.is_none_or(|min| n.score >= min))
                .filter(|n| {
                    request
                        .filter
                        .as_ref()
                        .is_none_or(|filter| n.id.starts_with(filter.prefix.as_str()))
                })
                .collect();
            // The candidates' documents, read back from storage where they
            // were left there.
            let ids: Vec<Arc<str>> = candidates.iter().map(|n| n.id.clone()).collect();
            let documents = self.live_documents(&ids).await?;
            let mut hits = Vec::with_capacity(request.k);
            for (neighbour, data) in candidates.into_iter().zip(documents) {
                let Some(data) = &data else {
                    continue;
                };
                if let Some(filter) = &request.filter {
                    if !filter.matches_document(data) {
                        continue;
                    }
                }
                hits.push(SearchHit {
                    id: neighbour.id.to_string(),
                    score: neighbour.score,
                    data: data.clone(),
                });
                if hits.len() == request.k {
                    break;
                }
            }
            if hits.len() == request.k || exhausted || fetch >= indexed {
                return Ok(hits);
            }
            let wider = fetch.saturating_mul(4).min(indexed.max(1)).min(max);
            if wider == fetch {
                // As wide as a search may go: these are the hits.
                return Ok(hits);
            }
            fetch = wider;
        }
    }

    /// The live document of each of `ids`, in order (`None`: deleted or
    /// gone), read back from storage where it was left there.
    #[cfg(not(target_arch = "wasm32"))]
    async fn live_documents(&self, ids: &[Arc<str>]) -> Result<Vec<Option<Document>>> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        self.visit_with_bodies(ids, |record| {
            found.insert(record.shared_id().clone(), record.data().cloned());
            true
        })
        .await?;
        Ok(ids.iter().map(|id| found.remove(id).flatten()).collect())
    }

    /// The browser build's `live_documents`: every document is in memory.
    #[cfg(target_arch = "wasm32")]
    async fn live_documents(&self, ids: &[Arc<str>]) -> Result<Vec<Option<Document>>> {
        let state = self.readable()?;
        Ok(ids.iter().map(|id| state.store.get(id).cloned()).collect())
    }

    /// Index sizes, for status output.
    pub fn index_stats(&self) -> IndexStats {
        self.shared.state().index.stats()
    }

    /// Exact (brute-force) nearest neighbours, ignoring the HNSW graphs: the
    /// ground truth for recall measurements.
    pub fn exact_search(&self, vector: &[f32], k: usize) -> Result<Vec<(String, f32)>> {
        let state = self.readable()?;
        Ok(state
            .index
            .exact_search(vector, k)?
            .into_iter()
            .map(|n| (n.id.to_string(), n.score))
            .collect())
    }

    /// Seals every vector not yet in an HNSW segment and waits until all
    /// seals and merges are done (they otherwise run in the background
    /// after commits, once enough vectors are waiting). A flush also merges
    /// as few as two segments of similar size, where the background waits
    /// for four: after a bulk load, fewer segments are searched per query.
    pub async fn flush_index(&self) -> Result<()> {
        let (reply, receiver) = futures::channel::oneshot::channel();
        self.jobs
            .unbounded_send(super::Job::Flush(reply))
            .map_err(|_| Error::Storage(crate::error::StorageError::Closed))?;
        receiver
            .await
            .map_err(|_| Error::Storage(crate::error::StorageError::Closed))
    }
}

/// Brings the index up to date with changed records.
/// `may_carry_vectors` is false when no new record state can hold a vector
/// (no operation of the batch has one and nothing was merged in from
/// storage); with an empty index there is then nothing to do.
pub(super) fn sync_index(state: &mut State, changes: &[Change], may_carry_vectors: bool) {
    let State { index, store, .. } = state;
    if index.is_empty() && !may_carry_vectors {
        return;
    }
    for change in changes {
        let winner = store.record(&change.id).map(|r| r.winner());
        match winner {
            Some(version) if version.data.is_some() && version.embedding.is_some() => {
                let embedding = version.embedding.clone().expect("checked");
                if let Err(error) = index.upsert(change.id.clone(), version.dot(), embedding) {
                    // The record is stored; only its vector is left out.
                    tracing::warn!(id = %change.id, %error, "embedding not indexed");
                    index.remove(&change.id);
                }
            }
            _ if index.is_empty() => {}
            _ => {
                index.remove(&change.id);
            }
        }
    }
}

/// Whether any of `ops` carries a vector.
pub(super) fn carries_vectors(ops: &[CrdtOperation]) -> bool {
    ops.iter().any(|op| op.version.embedding.is_some())
}

fn segment_key() -> String {
    let mut bytes = [0u8; 8];
    crate::platform::fill_random(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("seg/{hex}")
}

/// Seals a full growing segment (any non-empty one when `flush`) and merges
/// small segments, building each new segment outside the lock, persisting
/// it, then installing it.
pub(super) async fn maintain<S: Storage>(shared: &Shared<S>, flush: bool) {
    let flushing = flush;
    let mut flush = flush;
    loop {
        let job = {
            let state = shared.state();
            if state.closed {
                return;
            }
            let threshold = if flush {
                1
            } else {
                state.index.config().seal_threshold
            };
            flush = false;
            state
                .index
                .take_seal_job_at(segment_key(), threshold)
                .or_else(|| {
                    state
                        .index
                        .take_merge_job_of(segment_key(), if flushing { 2 } else { 4 })
                })
        };
        let Some(job) = job else {
            return;
        };
        let (segment, replaces) = crate::platform::run_blocking(move || job.build()).await;
        let encoded = segment.encode();
        let generation = shared.state().generation;
        let batch = CommitBatch {
            expected_generation: generation,
            segments: vec![(segment.key.clone(), encoded)],
            removed_segments: replaces.clone(),
            ..Default::default()
        };
        match shared.storage.commit(batch).await {
            Ok(receipt) => {
                let mut state = shared.state();
                state.generation = receipt.generation;
                state.index.install_segment(segment, replaces);
            }
            Err(error) => {
                // The vectors stay in the growing segment and are sealed at
                // a later commit.
                tracing::warn!(%error, "persisting an index segment failed");
                return;
            }
        }
    }
}

/// Builds the index at open: persisted segments reconciled with records.
pub(super) fn build_index(
    config: crate::index::IndexConfig,
    stored: Vec<(String, Vec<u8>)>,
    store: &crate::crdt::CrdtStore,
) -> (VectorIndex, Vec<String>) {
    let mut index = VectorIndex::new(config);
    let records = store.records().filter_map(|record| {
        let winner = record.winner();
        match (&winner.data, &winner.embedding) {
            (Some(_), Some(embedding)) => {
                Some((record.shared_id().clone(), winner.dot(), embedding.clone()))
            }
            _ => None,
        }
    });
    let dropped = index.reconcile(stored, records);
    (index, dropped)
}
