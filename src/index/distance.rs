//! Vector validation, normalisation and the cosine distance kernel.
//!
//! Vectors are normalised once, on insert, so cosine similarity is a dot
//! product. The dot product keeps eight independent accumulators over
//! fixed-size chunks, which LLVM turns into SIMD (wasm `simd128` lanes,
//! SSE/AVX natively) without `unsafe` or target-specific code.

use serde::{Deserialize, Serialize};

use super::IndexError;

/// A unit-length vector, as stored in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitVector(pub(crate) Vec<f32>);

impl UnitVector {
    /// Validates `values` against `dimension` and normalises it.
    pub fn new(values: &[f32], dimension: usize) -> Result<Self, IndexError> {
        check(values, dimension)?;
        let norm = dot(values, values).sqrt();
        if !norm.is_normal() {
            return Err(IndexError::ZeroVector);
        }
        Ok(Self(values.iter().map(|v| v / norm).collect()))
    }

    /// The components.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// Cosine similarity mapped to a score: `max(0, 1 - distance)`.
    pub fn score(&self, other: &UnitVector) -> f32 {
        score_of(cosine_distance(&self.0, &other.0))
    }
}

impl instant_distance::Point for UnitVector {
    fn distance(&self, other: &Self) -> f32 {
        cosine_distance(&self.0, &other.0)
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
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - dot(a, b)
}

/// The score of a distance: `max(0, 1 - distance)`.
pub fn score_of(distance: f32) -> f32 {
    (1.0 - distance).max(0.0)
}

/// Dot product with eight independent lanes (vectorises under simd128).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut sums = [0.0f32; LANES];
    let chunks = a.len() / LANES;
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let mut tail = 0.0;
    for i in chunks * LANES..a.len().min(b.len()) {
        tail += a[i] * b[i];
    }
    let half = [
        sums[0] + sums[4],
        sums[1] + sums[5],
        sums[2] + sums[6],
        sums[3] + sums[7],
    ];
    (half[0] + half[2]) + (half[1] + half[3]) + tail
}

#[cfg(test)]
mod tests {
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
}
