//! `minilm-static`: a static sentence-embedding model distilled from
//! all-MiniLM-L6-v2 (`models/minilm-static/`, made by
//! `scripts/distill-static-model.py`, model2vec's method): a text is split
//! into BERT uncased WordPiece tokens, the tokens' rows of a 30,522 × 256
//! table are averaged and the mean is scaled to unit length.
//!
//! The same model runs in the browser in JavaScript (`src/wasm/embedders.js`);
//! both reproduce the Python reference's tokens and vectors
//! (`models/minilm-static/check.json`), so a record embedded in a browser
//! and one embedded natively are comparable. The CLI carries the table in
//! its binary ([`StaticEmbedder::built_in`]).

use super::wordpiece::WordPiece;
use crate::db::EmbedText;
use crate::platform::BoxFuture;

/// The built-in model's name and version, as stored with what it embeds.
pub const STATIC_MODEL: &str = "minilm-static@1";
const MAGIC: &[u8; 8] = b"PLDBSTM1";
/// Tokens of a text that count, as a transformer reads at most so many
/// (MiniLM itself 256); beyond them a text costs no more to embed, however
/// long a request made it.
pub const MAX_TOKENS: usize = 512;

/// A static embedding model: a WordPiece vocabulary and one row per token.
pub struct StaticEmbedder {
    tokenizer: WordPiece,
    dimension: usize,
    table: Vec<f32>,
}

impl std::fmt::Debug for StaticEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedder")
            .field("tokens", &self.tokenizer.vocabulary_size())
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

impl StaticEmbedder {
    /// A model from its files: `vocab.txt` (one token per line, in id
    /// order) and `embeddings.bin` (`PLDBSTM1`, u32 vocabulary size, u32
    /// dimension, then the rows as little-endian half floats).
    pub fn from_files(vocab: &str, table: &[u8]) -> Result<Self, String> {
        if table.len() < 16 || &table[..8] != MAGIC {
            return Err("not a static embedding table".into());
        }
        let word = |at: usize| {
            u32::from_le_bytes([table[at], table[at + 1], table[at + 2], table[at + 3]])
        };
        let (size, dimension) = (word(8) as usize, word(12) as usize);
        let expected = size
            .checked_mul(dimension)
            .and_then(|values| values.checked_mul(2))
            .and_then(|bytes| bytes.checked_add(16));
        if expected != Some(table.len()) || dimension == 0 {
            return Err(format!(
                "static embedding table of {} bytes does not match its header ({size} × {dimension})",
                table.len()
            ));
        }
        let tokenizer = WordPiece::from_vocab(vocab)?;
        if tokenizer.vocabulary_size() != size {
            return Err(format!(
                "the vocabulary has {} tokens, the table {size}",
                tokenizer.vocabulary_size()
            ));
        }
        let table = table[16..]
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        Ok(Self {
            tokenizer,
            dimension,
            table,
        })
    }

    /// The model the CLI carries in its binary.
    pub fn built_in() -> Self {
        static VOCAB: &str = include_str!("../../models/minilm-static/vocab.txt");
        static TABLE: &[u8] = include_bytes!("../../models/minilm-static/embeddings.bin");
        Self::from_files(VOCAB, TABLE).expect("the built-in model decodes")
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The WordPiece ids of `text` (no `[CLS]`/`[SEP]`), at most
    /// [`MAX_TOKENS`].
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.token_ids(text, MAX_TOKENS)
    }

    /// The unit-length embedding of `text` (zeros when no token has a row).
    pub fn embed_text(&self, text: &str) -> Vec<f32> {
        let mut sum = vec![0f64; self.dimension];
        for id in self.token_ids(text) {
            let row = &self.table[id as usize * self.dimension..][..self.dimension];
            for (total, value) in sum.iter_mut().zip(row) {
                *total += f64::from(*value);
            }
        }
        let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
        sum.iter()
            .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
            .collect()
    }
}

