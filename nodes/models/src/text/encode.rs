//! ComfyUI's `ClipTokenWeightEncoder.encode_token_weights` for CLIP and T5: encode every chunk
//! of a prompt in one batch, plus an empty-prompt chunk when any token is weighted, interpolate
//! the weighted tokens from it, and concatenate the chunks along the sequence.
//! [`FluxTextEncoders`] is the pair Flux conditions on (ComfyUI's `FluxClipModel`): T5-XXL's
//! hidden states as context, CLIP-L's pooled output as the vector.
use super::batch::{ChunkLayout, TokenChunk};
use super::{ClipTextModel, ClipTokenizer, T5Encoder, T5Tokenizer, TextError, apply_token_weights};
use crate::ModelError;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Which CLIP hidden state becomes the context (ComfyUI's `layer` / `layer_idx` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipOutputLayer {
    /// The final-layer-normed last layer (ComfyUI's "last"; what Flux's CLIP-L uses).
    Last,
    /// Layer `index` (`-2`: penultimate, "clip skip 2"), with the final layer norm applied when
    /// `normed` (ComfyUI's `layer_norm_hidden_state`: on for SD 1.x, off for SDXL's CLIP-G).
    Hidden { index: isize, normed: bool },
}

/// ComfyUI's `gen_empty_tokens`: start (if any), end, then padding, `len` tokens in all.
pub fn empty_chunk_ids(layout: &ChunkLayout, len: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = layout.start.into_iter().chain([layout.end]).collect();
    ids.resize(len.max(ids.len()), layout.pad);
    ids.truncate(len);
    ids
}

/// The batch ComfyUI encodes for `chunks`: the chunks' ids, then the empty chunk when weighted.
fn batch_ids(
    chunks: &[TokenChunk],
    layout: &ChunkLayout,
) -> Result<(Vec<Vec<u32>>, bool), ModelError> {
    let len = chunks.first().map_or(0, |c| c.ids.len());
    if len == 0
        || chunks
            .iter()
            .any(|c| c.ids.len() != len || c.weights.len() != len)
    {
        return Err(ModelError::input(
            "text encoder",
            "expected one or more chunks of equal, non-zero length",
        ));
    }
    let weighted = chunks.iter().any(TokenChunk::is_weighted);
    let mut ids: Vec<Vec<u32>> = chunks.iter().map(|c| c.ids.clone()).collect();
    if weighted {
        ids.push(empty_chunk_ids(layout, len));
    }
    Ok((ids, weighted))
}

/// Applies the chunk weights to `out` ([chunks (+1 empty), L, D]) and joins the chunks: [1, chunks·L, D].
fn weigh_and_join<B: Backend>(
    out: Tensor<B, 3>,
    chunks: &[TokenChunk],
    weighted: bool,
) -> Result<Tensor<B, 3>, ModelError> {
    let [n, l, d] = out.dims();
    let empty = weighted.then(|| out.clone().slice([n - 1..n, 0..l, 0..d]));
    let parts = chunks
        .iter()
        .enumerate()
        .map(|(k, chunk)| {
            let z = out.clone().slice([k..k + 1, 0..l, 0..d]);
            match &empty {
                Some(empty) => apply_token_weights(z, empty.clone(), &chunk.weights),
                None => Ok(z),
            }
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(Tensor::cat(parts, 1))
}

/// CLIP's context [1, chunks·L, D] and the first chunk's pooled output [1, D].
pub fn encode_clip<B: Backend>(
    model: &ClipTextModel<B>,
    chunks: &[TokenChunk],
    layout: &ChunkLayout,
    layer: ClipOutputLayer,
) -> Result<(Tensor<B, 3>, Tensor<B, 2>), ModelError> {
    let (ids, weighted) = batch_ids(chunks, layout)?;
    let index = match layer {
        ClipOutputLayer::Last => None,
        ClipOutputLayer::Hidden { index, .. } => Some(index),
    };
    let out = model.forward(&ids, index)?;
    let hidden = match (layer, out.intermediate) {
        (ClipOutputLayer::Hidden { normed: true, .. }, Some(h)) => model.final_layer_norm(h),
        (ClipOutputLayer::Hidden { normed: false, .. }, Some(h)) => h,
        _ => out.last_hidden,
    };
    let d = model.config.hidden;
    let pooled = out.pooled.slice([0..1, 0..d]);
    Ok((weigh_and_join(hidden, chunks, weighted)?, pooled))
}

/// T5's context [1, chunks·L, d_model].
pub fn encode_t5<B: Backend>(
    model: &T5Encoder<B>,
    chunks: &[TokenChunk],
    layout: &ChunkLayout,
) -> Result<Tensor<B, 3>, ModelError> {
    let (ids, weighted) = batch_ids(chunks, layout)?;
    weigh_and_join(model.forward(&ids)?, chunks, weighted)
}

/// Flux's two text encoders and their tokenizers.
pub struct FluxTextEncoders<B: Backend> {
    pub clip: ClipTextModel<B>,
    pub clip_tokenizer: ClipTokenizer,
    pub t5: T5Encoder<B>,
    pub t5_tokenizer: T5Tokenizer,
    /// T5 padding target (ComfyUI: 256).
    pub t5_min_length: usize,
}

impl<B: Backend> FluxTextEncoders<B> {
    /// ComfyUI's `CLIPTextEncode` on a Flux CLIP: (T5 context [1, L ≥ 256, 4096], CLIP-L pooled [1, 768]).
    pub fn encode(&self, prompt: &str) -> Result<(Tensor<B, 3>, Tensor<B, 2>), TextError> {
        self.encode_pair(prompt, prompt)
    }

    /// ComfyUI's `CLIPTextEncodeFlux`: separate prompts for CLIP-L and T5-XXL.
    pub fn encode_pair(
        &self,
        clip_prompt: &str,
        t5_prompt: &str,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), TextError> {
        let clip_chunks = self.clip_tokenizer.tokenize_with_weights(clip_prompt)?;
        let (_, pooled) = encode_clip(
            &self.clip,
            &clip_chunks,
            &ChunkLayout::CLIP_L,
            ClipOutputLayer::Last,
        )?;
        let t5_chunks = self
            .t5_tokenizer
            .tokenize_with_weights(t5_prompt, self.t5_min_length)?;
        let layout = ChunkLayout {
            end: self.t5_tokenizer.end_token(),
            pad: self.t5_tokenizer.pad_token(),
            ..ChunkLayout::flux_t5(self.t5_min_length)
        };
        let context = encode_t5(&self.t5, &t5_chunks, &layout)?;
        Ok((context, pooled))
    }
}
