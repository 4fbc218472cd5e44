//! The model's WebAssembly interface, for `src/wasm/embedders.js`: the
//! JavaScript side tokenizes, this side runs the transformer.

use wasm_bindgen::prelude::*;

use crate::{MiniLm, ModelError};

fn js_error(error: ModelError) -> JsError {
    JsError::new(&error.to_string())
}

/// all-MiniLM-L6-v2 in WebAssembly.
#[wasm_bindgen(js_name = MiniLm)]
pub struct WasmMiniLm(MiniLm);

#[wasm_bindgen(js_class = MiniLm)]
impl WasmMiniLm {
    /// Loads the model from the bytes of `model.safetensors`.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8]) -> Result<WasmMiniLm, JsError> {
        console_error_panic_hook::set_once();
        MiniLm::from_bytes(bytes).map(Self).map_err(js_error)
    }

    /// The vectors' dimension.
    #[wasm_bindgen(getter)]
    pub fn dimension(&self) -> usize {
        self.0.dimension()
    }

    /// The embeddings of several texts, one after another in one array:
    /// `ids` holds every text's WordPiece ids (without `[CLS]`/`[SEP]`)
    /// back to back and `lengths` how many belong to each text.
    pub fn embed(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, JsError> {
        let total: u64 = lengths.iter().map(|&length| u64::from(length)).sum();
        if total != ids.len() as u64 {
            return Err(JsError::new(&format!(
                "the lengths add up to {total} ids, but {} were given",
                ids.len()
            )));
        }
        let mut at = 0;
        let sequences: Vec<Vec<u32>> = lengths
            .iter()
            .map(|&length| {
                let text = &ids[at..at + length as usize];
                at += length as usize;
                MiniLm::sequence(text)
            })
            .collect();
        let vectors = self.0.embed(&sequences).map_err(js_error)?;
        Ok(vectors.concat())
    }
}
