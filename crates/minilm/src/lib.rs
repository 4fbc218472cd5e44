//! PluresDB's exact built-in sentence embedder: the all-MiniLM-L6-v2
//! transformer (6 BERT layers, 384 dimensions), natively and in WebAssembly.
//! The forward pass is this crate's own (`src/encoder.rs`, on `gemm`); why, and
//! what it replaced, is in `docs/ARCHITECTURE.md` ("Built-in embedders").
//!
//! This crate owns the model, not the text: it takes WordPiece token ids
//! (with `[CLS]` and `[SEP]`), as the BERT uncased tokenizer makes them, and
//! returns the sentence-transformers embedding, the attention-masked mean of
//! the last hidden states scaled to unit length. The tokenizer lives where
//! the text is: natively in `pluresdb` (`src/index/static_embedder.rs`), in
//! the browser in JavaScript (`src/wasm/embedders.js`), both checked against
//! Hugging Face `tokenizers`.
//!
//! The weights are `models/minilm/model.safetensors`, made from the
//! Apache-2.0 source weights by `scripts/export-minilm.py`: every matrix is
//! stored as 8-bit integers with one scale per row and widened to `f32` when
//! the model loads, so the model computes in `f32` ([`MiniLm::from_bytes`]
//! documents the format). The 8 bits keep every vector within cosine 0.999 of
//! the float32 model's (`models/minilm/README.md`).

use serde::Deserialize;

mod encoder;
#[cfg(target_arch = "wasm32")]
mod wasm;

use encoder::{Embeddings, Encoder, Layer, LayerNorm, Linear};

/// The model's name and version, as a database stores it with its vectors.
pub const MODEL: &str = "minilm@1";
/// The weight file's format, as its metadata names it.
pub const FORMAT: &str = "pluresdb-minilm-q8/1";
/// The most tokens a text is read with, `[CLS]` and `[SEP]` included
/// (sentence-transformers' `max_seq_length` for this model); longer texts
/// are truncated, as the reference does.
pub const MAX_SEQUENCE: usize = 256;
/// The most tokens in one batch (texts are never padded, so a batch is
/// just a unit of work: natively, batches run on all cores at once).
pub const BATCH_POSITIONS: usize = 2048;
const CLS: u32 = 101;
const SEP: u32 = 102;

/// Why a model did not load or a batch did not embed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weight file is not a model of this format.
    #[error("not a PluresDB MiniLM model: {0}")]
    Format(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the model's vocabulary of {vocabulary}")]
    TokenOutOfRange {
        /// The id given.
        id: u32,
        /// The vocabulary's size.
        vocabulary: usize,
    },
}

/// all-MiniLM-L6-v2, ready to embed.
pub struct MiniLm {
    encoder: Encoder,
    vocabulary: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("vocabulary", &self.vocabulary)
            .field("dimension", &self.encoder.hidden)
            .field("layers", &self.encoder.layers.len())
            .finish_non_exhaustive()
    }
}

fn format_error(message: impl std::fmt::Display) -> ModelError {
    ModelError::Format(message.to_string())
}

/// The BERT configuration, as the weight file's metadata carries it (the
/// fields of Hugging Face's `config.json` this model code reads).
#[derive(Debug, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
}

/// A configuration the model code can run: GELU, a head count that divides
/// the hidden size (the attention divides by it), room for
/// [`MAX_SEQUENCE`] positions, and sizes no BERT of this kind exceeds.
fn check_config(config: &Config) -> Result<(), ModelError> {
    let heads = config.num_attention_heads;
    if heads == 0 || config.hidden_size == 0 || !config.hidden_size.is_multiple_of(heads) {
        return Err(format_error(format!(
            "hidden size {} does not split into {heads} attention heads",
            config.hidden_size
        )));
    }
    if config.max_position_embeddings < MAX_SEQUENCE {
        return Err(format_error(format!(
            "{} positions, fewer than the {MAX_SEQUENCE} texts are read with",
            config.max_position_embeddings
        )));
    }
    if config.hidden_act != "gelu" {
        return Err(format_error(format!(
            "activation {:?}; only BERT's \"gelu\" is supported",
            config.hidden_act
        )));
    }
    let sizes = [
        config.vocab_size,
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.max_position_embeddings,
        config.type_vocab_size,
    ];
    if sizes.iter().any(|&size| size == 0 || size > 1 << 20) {
        return Err(format_error(format!("implausible sizes {sizes:?}")));
    }
    if !(config.layer_norm_eps > 0.0 && config.layer_norm_eps < 1.0) {
        return Err(format_error(format!(
            "implausible layer norm epsilon {}",
            config.layer_norm_eps
        )));
    }
    Ok(())
}

