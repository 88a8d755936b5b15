//! The T5 v1.1 encoder (transformers' `T5EncoderModel`; T5-XXL as Flux and SD3 use it): RMS norms
//! without bias, attention without score scaling plus a bucketed relative-position bias (stored in
//! block 0, shared by all blocks), and a gated-GELU (tanh) feed-forward.
//!
//! Two namings are read: llama.cpp's, which city96's T5 GGUF files use (`token_embd.weight`,
//! `enc.blk.N.attn_q.weight`, `enc.blk.0.attn_rel_b.weight`, `enc.output_norm.weight`; see gguf-py's
//! `MODEL_ARCH.T5ENCODER`), and transformers' (`shared.weight`,
//! `encoder.block.N.layer.0.SelfAttention.q.weight` …), in safetensors or GGUF. Activations are
//! f32 (T5 overflows f16).
use super::clip::{check_ids, embed};
use crate::ModelError;
use crate::layers::{Linear, gelu_tanh, rms_norm};
use crate::source::{TensorSource, Weights};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Where each tensor lives in one naming scheme.
struct Naming {
    embedding: &'static [&'static str],
    block: &'static str,
    attn_norm: &'static str,
    q: &'static str,
    k: &'static str,
    v: &'static str,
    o: &'static str,
    rel_bias: &'static str,
    ffn_norm: &'static str,
    gate: &'static str,
    up: &'static str,
    down: &'static str,
    final_norm: &'static str,
}

const LLAMA_CPP: Naming = Naming {
    embedding: &["token_embd.weight"],
    block: "enc.blk",
    attn_norm: "attn_norm.weight",
    q: "attn_q.weight",
    k: "attn_k.weight",
    v: "attn_v.weight",
    o: "attn_o.weight",
    rel_bias: "attn_rel_b.weight",
    ffn_norm: "ffn_norm.weight",
    gate: "ffn_gate.weight",
    up: "ffn_up.weight",
    down: "ffn_down.weight",
    final_norm: "enc.output_norm.weight",
};

const TRANSFORMERS: Naming = Naming {
    embedding: &["shared.weight", "encoder.embed_tokens.weight"],
    block: "encoder.block",
    attn_norm: "layer.0.layer_norm.weight",
    q: "layer.0.SelfAttention.q.weight",
    k: "layer.0.SelfAttention.k.weight",
    v: "layer.0.SelfAttention.v.weight",
    o: "layer.0.SelfAttention.o.weight",
    rel_bias: "layer.0.SelfAttention.relative_attention_bias.weight",
    ffn_norm: "layer.1.layer_norm.weight",
    gate: "layer.1.DenseReluDense.wi_0.weight",
    up: "layer.1.DenseReluDense.wi_1.weight",
    down: "layer.1.DenseReluDense.wo.weight",
    final_norm: "encoder.final_layer_norm.weight",
};

/// Prefixes a transformers-named T5 may carry (ComfyUI saves text encoders under these).
const PREFIXES: &[&str] = &["", "text_encoders.t5xxl.transformer.", "t5xxl.transformer."];

#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Heads x per-head width (T5-XXL: 64 x 64 = 4096).
    pub inner: usize,
    pub heads: usize,
    pub d_ff: usize,
    pub layers: usize,
    pub buckets: usize,
    /// Distances beyond this share the last bucket; not in the weights (T5: 128).
    pub max_distance: usize,
    pub eps: f64,
}

#[derive(Debug, Clone)]
struct T5Block<B: Backend> {
    attn_norm: Tensor<B, 1>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    ffn_norm: Tensor<B, 1>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

/// The T5 encoder stack.
#[derive(Debug, Clone)]
pub struct T5Encoder<B: Backend> {
    pub config: T5Config,
    embedding: Tensor<B, 2>,
    /// [buckets, heads].
    rel_bias: Tensor<B, 2>,
    blocks: Vec<T5Block<B>>,
    final_norm: Tensor<B, 1>,
}

impl<B: Backend> T5Encoder<B> {
    /// Builds the encoder from either naming, with its shape read from the weights.
    pub fn load(source: &dyn TensorSource<B>, device: &B::Device) -> Result<Self, ModelError> {
        if source.shape("enc.blk.0.attn_q.weight").is_some() {
            return Self::build(&Weights::new(source, "", device), &LLAMA_CPP);
        }
        let marker = "encoder.block.0.layer.0.SelfAttention.q.weight";
        let prefix = Weights::find_prefix(source, marker, PREFIXES).ok_or_else(|| {
            ModelError::MissingTensor {
                origin: source.origin(),
                name: "enc.blk.0.attn_q.weight".into(),
                hint: format!(" (not a T5 encoder: neither llama.cpp's names nor {marker:?})"),
            }
        })?;
        Self::build(&Weights::new(source, prefix, device), &TRANSFORMERS)
    }

