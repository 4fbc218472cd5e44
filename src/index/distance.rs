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
    #[inline(always)]
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
#[inline(always)]
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - dot(a, b)
}

/// The score of a distance: `max(0, 1 - distance)`.
pub fn score_of(distance: f32) -> f32 {
    (1.0 - distance).max(0.0)
}

/// Dot product. Under wasm `simd128` it runs on `f32x4` lanes (two
/// accumulators, eight floats per step); elsewhere it is a plain loop with
/// eight independent accumulators, which LLVM vectorises for SSE/AVX.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    simd::dot(&a[..len], &b[..len])
}

// The one place the crate uses `unsafe`: safe wasm intrinsics can only
// build a vector lane by lane, four times slower than one `v128.load`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[allow(unsafe_code)]
mod simd {
    use core::arch::wasm32::{f32x4, f32x4_add, f32x4_extract_lane, f32x4_mul, v128, v128_load};

    #[inline(always)]
    fn load(x: &[f32]) -> v128 {
        assert!(x.len() >= 4);
        // SAFETY: `x` holds at least four f32s (16 bytes), checked above, and
        // wasm loads have no alignment requirement.
        unsafe { v128_load(x.as_ptr().cast::<v128>()) }
    }

    // Plain index loops and forced inlining: the package is built for size
    // (opt-level "z"), which would otherwise leave iterator adapters as
    // calls in the hottest loop of vector search.
    #[inline(always)]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut low = f32x4(0.0, 0.0, 0.0, 0.0);
        let mut high = low;
        let len = a.len().min(b.len());
        let whole = len - len % 8;
        let mut i = 0;
        while i < whole {
            low = f32x4_add(low, f32x4_mul(load(&a[i..i + 4]), load(&b[i..i + 4])));
            high = f32x4_add(
                high,
                f32x4_mul(load(&a[i + 4..i + 8]), load(&b[i + 4..i + 8])),
            );
            i += 8;
        }
        let sum = f32x4_add(low, high);
        let mut tail = 0.0f32;
        while i < len {
            tail += a[i] * b[i];
            i += 1;
        }
        (f32x4_extract_lane::<0>(sum) + f32x4_extract_lane::<2>(sum))
            + (f32x4_extract_lane::<1>(sum) + f32x4_extract_lane::<3>(sum))
            + tail
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod simd {
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        const LANES: usize = 8;
        let mut sums = [0.0f32; LANES];
        let mut a_chunks = a.chunks_exact(LANES);
        let mut b_chunks = b.chunks_exact(LANES);
        for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
            for lane in 0..LANES {
                sums[lane] += x[lane] * y[lane];
            }
        }
        let tail: f32 = a_chunks
            .remainder()
            .iter()
            .zip(b_chunks.remainder())
            .map(|(x, y)| x * y)
            .sum();
        let quad = [
            sums[0] + sums[4],
            sums[1] + sums[5],
            sums[2] + sums[6],
            sums[3] + sums[7],
        ];
        (quad[0] + quad[2]) + (quad[1] + quad[3]) + tail
    }
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