/// Reads tensors by name from the weight file, checking their types and
/// shapes.
struct Weights<'a> {
    file: safetensors::SafeTensors<'a>,
}

impl Weights<'_> {
    fn view(
        &self,
        name: &str,
        dtype: safetensors::Dtype,
        shape: &[usize],
    ) -> Result<safetensors::tensor::TensorView<'_>, ModelError> {
        let view = self
            .file
            .tensor(name)
            .map_err(|_| format_error(format!("the tensor {name} is missing")))?;
        if view.dtype() != dtype || view.shape() != shape {
            return Err(format_error(format!(
                "{name} is {:?} {:?}, expected {dtype:?} {shape:?}",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(view)
    }

    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let view = self.view(name, safetensors::Dtype::F32, shape)?;
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|bytes| f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            .collect())
    }

    /// An 8-bit matrix `[rows, columns]`: the stored integers plus 128, and
    /// one scale per row.
    fn matrix_q8(
        &self,
        name: &str,
        rows: usize,
        columns: usize,
    ) -> Result<(Vec<u8>, Vec<f32>), ModelError> {
        let q8 = self.view(
            &format!("{name}.q8"),
            safetensors::Dtype::U8,
            &[rows, columns],
        )?;
        let scales = self.floats(&format!("{name}.scale"), &[rows])?;
        Ok((q8.data().to_vec(), scales))
    }

    /// A dense layer stored as PyTorch does (`weight` `[outputs, inputs]`,
    /// 8-bit), widened and transposed to `[inputs][outputs]`.
    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, ModelError> {
        let (q8, scales) = self.matrix_q8(&format!("{name}.weight"), outputs, inputs)?;
        let mut weight = vec![0f32; inputs * outputs];
        for (output, (row, scale)) in q8.chunks_exact(inputs).zip(&scales).enumerate() {
            for (input, &value) in row.iter().enumerate() {
                weight[input * outputs + output] = (f32::from(value) - 128.0) * scale;
            }
        }
        Ok(Linear {
            weight,
            bias: self.floats(&format!("{name}.bias"), &[outputs])?,
            inputs,
            outputs,
        })
    }

    fn layer_norm(&self, name: &str, size: usize, epsilon: f32) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            gamma: self.floats(&format!("{name}.weight"), &[size])?,
            beta: self.floats(&format!("{name}.bias"), &[size])?,
            epsilon,
        })
    }
}

/// Query, key and value side by side: one layer of `3 · hidden` outputs.
fn fuse(parts: [Linear; 3]) -> Linear {
    let inputs = parts[0].inputs;
    let outputs: usize = parts.iter().map(|part| part.outputs).sum();
    let mut weight = Vec::with_capacity(inputs * outputs);
    for input in 0..inputs {
        for part in &parts {
            weight.extend_from_slice(&part.weight[input * part.outputs..][..part.outputs]);
        }
    }
    Linear {
        weight,
        bias: parts
            .iter()
            .flat_map(|part| part.bias.iter().copied())
            .collect(),
        inputs,
        outputs,
    }
}

