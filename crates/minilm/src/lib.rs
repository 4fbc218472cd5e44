//! PluresDB's exact built-in sentence embedder: the all-MiniLM-L6-v2
//! transformer (6 BERT layers, 384 dimensions) run by `candle`, natively and
//! in WebAssembly.
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

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

#[cfg(target_arch = "wasm32")]
mod wasm;

/// The model's name and version, as a database stores it with its vectors.
pub const MODEL: &str = "minilm@1";
/// The weight file's format, as its metadata names it.
pub const FORMAT: &str = "pluresdb-minilm-q8/1";
/// The most tokens a text is read with, `[CLS]` and `[SEP]` included
/// (sentence-transformers' `max_seq_length` for this model); longer texts
/// are truncated, as the reference does.
pub const MAX_SEQUENCE: usize = 256;
/// Texts run through the transformer together; sorted by length first, so
/// a batch pads little.
pub const BATCH: usize = 32;
/// The most positions, padding included, in one batch: long texts run a few
/// at a time rather than padding 32 short ones to their length.
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
    /// The tensor engine failed.
    #[error("the model failed: {0}")]
    Engine(#[from] candle_core::Error),
}

/// all-MiniLM-L6-v2, ready to embed.
pub struct MiniLm {
    model: BertModel,
    vocabulary: usize,
    dimension: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("vocabulary", &self.vocabulary)
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

fn format_error(message: impl std::fmt::Display) -> ModelError {
    ModelError::Format(message.to_string())
}

/// A configuration the model code can run: a head count that divides the
/// hidden size (the attention divides by it), room for [`MAX_SEQUENCE`]
/// positions, and sizes no BERT of this kind exceeds.
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
    Ok(())
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
        let device = Device::Cpu;
        let mut stored = candle_core::safetensors::load_buffer(bytes, &device)?;
        let mut tensors = HashMap::with_capacity(stored.len());
        let names: Vec<String> = stored.keys().cloned().collect();
        for name in names {
            let Some(matrix) = name.strip_suffix(".q8") else {
                continue;
            };
            let q8 = stored.remove(&name).expect("listed");
            let scale = stored
                .remove(&format!("{matrix}.scale"))
                .ok_or_else(|| format_error(format!("{matrix} has no scale")))?;
            let (rows, _) = q8.dims2()?;
            if q8.dtype() != DType::U8 || scale.dtype() != DType::F32 || scale.dims() != [rows] {
                return Err(format_error(format!("{matrix}: bad 8-bit layout")));
            }
            let widened =
                (q8.to_dtype(DType::F32)? - 128.0)?.broadcast_mul(&scale.unsqueeze(1)?)?;
            tensors.insert(matrix.to_string(), widened);
        }
        for (name, tensor) in stored {
            if name.ends_with(".scale") {
                return Err(format_error(format!("{name} scales no matrix")));
            }
            tensors.insert(name, tensor.to_dtype(DType::F32)?);
        }
        let model = BertModel::load(
            VarBuilder::from_tensors(tensors, DType::F32, &device),
            &config,
        )?;
        Ok(Self {
            model,
            vocabulary: config.vocab_size,
            dimension: config.hidden_size,
        })
    }

    /// The vectors' dimension (384).
    pub fn dimension(&self) -> usize {
        self.dimension
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
    /// makes them; longer ones are cut to [`MAX_SEQUENCE`]), in order. The
    /// sequences run in batches of similar length, at most [`BATCH`] texts
    /// and [`BATCH_POSITIONS`] positions each.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        for &id in sequences.iter().flatten() {
            if id as usize >= self.vocabulary {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocabulary: self.vocabulary,
                });
            }
        }
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&index| sequences[index].len());
        let length = |index: usize| sequences[index].len().clamp(1, MAX_SEQUENCE);
        let mut vectors = vec![Vec::new(); sequences.len()];
        let mut rest = &order[..];
        while !rest.is_empty() {
            // Sorted by length, so each added text is the batch's longest.
            let mut size = 1;
            while size < rest.len().min(BATCH) && (size + 1) * length(rest[size]) <= BATCH_POSITIONS
            {
                size += 1;
            }
            let (batch, next) = rest.split_at(size);
            rest = next;
            let texts: Vec<&[u32]> = batch
                .iter()
                .map(|&index| &sequences[index][..sequences[index].len().min(MAX_SEQUENCE)])
                .collect();
            for (&index, vector) in batch.iter().zip(self.embed_batch(&texts)?) {
                vectors[index] = vector;
            }
        }
        Ok(vectors)
    }

    fn embed_batch(&self, texts: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let width = texts.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; texts.len() * width];
        let mut mask = vec![0f32; texts.len() * width];
        for (row, text) in texts.iter().enumerate() {
            ids[row * width..][..text.len()].copy_from_slice(text);
            mask[row * width..][..text.len()].fill(1.0);
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (texts.len(), width), device)?;
        let mask = Tensor::from_vec(mask, (texts.len(), width), device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        let counts = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2()?)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

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
