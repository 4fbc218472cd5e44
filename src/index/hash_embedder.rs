//! A small embedder that needs no model: hashed word and character
//! trigram features ("feature hashing", as in Vowpal Wabbit and fastText's
//! subword buckets), log-scaled term frequencies, L2-normalised.
//!
//! It captures lexical similarity (shared words, word stems and typos share
//! trigrams), not meaning; it is the offline default of the demo app, and a
//! deterministic embedder for tests. Use a real model for semantic search.

use crate::db::EmbedText;
use crate::platform::BoxFuture;

/// Hashed word + character-trigram embeddings of a fixed dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashEmbedder {
    dimension: usize,
}

impl Default for HashEmbedder {
    fn default() -> Self {
        Self { dimension: 256 }
    }
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl HashEmbedder {
    /// An embedder producing `dimension`-d vectors (at least 8).
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension: dimension.max(8),
        }
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    fn add(&self, vector: &mut [f32], feature: &[u8], weight: f32) {
        let hash = fnv1a(feature, 0x51ED);
        let bucket = (hash % self.dimension as u64) as usize;
        // A second hash bit picks the sign, so collisions cancel on average.
        let sign = if (hash >> 63) == 0 { 1.0 } else { -1.0 };
        vector[bucket] += sign * weight;
    }

    /// Embeds one text. An empty text gives the zero vector.
    pub fn embed_text(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; self.dimension];
        let lower = text.to_lowercase();
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            self.add(&mut vector, word.as_bytes(), 1.0);
            let padded: Vec<char> = std::iter::once('<')
                .chain(word.chars())
                .chain(std::iter::once('>'))
                .collect();
            for window in padded.windows(3) {
                let trigram: String = window.iter().collect();
                self.add(&mut vector, trigram.as_bytes(), 0.5);
            }
        }
        // Log-scale the counts so one repeated word does not dominate.
        for value in &mut vector {
            *value = value.signum() * value.abs().ln_1p();
        }
        let norm = super::dot(&vector, &vector).sqrt();
        if norm > 0.0 {
            for value in &mut vector {
                *value /= norm;
            }
        }
        vector
    }
}

impl EmbedText for HashEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move { Ok(texts.iter().map(|t| self.embed_text(t)).collect()) })
    }

    fn model(&self) -> Option<String> {
        Some(format!("hash@1/{}", self.dimension))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot;

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let embedder = HashEmbedder::default();
        let a = embedder.embed_text("Buy oat milk and bread");
        let b = embedder.embed_text("buy bread and oatmilk");
        let c = embedder.embed_text("Quarterly tax report for the accountant");
        assert!(dot(&a, &b) > dot(&a, &c) + 0.2);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert_eq!(embedder.embed_text(""), vec![0.0; 256]);
        assert_eq!(
            a,
            embedder.embed_text("Buy oat milk and bread"),
            "deterministic"
        );
    }
}