    fn build(w: &Weights<B>, n: &Naming) -> Result<Self, ModelError> {
        let matrix = |name: &str| -> Result<[usize; 2], ModelError> {
            match w.shape(name)?.as_slice() {
                &[a, b] => Ok([a, b]),
                other => {
                    Err(w.config_error(format!("{name} has shape {other:?}, expected a matrix")))
                }
            }
        };
        let embedding_name = n
            .embedding
            .iter()
            .copied()
            .find(|e| w.has(e))
            .unwrap_or(n.embedding[0]);
        let [vocab_size, d_model] = matrix(embedding_name)?;
        let block0 = |t: &str| format!("{}.0.{t}", n.block);
        let [buckets, heads] = matrix(&block0(n.rel_bias))?;
        let [inner, _] = matrix(&block0(n.q))?;
        let [d_ff, _] = matrix(&block0(n.gate))?;
        if heads == 0 || inner % heads != 0 || buckets < 4 {
            return Err(w.config_error(format!(
                "{inner}-wide attention with {heads} heads and {buckets} buckets"
            )));
        }
        let config = T5Config {
            vocab_size,
            d_model,
            inner,
            heads,
            d_ff,
            layers: w.count_blocks(n.block),
            buckets,
            max_distance: 128,
            eps: 1e-6,
        };
        let plain = |name: String, d_in: usize, d_out: usize| -> Result<Linear<B>, ModelError> {
            Ok(Linear::new(w.tensor(&name, [d_out, d_in])?, None))
        };
        let blocks = (0..config.layers)
            .map(|i| {
                let p = |t: &str| format!("{}.{i}.{t}", n.block);
                Ok(T5Block {
                    attn_norm: w.tensor(&p(n.attn_norm), [d_model])?,
                    q: plain(p(n.q), d_model, inner)?,
                    k: plain(p(n.k), d_model, inner)?,
                    v: plain(p(n.v), d_model, inner)?,
                    o: plain(p(n.o), inner, d_model)?,
                    ffn_norm: w.tensor(&p(n.ffn_norm), [d_model])?,
                    gate: plain(p(n.gate), d_model, d_ff)?,
                    up: plain(p(n.up), d_model, d_ff)?,
                    down: plain(p(n.down), d_ff, d_model)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(T5Encoder {
            embedding: w.tensor(embedding_name, [vocab_size, d_model])?,
            rel_bias: w.tensor(&block0(n.rel_bias), [buckets, heads])?,
            blocks,
            final_norm: w.tensor(n.final_norm, [d_model])?,
            config,
        })
    }

    /// Encodes equal-length id sequences (no attention mask, as ComfyUI runs Flux's T5):
    /// the final-normed hidden state, [B, L, d_model].
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor<B, 3>, ModelError> {
        let (batch, len) = check_ids("T5 encoder", ids, self.config.vocab_size, usize::MAX)?;
        let device = self.embedding.device();
        let mut x = embed(&self.embedding, ids, &device).reshape([batch, len, self.config.d_model]);
        let bias = self.position_bias(len, &device);
        for block in &self.blocks {
            x = self.block_forward(block, x, &bias);
        }
        Ok(rms_norm(x, &self.final_norm, self.config.eps))
    }

    fn block_forward(
        &self,
        block: &T5Block<B>,
        x: Tensor<B, 3>,
        bias: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let (heads, inner) = (self.config.heads, self.config.inner);
        let head_dim = inner / heads;
        let h = rms_norm(x.clone(), &block.attn_norm, self.config.eps);
        let split = |t: Tensor<B, 3>| t.reshape([b, l, heads, head_dim]).swap_dims(1, 2);
        let q = split(block.q.forward(h.clone()));
        let k = split(block.k.forward(h.clone()));
        let v = split(block.v.forward(h));
        // T5 does not scale the scores: the 1/sqrt(d) is folded into the trained weights.
        let scores = q.matmul(k.swap_dims(2, 3)) + bias.clone();
        let attn = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, l, inner]);
        let x = x + block.o.forward(attn);
        let h = rms_norm(x.clone(), &block.ffn_norm, self.config.eps);
        let ff = gelu_tanh(block.gate.forward(h.clone())) * block.up.forward(h);
        x + block.down.forward(ff)
    }

    /// [1, heads, L, L]: the learned bias of each (query, key) pair's distance bucket.
    fn position_bias(&self, len: usize, device: &B::Device) -> Tensor<B, 4> {
        let buckets: Vec<i64> = (0..len * len)
            .map(|i| {
                relative_bucket(
                    i as i64 % len as i64 - i as i64 / len as i64,
                    self.config.buckets,
                    self.config.max_distance,
                ) as i64
            })
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(buckets, [len * len]), device);
        let heads = self.config.heads;
        // [L·L, heads] → [heads, L, L]
        self.rel_bias
            .clone()
            .select(0, index)
            .swap_dims(0, 1)
            .reshape([1, heads, len, len])
    }
}

/// transformers' `T5Attention._relative_position_bucket` for a bidirectional encoder, with the
/// log computed in f32 in torch's order of operations (so bucket edges fall where torch puts them).
/// `relative` is key position minus query position.
pub fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if distance < max_exact {
        bucket += distance;
    } else {
        let scale = (max_distance as f64 / max_exact as f64).ln() as f32;
        let log = (distance as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32;
        bucket += (max_exact + log as usize).min(half - 1);
    }
    bucket
}
