//! `minilm`: the exact all-MiniLM-L6-v2 transformer as a built-in embedder
//! (feature `minilm`, on by default). The text goes through the shared BERT
//! tokenizer ([`super::wordpiece`]), the ids through the model of the
//! `pluresdb-minilm` crate, whose 8-bit weights
//! (`models/minilm/model.safetensors`, 23.6 MB) the binary carries.
//!
//! The browser runs the same model, compiled to WebAssembly, behind the
//! JavaScript tokenizer (`src/wasm/embedders.js`), so vectors made in either
//! place are comparable: both store the model name [`MINILM_MODEL`].

use std::sync::Arc;

use pluresdb_minilm::MiniLm;

use super::wordpiece::WordPiece;
use crate::db::EmbedText;
use crate::platform::BoxFuture;

/// The exact model's name and version, as stored with what it embeds.
pub const MINILM_MODEL: &str = pluresdb_minilm::MODEL;

/// all-MiniLM-L6-v2 with its tokenizer.
pub struct MiniLmEmbedder {
    inner: Arc<Inner>,
}

struct Inner {
    tokenizer: WordPiece,
    model: MiniLm,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("model", &self.inner.model)
            .finish()
    }
}

impl MiniLmEmbedder {
    /// The model from its files: the WordPiece `vocab.txt` and the weights
    /// (`model.safetensors`, as `scripts/export-minilm.py` writes it).
    pub fn from_files(vocab: &str, weights: &[u8]) -> Result<Self, String> {
        let tokenizer = WordPiece::from_vocab(vocab)?;
        let model = MiniLm::from_bytes(weights).map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner { tokenizer, model }),
        })
    }

    /// The model the binary carries, loaded once per process and shared
    /// (loading widens the 8-bit weights: about 0.1 s and 90 MB of memory).
    pub fn built_in() -> Self {
        static VOCAB: &str = include_str!("../../models/minilm-static/vocab.txt");
        static WEIGHTS: &[u8] = include_bytes!("../../models/minilm/model.safetensors");
        static LOADED: std::sync::OnceLock<Arc<Inner>> = std::sync::OnceLock::new();
        let inner = LOADED.get_or_init(|| {
            Self::from_files(VOCAB, WEIGHTS)
                .expect("the built-in model decodes")
                .inner
        });
        Self {
            inner: Arc::clone(inner),
        }
    }

    /// The vectors' dimension (384).
    pub fn dimension(&self) -> usize {
        self.inner.model.dimension()
    }

    /// The unit-length embeddings of `texts`, in order, computed here.
    pub fn embed_now(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        self.inner.embed(texts)
    }
}

impl Inner {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let limit = pluresdb_minilm::MAX_SEQUENCE - 2;
        let sequences: Vec<Vec<u32>> = texts
            .iter()
            .map(|text| MiniLm::sequence(&self.tokenizer.token_ids(text, limit)))
            .collect();
        self.model.embed(&sequences).map_err(|e| e.to_string())
    }
}

impl EmbedText for MiniLmEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            // A transformer takes milliseconds per text: on a Tokio runtime
            // it runs on the blocking pool, not on the thread that serves
            // requests.
            if tokio::runtime::Handle::try_current().is_err() {
                return self.inner.embed(texts);
            }
            let inner = Arc::clone(&self.inner);
            let texts = texts.to_vec();
            tokio::task::spawn_blocking(move || inner.embed(&texts))
                .await
                .map_err(|e| format!("the embedder stopped: {e}"))?
        })
    }

    fn model(&self) -> Option<String> {
        Some(MINILM_MODEL.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn text_embeds_as_the_reference_does() {
        let model = MiniLmEmbedder::built_in();
        let check: serde_json::Value =
            serde_json::from_str(include_str!("../../models/minilm/check.json")).unwrap();
        for sample in check["samples"].as_array().unwrap() {
            let text = sample["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(sample["ids"].clone()).unwrap();
            let limit = pluresdb_minilm::MAX_SEQUENCE - 2;
            let ours = MiniLm::sequence(&model.inner.tokenizer.token_ids(text, limit));
            assert_eq!(ours, ids, "tokens of {text:?}");
            let reference: Vec<f32> = serde_json::from_value(sample["vector"].clone()).unwrap();
            let vector = &model.embed_now(&[text.to_string()]).unwrap()[0];
            assert!(cosine(vector, &reference) >= 0.995, "{text:?}");
        }
    }

    #[test]
    fn meaning_ranks_the_notes() {
        let model = MiniLmEmbedder::built_in();
        let notes = [
            "Pick up the kids from football practice at 5",
            "Book flights to Lisbon for the conference",
            "Buy a birthday present for Anna",
        ]
        .map(String::from);
        let vectors = model.embed_now(&notes).unwrap();
        for (query, expected) in [("travel plans", 1), ("gift ideas", 2), ("soccer", 0)] {
            let q = &model.embed_now(&[query.to_string()]).unwrap()[0];
            let best = (0..3)
                .max_by(|&a, &b| cosine(q, &vectors[a]).total_cmp(&cosine(q, &vectors[b])))
                .unwrap();
            assert_eq!(best, expected, "{query}");
        }
    }
}
