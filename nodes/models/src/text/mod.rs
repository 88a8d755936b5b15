//! Text encoders and their tokenizers: CLIP-L ([`clip`], [`clip_tokenizer`]) and the T5-XXL
//! encoder ([`t5`], [`t5_tokenizer`]), with ComfyUI's prompt handling: the weight syntax
//! ([`weights`]), the chunk framing ([`batch`]) and the weighted encoding ([`encode`], with
//! [`apply_token_weights`]); [`encode::FluxTextEncoders`] turns a prompt into Flux's conditioning.
//!
//! Tokenizers are the `tokenizers` crate configured as transformers configures its own (the
//! reference they are tested against); vocabularies ship in `nodes/models/data` or come from the GGUF.
//! Encoders are built, like every model here, from a [`crate::TensorSource`].
//!
//! Architecture Invariant: nothing here reads a file other than through `weft_engine::formats`
//! or the vocabularies compiled into the binary, and nothing panics on a bad file or prompt:
//! errors name the file, the tensor or metadata key, or the prompt.
pub mod batch;
pub mod clip;
pub mod clip_tokenizer;
pub mod encode;
pub mod t5;
pub mod t5_tokenizer;
pub mod weights;

pub use batch::{ChunkLayout, TokenChunk};
pub use clip::{ClipTextConfig, ClipTextModel, ClipTextOutput};
pub use clip_tokenizer::ClipTokenizer;
pub use encode::{ClipOutputLayer, FluxTextEncoders, encode_clip, encode_t5};
pub use t5::{T5Config, T5Encoder};
pub use t5_tokenizer::{T5Tokenizer, T5Vocab};

use crate::ModelError;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Why a tokenizer could not be built or a prompt not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A vocabulary (built-in, GGUF metadata or tokenizer.json) is malformed.
    #[error("{origin}: tokenizer vocabulary: {message}")]
    Vocabulary { origin: String, message: String },
    /// A GGUF tokenizer key is missing or of the wrong type.
    #[error("{origin}: metadata key {key:?}: {message}")]
    Metadata {
        origin: String,
        key: String,
        message: String,
    },
    #[error("tokenizing {prompt:?}: {message}")]
    Tokenize { prompt: String, message: String },
    #[error("chunk layout: {0}")]
    Layout(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl TextError {
    fn tokenize(prompt: &str, error: impl std::fmt::Display) -> Self {
        let mut shown: String = prompt.chars().take(60).collect();
        if shown.len() < prompt.len() {
            shown.push('…');
        }
        TextError::Tokenize {
            prompt: shown,
            message: error.to_string(),
        }
    }
}

/// Decompresses a gzip stream compiled into the binary.
fn gunzip(bytes: &[u8], origin: &str) -> Result<String, TextError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| TextError::Vocabulary {
            origin: origin.to_string(),
            message: format!("gzip: {e}"),
        })?;
    Ok(text)
}

/// ComfyUI's `encode_token_weights` interpolation for one chunk: each token's embedding becomes
/// `(z - z_empty) * weight + z_empty`, where `z_empty` encodes the empty prompt in the same
/// framing; tokens of weight 1.0 keep `z` exactly (ComfyUI skips them).
///
/// `z` and `z_empty` are [1, L, D]; `weights` has L entries.
pub fn apply_token_weights<B: Backend>(
    z: Tensor<B, 3>,
    z_empty: Tensor<B, 3>,
    weights: &[f64],
) -> Result<Tensor<B, 3>, ModelError> {
    let [b, l, _] = z.dims();
    if b != 1 || z_empty.dims() != z.dims() || weights.len() != l {
        return Err(ModelError::input(
            "apply_token_weights",
            format!(
                "z {:?}, z_empty {:?} and {} weights do not match",
                z.dims(),
                z_empty.dims(),
                weights.len()
            ),
        ));
    }
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z);
    }
    let device = z.device();
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let keep: Vec<f32> = weights
        .iter()
        .map(|&w| if w == 1.0 { 1.0 } else { 0.0 })
        .collect();
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [l]), &device).reshape([1, l, 1]);
    let keep = Tensor::<B, 1>::from_data(TensorData::new(keep, [l]), &device).reshape([1, l, 1]);
    let weighted = (z.clone() - z_empty.clone()) * w + z_empty;
    Ok(z * keep.clone() + weighted * (keep.neg() + 1.0))
}
