//! Dot-product kernels of `f32` and of byte-quantised vectors.
//!
//! Under wasm `simd128` both use explicit 128-bit lanes; natively they are
//! plain loops over independent accumulators that LLVM vectorises.

/// Dot product of two `f32` slices (over the shorter length).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    simd::dot(&a[..len], &b[..len])
}

/// Dot product of two `i8` vectors given as two's-complement bytes.
#[inline(always)]
pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
    let len = a.len().min(b.len());
    simd::dot_i8(&a[..len], &b[..len])
}

// The one place this crate uses `unsafe`: safe wasm intrinsics can only
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
mod tests {
    use super::*;

    #[test]
    fn kernels_match_the_naive_sums() {
        for len in [1, 7, 8, 9, 15, 16, 17, 31, 384, 385] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
            let x: Vec<u8> = (0..len).map(|i| (i * 37 % 255) as u8).collect();
            let y: Vec<u8> = (0..len).map(|i| (i * 91 % 253) as u8).collect();
            let naive: i32 = x
                .iter()
                .zip(&y)
                .map(|(p, q)| i32::from(*p as i8) * i32::from(*q as i8))
                .sum();
            assert_eq!(dot_i8(&x, &y), naive, "len {len}");
        }
    }
}