impl MiniLm {
    /// Loads the model from the bytes of its weight file: a safetensors file
    /// whose metadata has `format` = [`FORMAT`] and `config` (the BERT
    /// configuration as JSON), with, for each 8-bit matrix `NAME`, the
    /// tensors `NAME.q8` (U8, `[rows, columns]`, the integer plus 128) and
    /// `NAME.scale` (F32, `[rows]`), and every other tensor as F32 under its
    /// own name. A matrix is rebuilt as `(q8 - 128) * scale`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(format_error)?;
        let metadata = header
            .metadata()
            .as_ref()
            .ok_or_else(|| format_error("the file has no metadata"))?;
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(format_error(format!(
                "format {:?}, expected {FORMAT:?}",
                metadata.get("format")
            )));
        }
        let config: Config = serde_json::from_str(
            metadata
                .get("config")
                .ok_or_else(|| format_error("the metadata has no config"))?,
        )
        .map_err(format_error)?;
        check_config(&config)?;
        let weights = Weights {
            file: safetensors::SafeTensors::deserialize(bytes).map_err(format_error)?,
        };
        let hidden = config.hidden_size;
        let epsilon = config.layer_norm_eps as f32;
        let (words, word_scales) = weights.matrix_q8(
            "embeddings.word_embeddings.weight",
            config.vocab_size,
            hidden,
        )?;
        let token_types = weights.floats(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, hidden],
        )?;
        let embeddings = Embeddings {
            words,
            word_scales,
            positions: weights.floats(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            // Every token is of type 0 (one sentence per input).
            token_type: token_types[..hidden].to_vec(),
            norm: weights.layer_norm("embeddings.LayerNorm", hidden, epsilon)?,
        };
        let inner = config.intermediate_size;
        let layers = (0..config.num_hidden_layers)
            .map(|index| {
                let name = |part: &str| format!("encoder.layer.{index}.{part}");
                Ok(Layer {
                    qkv: fuse([
                        weights.linear(&name("attention.self.query"), hidden, hidden)?,
                        weights.linear(&name("attention.self.key"), hidden, hidden)?,
                        weights.linear(&name("attention.self.value"), hidden, hidden)?,
                    ]),
                    attention_output: weights.linear(
                        &name("attention.output.dense"),
                        hidden,
                        hidden,
                    )?,
                    attention_norm: weights.layer_norm(
                        &name("attention.output.LayerNorm"),
                        hidden,
                        epsilon,
                    )?,
                    intermediate: weights.linear(&name("intermediate.dense"), hidden, inner)?,
                    output: weights.linear(&name("output.dense"), inner, hidden)?,
                    output_norm: weights.layer_norm(&name("output.LayerNorm"), hidden, epsilon)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            encoder: Encoder {
                embeddings,
                layers,
                hidden,
                heads: config.num_attention_heads,
            },
            vocabulary: config.vocab_size,
        })
    }

    /// The vectors' dimension (384).
    pub fn dimension(&self) -> usize {
        self.encoder.hidden
    }

    /// The model's input for the WordPiece ids of one text (without
    /// `[CLS]`/`[SEP]`): `[CLS] ids… [SEP]`, truncated to [`MAX_SEQUENCE`].
    pub fn sequence(ids: &[u32]) -> Vec<u32> {
        let kept = ids.len().min(MAX_SEQUENCE - 2);
        let mut sequence = Vec::with_capacity(kept + 2);
        sequence.push(CLS);
        sequence.extend_from_slice(&ids[..kept]);
        sequence.push(SEP);
        sequence
    }

    /// The unit-length embedding of each sequence (as [`MiniLm::sequence`]
    /// makes them; longer ones are cut to [`MAX_SEQUENCE`]), in order.
    /// The sequences run in batches of at most [`BATCH_POSITIONS`] tokens;
    /// natively, the batches run on every core at once.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        for &id in sequences.iter().flatten() {
            if id as usize >= self.vocabulary {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocabulary: self.vocabulary,
                });
            }
        }
        // An empty sequence is read as `[CLS] [SEP]`, as the tokenizer
        // would make it.
        let empty = [CLS, SEP];
        let texts: Vec<&[u32]> = sequences
            .iter()
            .map(|ids| match ids.len() {
                0 => &empty[..],
                length => &ids[..length.min(MAX_SEQUENCE)],
            })
            .collect();
        let batches = batches(&texts, workers());
        let embed = |range: &std::ops::Range<usize>| self.encoder.embed(&texts[range.clone()]);
        #[cfg(not(target_arch = "wasm32"))]
        let vectors: Vec<Vec<Vec<f32>>> = {
            use rayon::prelude::*;
            batches.par_iter().map(embed).collect()
        };
        #[cfg(target_arch = "wasm32")]
        let vectors: Vec<Vec<Vec<f32>>> = batches.iter().map(embed).collect();
        Ok(vectors.into_iter().flatten().collect())
    }
}

/// How many batches can run at once.
fn workers() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::current_num_threads();
    #[cfg(target_arch = "wasm32")]
    return 1;
}

