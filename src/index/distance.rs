//! Vector validation, normalisation, quantisation and the distance kernels.
//!
//! Vectors are normalised once, on insert, so cosine similarity is a dot
//! product. Under wasm `simd128` the dot products (of `f32`s and of the
//! quantised bytes) use explicit 128-bit lanes; natively they are plain
//! loops over independent accumulators that LLVM vectorises.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::IndexError;

/// A unit-length vector, as stored in the index.
#[derive(Debug, Clone, PartialEq)]
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

/// A unit vector quantised to signed bytes, the point type of the HNSW
/// graphs: `value ≈ code × scale` with `scale = max |value| / 127`.
///
/// Building a graph computes millions of distances between stored vectors;
/// bytes are a quarter of the memory traffic of `f32` and their dot product
/// runs on 16 lanes instead of 4. The error of one distance is around 1e-3
/// for 384 dimensions, far below the gaps between neighbours that decide a
/// graph's edges; searches re-score their candidates with the exact `f32`
/// vectors, so results and scores are exact for the candidates found.
///
/// Serialised (inside the graph) as one byte string: the scale as a
/// little-endian `f32`, then the codes.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedVector {
    scale: f32,
    /// The `i8` codes as two's-complement bytes, as they are serialised and
    /// as the kernels load them.
    codes: Vec<u8>,
}

impl QuantizedVector {
    /// The largest code magnitude (symmetric: -128 is never used).
    const LEVELS: f32 = 127.0;

    /// Quantises `vector`.
    pub fn new(vector: &UnitVector) -> Self {
        // Plain loops: the iterator adapters would each add code to the
        // downloaded WebAssembly.
        let mut max = 0.0f32;
        for value in &vector.0 {
            max = max.max(value.abs());
        }
        // A unit vector has a component of at least 1/sqrt(len) in magnitude.
        let scale = max / Self::LEVELS;
        let mut codes = Vec::with_capacity(vector.0.len());
        for value in &vector.0 {
            // |value / scale| <= 127 up to rounding, and the cast saturates.
            let code = (value / scale).round_ties_even() as i8;
            codes.push(code.to_le_bytes()[0]);
        }
        Self { scale, codes }
    }

    /// The number of components.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// True for a vector without components (never built by [`Self::new`]).
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

impl Serialize for QuantizedVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(4 + self.codes.len());
        bytes.extend_from_slice(&self.scale.to_le_bytes());
        bytes.extend_from_slice(&self.codes);
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for QuantizedVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;

        impl Visitor<'_> for BytesVisitor {
            type Value = QuantizedVector;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a quantised vector (scale and byte codes)")
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<QuantizedVector, E> {
                let Some((scale, codes)) = bytes.split_first_chunk::<4>() else {
                    return Err(E::invalid_length(bytes.len(), &self));
                };
                let scale = f32::from_le_bytes(*scale);
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(E::custom("quantised vector scale is not a positive number"));
                }
                Ok(QuantizedVector {
                    scale,
                    codes: codes.to_vec(),
                })
            }
        }

        deserializer.deserialize_bytes(BytesVisitor)
    }
}

impl instant_distance::Point for QuantizedVector {
    #[inline(always)]
    fn distance(&self, other: &Self) -> f32 {
        1.0 - self.scale * other.scale * simd::dot_i8(&self.codes, &other.codes) as f32
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
    use core::arch::wasm32::{
        f32x4, f32x4_add, f32x4_extract_lane, f32x4_mul, i16x8_extmul_high_i8x16,
        i16x8_extmul_low_i8x16, i32x4, i32x4_add, i32x4_extadd_pairwise_i16x8, i32x4_extract_lane,
        v128, v128_load,
    };

    /// Loads the first 16 bytes of `x` (four `f32`s or sixteen `i8`s).
    #[inline(always)]
    fn load<T: Copy>(x: &[T]) -> v128 {
        assert!(core::mem::size_of_val(x) >= 16);
        // SAFETY: `x` holds at least 16 bytes, checked above, and wasm loads
        // have no alignment requirement.
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

    /// Dot product of `i8` vectors (given as two's-complement bytes): 16
    /// lanes multiplied into `i16` (no product of two `i8`s overflows) and
    /// summed pairwise into `i32`.
    #[inline(always)]
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
        let mut sum = i32x4(0, 0, 0, 0);
        let len = a.len().min(b.len());
        let whole = len - len % 16;
        let mut i = 0;
        while i < whole {
            let x = load(&a[i..i + 16]);
            let y = load(&b[i..i + 16]);
            sum = i32x4_add(
                sum,
                i32x4_add(
                    i32x4_extadd_pairwise_i16x8(i16x8_extmul_low_i8x16(x, y)),
                    i32x4_extadd_pairwise_i16x8(i16x8_extmul_high_i8x16(x, y)),
                ),
            );
            i += 16;
        }
        let mut tail = 0i32;
        while i < len {
            tail += i32::from(a[i] as i8) * i32::from(b[i] as i8);
            i += 1;
        }
        i32x4_extract_lane::<0>(sum)
            + i32x4_extract_lane::<1>(sum)
            + i32x4_extract_lane::<2>(sum)
            + i32x4_extract_lane::<3>(sum)
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

    /// Dot product of `i8` vectors given as two's-complement bytes, in
    /// `i32` (vectorised by LLVM).
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| i32::from(*x as i8) * i32::from(*y as i8))
            .sum()
    }
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
    fn quantised_distance_tracks_the_exact_one() {
        use instant_distance::Point;
        let mut worst = 0.0f32;
        for dim in [3, 16, 17, 384] {
            for seed in 1..200 {
                let (a, b) = (unit(seed, dim), unit(seed + 1000, dim));
                let exact = cosine_distance(a.as_slice(), b.as_slice());
                let quantised = QuantizedVector::new(&a).distance(&QuantizedVector::new(&b));
                worst = worst.max((exact - quantised).abs());
            }
            let a = unit(7, dim);
            let same = QuantizedVector::new(&a).distance(&QuantizedVector::new(&a));
            assert!(same.abs() < 1e-2, "distance to itself {same} at {dim}-d");
        }
        assert!(worst < 1e-2, "worst quantisation error {worst}");
    }

    #[test]
    fn quantised_vectors_serialise_as_bytes_and_reject_a_bad_scale() {
        let config = crate::index::segment::bincode_config();
        let vector = QuantizedVector::new(&unit(3, 20));
        assert!(vector.codes.iter().any(|code| (*code as i8) < 0));
        let bytes = bincode::serde::encode_to_vec(&vector, config).unwrap();
        // u64 length, f32 scale, one byte per component.
        assert_eq!(bytes.len(), 8 + 4 + 20);
        let (decoded, read): (QuantizedVector, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!((decoded, read), (vector, bytes.len()));
        for scale in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
            let mut bad = bytes.clone();
            bad[8..12].copy_from_slice(&scale.to_le_bytes());
            let decoded: Result<(QuantizedVector, usize), _> =
                bincode::serde::decode_from_slice(&bad, config);
            assert!(decoded.is_err(), "scale {scale} accepted");
        }
        let short = bincode::serde::encode_to_vec(serde_bytes_of(&[1, 2, 3]), config).unwrap();
        let decoded: Result<(QuantizedVector, usize), _> =
            bincode::serde::decode_from_slice(&short, config);
        assert!(decoded.is_err(), "three bytes have no scale");
    }

    /// A byte string as serde serialises one (not as a sequence).
    fn serde_bytes_of(bytes: &[u8]) -> impl Serialize + '_ {
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        Bytes(bytes)
    }
}
