//! Vector validation and normalisation, and exact distances.
//!
//! Vectors are normalised once, on insert, so cosine similarity is a dot
//! product (the kernels, with wasm `simd128` lanes, live in
//! `pluresdb-hnsw` beside the graph that needs them most). A record's
//! embedding that is already unit length, as sentence-embedding models
//! emit them, is shared with the record instead of copied.

use std::sync::Arc;

use super::IndexError;

/// A unit-length vector, as stored in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitVector(pub(crate) Arc<[f32]>);

impl UnitVector {
    /// Validates `values` against `dimension` and normalises a copy.
    pub fn new(values: &[f32], dimension: usize) -> Result<Self, IndexError> {
        check(values, dimension)?;
        let norm = dot(values, values).sqrt();
        if !norm.is_normal() {
            return Err(IndexError::ZeroVector);
        }
        Ok(Self(values.iter().map(|v| v / norm).collect()))
    }

    /// Like [`new`](Self::new), but shares `values` when they are already
    /// unit length (within 1e-5) instead of copying them.
    pub fn shared(values: Arc<[f32]>, dimension: usize) -> Result<Self, IndexError> {
        check(&values, dimension)?;
        let squared = dot(&values, &values);
        if (squared - 1.0).abs() < 2e-5 {
            return Ok(Self(values));
        }
        Self::new(&values, dimension)
    }

    /// The components.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// True when `self` and `other` share one allocation.
    pub fn shares(&self, other: &Arc<[f32]>) -> bool {
        Arc::ptr_eq(&self.0, other)
    }

    /// Cosine similarity mapped to a score: `max(0, 1 - distance)`.
    pub fn score(&self, other: &UnitVector) -> f32 {
        score_of(cosine_distance(&self.0, &other.0))
    }
}

/// Rejects empty vectors, wrong dimensions and non-finite components.
pub fn check(values: &[f32], dimension: usize) -> Result<(), IndexError> {
    if values.is_empty() {
        return Err(IndexError::Empty);
    }
    if values.len() != dimension {
        return Err(IndexError::DimensionMismatch {
            expected: dimension,
            found: values.len(),
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(IndexError::NotFinite { index });
    }
    Ok(())
}

/// `1 - a·b` for unit vectors: 0 for identical directions, 2 for opposite.
#[inline(always)]
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - dot(a, b)
}

/// The score of a distance: `max(0, 1 - distance)`.
pub fn score_of(distance: f32) -> f32 {
    (1.0 - distance).max(0.0)
}

/// Dot product (SIMD kernels of `pluresdb-hnsw`).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    pluresdb_hnsw::dot(a, b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum() {
        for len in [1, 7, 8, 9, 31, 384, 385] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn vectors_are_checked_and_normalised() {
        let v = UnitVector::new(&[3.0, 4.0], 2).unwrap();
        assert_eq!(v.as_slice(), &[0.6, 0.8]);
        assert!((v.score(&v) - 1.0).abs() < 1e-6);
        let opposite = UnitVector::new(&[-3.0, -4.0], 2).unwrap();
        assert_eq!(v.score(&opposite), 0.0, "clamped at zero");
        assert!(matches!(
            UnitVector::new(&[1.0], 2),
            Err(IndexError::DimensionMismatch {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(UnitVector::new(&[], 0), Err(IndexError::Empty)));
        assert!(matches!(
            UnitVector::new(&[1.0, f32::NAN], 2),
            Err(IndexError::NotFinite { index: 1 })
        ));
        assert!(matches!(
            UnitVector::new(&[0.0, 0.0], 2),
            Err(IndexError::ZeroVector)
        ));
    }

    /// A pseudo-random unit vector (xorshift, deterministic per seed).
    pub(crate) fn unit(seed: u64, dim: usize) -> UnitVector {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect();
        UnitVector::new(&values, dim).unwrap()
    }

    #[test]
    fn unit_embeddings_are_shared_and_others_copied() {
        let unit: Arc<[f32]> = Arc::from(vec![0.6f32, 0.8]);
        let shared = UnitVector::shared(unit.clone(), 2).unwrap();
        assert!(shared.shares(&unit));
        let long: Arc<[f32]> = Arc::from(vec![3.0f32, 4.0]);
        let copied = UnitVector::shared(long.clone(), 2).unwrap();
        assert!(!copied.shares(&long));
        assert_eq!(copied.as_slice(), &[0.6, 0.8]);
        assert!(matches!(
            UnitVector::shared(Arc::from(vec![f32::NAN, 1.0]), 2),
            Err(IndexError::NotFinite { index: 0 })
        ));
    }
}