/// Consecutive ranges of `texts` of at most [`BATCH_POSITIONS`] tokens
/// each (a longer single text is a batch of its own), and at least
/// `workers` of them when there are that many texts, so every core gets a
/// share.
fn batches(texts: &[&[u32]], workers: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = texts.iter().map(|text| text.len()).sum();
    let budget = total.div_ceil(workers.max(1)).clamp(1, BATCH_POSITIONS);
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut tokens = 0;
    for (index, text) in texts.iter().enumerate() {
        if index > start && tokens + text.len() > budget {
            ranges.push(start..index);
            start = index;
            tokens = 0;
        }
        tokens += text.len();
    }
    if start < texts.len() {
        ranges.push(start..texts.len());
    }
    ranges
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn model() -> MiniLm {
        MiniLm::from_bytes(include_bytes!("../../../models/minilm/model.safetensors")).unwrap()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn vectors_match_the_float32_reference_on_the_check_texts() {
        let model = model();
        let check: serde_json::Value =
            serde_json::from_str(include_str!("../../../models/minilm/check.json")).unwrap();
        let samples = check["samples"].as_array().unwrap();
        let sequences: Vec<Vec<u32>> = samples
            .iter()
            .map(|sample| {
                let ids: Vec<u32> = serde_json::from_value(sample["ids"].clone()).unwrap();
                // The reference's ids already carry [CLS]/[SEP]; rebuilding
                // them from the inner ids checks the truncation too.
                let inner = &ids[1..ids.len() - 1];
                assert_eq!(MiniLm::sequence(inner), ids, "{}", sample["text"]);
                ids
            })
            .collect();
        let vectors = model.embed(&sequences).unwrap();
        for (sample, vector) in samples.iter().zip(&vectors) {
            let reference: Vec<f32> = serde_json::from_value(sample["vector"].clone()).unwrap();
            assert_eq!(vector.len(), 384);
            let similarity = cosine(vector, &reference);
            assert!(
                similarity >= 0.995,
                "{}: cosine {similarity}",
                sample["text"]
            );
        }
    }

    #[test]
    fn a_batch_gives_each_text_what_it_gets_alone() {
        let model = model();
        let texts = vec![
            MiniLm::sequence(&[3604, 3488]),
            MiniLm::sequence(&[2338, 7599, 2000, 10708, 2005, 1996, 3034]),
            MiniLm::sequence(&[]),
        ];
        let together = model.embed(&texts).unwrap();
        for (text, vector) in texts.iter().zip(&together) {
            let alone = model.embed(std::slice::from_ref(text)).unwrap();
            assert!(cosine(&alone[0], vector) > 0.99999);
        }
        assert!(model.embed(&[]).unwrap().is_empty());
        // Many texts of mixed lengths, several batches on several threads:
        // each vector still belongs to its own text.
        let many: Vec<Vec<u32>> = (0..150u32)
            .map(|index| {
                let length = (index * 37 % 300) as usize;
                MiniLm::sequence(
                    &(0..length as u32)
                        .map(|at| 1000 + (index * 131 + at * 7) % 20_000)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let vectors = model.embed(&many).unwrap();
        assert_eq!(vectors.len(), many.len());
        for index in [0, 1, 7, 64, 100, 149] {
            let alone = model.embed(&many[index..=index]).unwrap();
            assert!(cosine(&alone[0], &vectors[index]) > 0.99999, "text {index}");
        }
        assert!(cosine(&vectors[1], &vectors[2]) < 0.99);
    }

    #[test]
    fn batches_cover_every_text_once_within_the_budget() {
        let lengths = [5usize, 3000, 7, 2048, 1, 1, 900, 900, 900];
        let texts: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let slices: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
        for workers in [1, 2, 8, 64] {
            let ranges = batches(&slices, workers);
            let mut next = 0;
            for range in &ranges {
                assert_eq!(range.start, next);
                assert!(range.end > range.start);
                let tokens: usize = lengths[range.clone()].iter().sum();
                assert!(range.len() == 1 || tokens <= BATCH_POSITIONS, "{range:?}");
                next = range.end;
            }
            assert_eq!(next, lengths.len());
        }
        // Small inputs still give every worker a share.
        let short: Vec<&[u32]> = vec![&[1, 2, 3]; 10];
        assert_eq!(batches(&short, 2).len(), 2);
        assert!(batches(&[], 2).is_empty());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let model = model();
        assert!(matches!(
            model.embed(&[vec![101, 30_522, 102]]),
            Err(ModelError::TokenOutOfRange { id: 30_522, .. })
        ));
        let long = vec![1000u32; 5000];
        assert_eq!(model.embed(&[long]).unwrap()[0].len(), 384);
        // A configuration whose hidden size does not split into its heads
        // (the attention divides by the head count) is refused up front.
        let config = r#"{"vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":0,"intermediate_size":1536,"hidden_act":"gelu","hidden_dropout_prob":0.1,"max_position_embeddings":512,"type_vocab_size":2,"initializer_range":0.02,"layer_norm_eps":1e-12,"pad_token_id":0}"#;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), config.to_string()),
        ]);
        let no_heads = safetensors::serialize(
            Vec::<(&str, safetensors::tensor::TensorView)>::new(),
            Some(metadata),
        )
        .unwrap();
        assert!(
            matches!(MiniLm::from_bytes(&no_heads), Err(ModelError::Format(message)) if message.contains("attention heads"))
        );
        // A real model cut short.
        let whole = include_bytes!("../../../models/minilm/model.safetensors");
        assert!(MiniLm::from_bytes(&whole[..whole.len() / 2]).is_err());
        for bytes in [
            &b""[..],
            b"not a model",
            &[8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}'],
        ] {
            assert!(matches!(
                MiniLm::from_bytes(bytes),
                Err(ModelError::Format(_))
            ));
        }
    }
}
