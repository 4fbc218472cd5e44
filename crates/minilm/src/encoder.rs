//! The BERT encoder's forward pass on plain `f32` slices: matrix products by
//! `gemm` (AVX-512, AVX2 or WebAssembly SIMD, chosen at run time), and the
//! rest (embedding lookup, layer norm, attention softmax, GELU, pooling) as
//! loops the compiler vectorizes.
//!
//! A batch is its texts' tokens one after another, with no padding: every
//! step but attention works on each token alone, and attention runs per
//! text over that text's tokens only. So a batch computes exactly what its
//! texts would alone, and nothing is spent on padding.

use gemm::Parallelism;

/// A dense layer `y = x W + b`, with `W` stored `[inputs][outputs]`.
pub(crate) struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

pub(crate) struct LayerNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub epsilon: f32,
}

pub(crate) struct Layer {
    /// Query, key and value in one product: outputs `[q | k | v]`.
    pub qkv: Linear,
    pub attention_output: Linear,
    pub attention_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: LayerNorm,
}

/// The word embeddings stay 8-bit in memory (11.7 MB instead of 46.9 MB):
/// a token's row is widened when it is looked up.
pub(crate) struct Embeddings {
    pub words: Vec<u8>,
    pub word_scales: Vec<f32>,
    pub positions: Vec<f32>,
    pub token_type: Vec<f32>,
    pub norm: LayerNorm,
}

pub(crate) struct Encoder {
    pub embeddings: Embeddings,
    pub layers: Vec<Layer>,
    pub hidden: usize,
    pub heads: usize,
}

impl Encoder {
    /// The pooled unit vectors of `texts` (token ids, each at most the
    /// position table's length and checked against the vocabulary).
    pub fn embed(&self, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        let hidden = self.hidden;
        let tokens: usize = texts.iter().map(|text| text.len()).sum();
        let mut x = vec![0f32; tokens * hidden];
        self.embed_tokens(texts, &mut x);
        let widest = self
            .layers
            .iter()
            .map(|layer| layer.intermediate.outputs)
            .max()
            .unwrap_or(0)
            .max(3 * hidden);
        let longest = texts.iter().map(|text| text.len()).max().unwrap_or(0);
        let mut wide = vec![0f32; tokens * widest];
        let mut context = vec![0f32; tokens * hidden];
        let mut scores = vec![0f32; longest * longest];
        for layer in &self.layers {
            // Self-attention.
            let qkv = &mut wide[..tokens * 3 * hidden];
            layer.qkv.forward(&x, qkv, tokens, false);
            self.attend(texts, qkv, &mut context, &mut scores);
            let mut attended = std::mem::take(&mut x);
            layer
                .attention_output
                .forward(&context, &mut attended, tokens, true);
            layer.attention_norm.apply(&mut attended, hidden);
            x = attended;
            // Feed-forward.
            let inner = &mut wide[..tokens * layer.intermediate.outputs];
            layer.intermediate.forward(&x, inner, tokens, false);
            gelu(inner);
            layer.output.forward(inner, &mut x, tokens, true);
            layer.output_norm.apply(&mut x, hidden);
        }
        let mut vectors = Vec::with_capacity(texts.len());
        let mut at = 0;
        for text in texts {
            let rows = &x[at * hidden..(at + text.len()) * hidden];
            at += text.len();
            let mut mean = vec![0f32; hidden];
            for row in rows.chunks_exact(hidden) {
                for (sum, value) in mean.iter_mut().zip(row) {
                    *sum += value;
                }
            }
            let norm = sum_of(&mean, |value| value * value).sqrt().max(1e-12);
            for value in &mut mean {
                *value /= norm;
            }
            vectors.push(mean);
        }
        vectors
    }

