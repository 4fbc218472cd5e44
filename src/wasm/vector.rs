//! Vectors and embedders across the JavaScript boundary.

use js_sys::{Array, Float32Array, Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::invalid_input;
use crate::index::HashEmbedder;
use crate::platform::BoxFuture;
use crate::EmbedText;

/// A vector from JS: a `Float32Array` or an array of numbers.
pub(crate) fn vector_from_js(value: &JsValue, what: &str) -> Result<Vec<f32>, JsValue> {
    if let Some(array) = value.dyn_ref::<Float32Array>() {
        return Ok(array.to_vec());
    }
    if let Some(array) = value.dyn_ref::<Array>() {
        let mut out = Vec::with_capacity(array.length() as usize);
        for (index, item) in array.iter().enumerate() {
            let number = item
                .as_f64()
                .ok_or_else(|| invalid_input(format!("{what}[{index}] is not a number")))?;
            out.push(number as f32);
        }
        return Ok(out);
    }
    Err(invalid_input(format!(
        "{what} must be a Float32Array or an array of numbers"
    )))
}

/// An embedder written in JavaScript: `async (texts) => Float32Array[]`.
pub(crate) struct JsEmbedder {
    function: Function,
    /// The function's `modelName` property, which the built-in loaders set.
    model: Option<String>,
}

impl JsEmbedder {
    pub(crate) fn new(function: Function) -> Self {
        let model = js_sys::Reflect::get(&function, &"modelName".into())
            .ok()
            .and_then(|name| name.as_string());
        Self { function, model }
    }

    async fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let input: Array = texts.iter().map(|t| JsValue::from_str(t)).collect();
        let describe = |error: JsValue| {
            error
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_else(|| format!("{error:?}"))
        };
        let result = self
            .function
            .call1(&JsValue::UNDEFINED, &input)
            .map_err(|e| format!("the embedder threw: {}", describe(e)))?;
        let result = match result.dyn_into::<Promise>() {
            Ok(promise) => JsFuture::from(promise)
                .await
                .map_err(|e| format!("the embedder rejected: {}", describe(e)))?,
            Err(value) => value,
        };
        let array = result
            .dyn_into::<Array>()
            .map_err(|_| "the embedder must return an array of vectors".to_string())?;
        array
            .iter()
            .enumerate()
            .map(|(i, v)| {
                vector_from_js(&v, &format!("embedding {i}"))
                    .map_err(|_| format!("embedding {i} is not a Float32Array or number[]"))
            })
            .collect()
    }
}

impl EmbedText for JsEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(self.call(texts))
    }

    fn model(&self) -> Option<String> {
        self.model.clone()
    }
}

/// The built-in offline embedder: hashed word and character-trigram
/// features (lexical similarity, not meaning), `dimension` (default 256)
/// components per text. Usable as `embedder` when opening a database:
/// `embedder: (texts) => hashEmbed(texts)`.
#[wasm_bindgen(js_name = hashEmbed, unchecked_return_type = "Float32Array[]")]
pub fn hash_embed(texts: Vec<String>, dimension: Option<u32>) -> Array {
    let embedder = HashEmbedder::new(dimension.unwrap_or(256) as usize);
    texts
        .iter()
        .map(|text| JsValue::from(Float32Array::from(embedder.embed_text(text).as_slice())))
        .collect()
}