impl EmbedText for StaticEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move { Ok(texts.iter().map(|t| self.embed_text(t)).collect()) })
    }

    fn model(&self) -> Option<String> {
        Some(STATIC_MODEL.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_vectors_match_the_python_reference() {
        let model = StaticEmbedder::built_in();
        assert_eq!(model.dimension(), 256);
        let check: serde_json::Value =
            serde_json::from_str(include_str!("../../models/minilm-static/check.json")).unwrap();
        let samples = check["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 20);
        for sample in samples {
            let text = sample["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(sample["ids"].clone()).unwrap();
            assert_eq!(model.token_ids(text), ids, "tokens of {text:?}");
            let vector = model.embed_text(text);
            for (d, expected) in sample["embedding_head"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let expected = expected.as_f64().unwrap() as f32;
                assert!(
                    (vector[d] - expected).abs() < 1e-5,
                    "{text:?} component {d}: {} against {expected}",
                    vector[d]
                );
            }
        }
    }

    #[test]
    fn meaning_not_words_ranks_the_notes() {
        let model = StaticEmbedder::built_in();
        let notes = [
            "Pick up the kids from football practice at 5",
            "Book flights to Lisbon for the conference",
            "Buy a birthday present for Anna",
        ];
        let vectors: Vec<Vec<f32>> = notes.iter().map(|n| model.embed_text(n)).collect();
        for (query, expected) in [("travel plans", 1), ("gift ideas", 2), ("soccer", 0)] {
            let q = model.embed_text(query);
            let best = (0..3)
                .max_by(|a, b| {
                    crate::index::dot(&q, &vectors[*a])
                        .total_cmp(&crate::index::dot(&q, &vectors[*b]))
                })
                .unwrap();
            assert_eq!(best, expected, "{query:?} found {:?}", notes[best]);
        }
    }

    proptest::proptest! {
        /// Any text, from any script or none, embeds without a panic to a
        /// unit vector or to zeros (texts arrive from the network: HTTP
        /// search, synced records).
        #[test]
        fn any_text_embeds_to_a_unit_vector_or_zeros(text in "\\PC{0,80}|[\\x00-\\u{FFFF}]{0,40}") {
            static MODEL: std::sync::OnceLock<StaticEmbedder> = std::sync::OnceLock::new();
            let model = MODEL.get_or_init(StaticEmbedder::built_in);
            let vector = model.embed_text(&text);
            let norm: f32 = vector.iter().map(|x| x * x).sum();
            proptest::prop_assert!(norm == 0.0 || (norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
    }

    #[test]
    fn only_the_first_512_tokens_count() {
        let model = StaticEmbedder::built_in();
        // A text as large as an HTTP body may be (16 MiB), starting with
        // words of 100 characters that split into single letters, the
        // tokenizer's worst case.
        let word = "q".repeat(99) + "x";
        let head = [word.as_str(); 6].join(" ");
        assert!(model.token_ids(&head).len() >= MAX_TOKENS);
        // What follows the first 512 tokens changes nothing.
        let tail = vec!["book flights to lisbon"; 800_000].join(" ");
        let huge = format!("{head} {tail}");
        assert!(huge.len() > 16 << 20);
        assert_eq!(model.token_ids(&huge).len(), MAX_TOKENS);
        assert_eq!(model.embed_text(&huge), model.embed_text(&head));
        assert_ne!(model.embed_text(&tail), model.embed_text(&head));
    }

    #[test]
    fn bad_model_files_are_refused() {
        assert!(StaticEmbedder::from_files("a\n", b"nope").is_err());
        let mut table = MAGIC.to_vec();
        table.extend_from_slice(&2u32.to_le_bytes());
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&[0, 0]);
        assert!(
            StaticEmbedder::from_files("[UNK]\nb\n", &table).is_err(),
            "short table"
        );
        table.extend_from_slice(&[0, 0x3C]);
        assert!(
            StaticEmbedder::from_files("[UNK]\n", &table).is_err(),
            "vocabulary too short"
        );
        let model = StaticEmbedder::from_files("[UNK]\nb\n", &table).unwrap();
        assert_eq!(model.embed_text("b"), vec![1.0]);
        assert_eq!(model.embed_text(""), vec![0.0], "no token: zeros");
    }
}