    /// Word, position and token-type embeddings, summed and normalized.
    fn embed_tokens(&self, texts: &[&[u32]], x: &mut [f32]) {
        let hidden = self.hidden;
        let embeddings = &self.embeddings;
        let mut rows = x.chunks_exact_mut(hidden);
        for text in texts {
            for (position, &id) in text.iter().enumerate() {
                let row = rows.next().expect("one row per token");
                let id = id as usize;
                let words = &embeddings.words[id * hidden..][..hidden];
                let scale = embeddings.word_scales[id];
                let positions = &embeddings.positions[position * hidden..][..hidden];
                for (((out, &word), &position), &kind) in row
                    .iter_mut()
                    .zip(words)
                    .zip(positions)
                    .zip(&embeddings.token_type)
                {
                    *out = (f32::from(word) - 128.0) * scale + position + kind;
                }
            }
        }
        embeddings.norm.apply(x, hidden);
    }

    /// Multi-head attention of each text over its own tokens: `qkv` holds
    /// `[q | k | v]` per token; the result goes to `context`.
    fn attend(&self, texts: &[&[u32]], qkv: &[f32], context: &mut [f32], scores: &mut [f32]) {
        let hidden = self.hidden;
        let width = self.hidden / self.heads;
        let stride = 3 * hidden;
        let scale = 1.0 / (width as f32).sqrt();
        let mut at = 0;
        for text in texts {
            let length = text.len();
            let scores = &mut scores[..length * length];
            for head in 0..self.heads {
                let queries = &qkv[at * stride + head * width..];
                let keys = &qkv[at * stride + hidden + head * width..];
                let values = &qkv[at * stride + 2 * hidden + head * width..];
                // scores = q kᵀ / √width
                matmul(
                    Product {
                        rows: length,
                        columns: length,
                        depth: width,
                        accumulate: false,
                        scale,
                    },
                    (queries, stride, 1),
                    (keys, 1, stride),
                    (scores, length),
                );
                for row in scores.chunks_exact_mut(length) {
                    softmax(row);
                }
                // context = scores v
                matmul(
                    Product {
                        rows: length,
                        columns: width,
                        depth: length,
                        accumulate: false,
                        scale: 1.0,
                    },
                    (scores, length, 1),
                    (values, stride, 1),
                    (&mut context[at * hidden + head * width..], hidden),
                );
            }
            at += length;
        }
    }
}

impl Linear {
    /// `out = x W + b`, or with `residual`, `out = out + x W + b` (`out`
    /// holds the sublayer's input, which the result is added to).
    fn forward(&self, x: &[f32], out: &mut [f32], rows: usize, residual: bool) {
        let out = &mut out[..rows * self.outputs];
        for row in out.chunks_exact_mut(self.outputs) {
            if residual {
                for (value, bias) in row.iter_mut().zip(&self.bias) {
                    *value += bias;
                }
            } else {
                row.copy_from_slice(&self.bias);
            }
        }
        matmul(
            Product {
                rows,
                columns: self.outputs,
                depth: self.inputs,
                accumulate: true,
                scale: 1.0,
            },
            (x, self.inputs, 1),
            (&self.weight, self.outputs, 1),
            (out, self.outputs),
        );
    }
}

impl LayerNorm {
    fn apply(&self, x: &mut [f32], hidden: usize) {
        for row in x.chunks_exact_mut(hidden) {
            let mean = sum_of(row, |value| value) / hidden as f32;
            let variance = sum_of(row, |value| (value - mean) * (value - mean)) / hidden as f32;
            let inverse = 1.0 / (variance + self.epsilon).sqrt();
            for ((value, gamma), beta) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *value = (*value - mean) * inverse * gamma + beta;
            }
        }
    }
}

/// The shape of one matrix product `dst (+)= scale · lhs · rhs`.
struct Product {
    rows: usize,
    columns: usize,
    depth: usize,
    /// Add to `dst` instead of overwriting it.
    accumulate: bool,
    scale: f32,
}

/// `dst (+)= scale · lhs · rhs`, each matrix a slice with its row stride
/// and column stride (`dst`'s columns are contiguous). Panics (never reads
/// or writes out of bounds) when a slice is too short for its shape.
fn matmul(
    product: Product,
    (lhs, lhs_row, lhs_column): (&[f32], usize, usize),
    (rhs, rhs_row, rhs_column): (&[f32], usize, usize),
    (dst, dst_row): (&mut [f32], usize),
) {
    let Product {
        rows,
        columns,
        depth,
        accumulate,
        scale,
    } = product;
    if rows == 0 || columns == 0 {
        return;
    }
    let last = |rows: usize, row: usize, columns: usize, column: usize| {
        (rows - 1) * row + columns.saturating_sub(1) * column
    };
    if depth > 0 {
        assert!(last(rows, lhs_row, depth, lhs_column) < lhs.len());
        assert!(last(depth, rhs_row, columns, rhs_column) < rhs.len());
    }
    assert!(last(rows, dst_row, columns, 1) < dst.len());
    // SAFETY: the asserts above keep every element gemm reads or writes
    // inside the slices, and `dst` does not alias `lhs` or `rhs` (it is
    // borrowed mutably).
    unsafe {
        gemm::gemm(
            rows,
            columns,
            depth,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_column as isize,
            lhs_row as isize,
            rhs.as_ptr(),
            rhs_column as isize,
            rhs_row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `Σ f(value)` with eight running sums, so the compiler can vectorize it
/// (one running sum would pin the order of the additions).
fn sum_of(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut sums = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (sum, &value) in sums.iter_mut().zip(chunk) {
            *sum += f(value);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&value| f(value)).sum();
    sums.iter().sum::<f32>() + tail
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for value in row.iter_mut() {
        *value = exp(*value - max);
    }
    let inverse = 1.0 / sum_of(row, |value| value);
    for value in row.iter_mut() {
        *value *= inverse;
    }
}

/// GELU as BERT defines it, `x/2 · (1 + erf(x/√2))`, in place.
fn gelu(values: &mut [f32]) {
    for value in values.iter_mut() {
        let x = *value;
        *value = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `erf(x)` within 1e-6 (Abramowitz and Stegun 7.1.26: 1.5e-7, plus `f32`
/// rounding), without branches,
/// so a loop of it vectorizes (the `libm` one does not, and took a sixth of
/// the model's time).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let magnitude = x.abs();
    let t = 1.0 / (1.0 + P * magnitude);
    let polynomial = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let result = 1.0 - polynomial * exp(-magnitude * magnitude);
    result.copysign(x)
}

/// `eˣ` within a few units in the last place for the inputs the model
/// produces, without branches or library calls, so loops of it vectorize.
/// Inputs below -87 give 0-ish, above 88 are clamped.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN_2_HIGH: f32 = 0.693_359_4;
    const LN_2_LOW: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2²³ rounds to an integer, held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN_2_HIGH - n * LN_2_LOW;
    let polynomial = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // Wrapping: a NaN input gives NaN, never an overflow panic.
    let power = f32::from_bits((exponent.wrapping_add(127) as u32) << 23);
    polynomial * power
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_close_to_the_library_ones() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for step in -40_000..=40_000 {
            let x = step as f32 / 1000.0;
            let relative = ((f64::from(exp(x)) - f64::from(x).exp()) / f64::from(x).exp()).abs();
            worst_exp = worst_exp.max(relative);
            let expected = libm::erf(f64::from(x));
            worst_erf = worst_erf.max((f64::from(erf(x)) - expected).abs());
        }
        assert!(worst_exp < 1e-6, "exp: relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf: error {worst_erf}");
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan() && erf(f32::NAN).is_nan());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn matmul_follows_the_strides() {
        // [1 2; 3 4] · [5 6; 7 8]ᵀ (rhs read transposed through strides).
        let lhs = [1.0, 2.0, 3.0, 4.0];
        let rhs = [5.0, 6.0, 7.0, 8.0];
        let mut dst = [100.0; 4];
        matmul(
            Product {
                rows: 2,
                columns: 2,
                depth: 2,
                accumulate: true,
                scale: 2.0,
            },
            (&lhs, 2, 1),
            (&rhs, 1, 2),
            (&mut dst, 2),
        );
        assert_eq!(dst, [134.0, 146.0, 178.0, 206.0]);
    }
}
