//! The CLIP text encoder (transformers' `CLIPTextModel`; OpenAI CLIP-L as Flux and SD 1.x use
//! it), read from the checkpoint names (`text_model.encoder.layers.N.self_attn.q_proj.weight` …)
//! in safetensors or GGUF, with its shape taken from the weights.
//!
//! [`ClipTextModel::forward`] returns the final-layer-normed last hidden state, optionally one
//! intermediate layer's raw output (ComfyUI's "clip skip": layer -2 is the penultimate), and the
//! pooled output: the normed hidden state at the position of the largest id in each sequence
//! (transformers' rule for the original CLIP config, whose end token 49407 is the largest id).
use crate::ModelError;
use crate::layers::{Linear, layer_norm};
use crate::source::{TensorSource, Weights};
use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Name prefixes a CLIP text encoder may carry: transformers' own, none, and the full-checkpoint
/// forms of SD 1.x and ComfyUI.
const PREFIXES: &[&str] = &[
    "text_model.",
    "",
    "transformer.text_model.",
    "cond_stage_model.transformer.text_model.",
    "clip_l.transformer.text_model.",
    "text_encoders.clip_l.transformer.text_model.",
];
const MARKER: &str = "embeddings.token_embedding.weight";

/// The MLP activation: OpenAI's CLIP uses quick_gelu, open_clip's larger models exact GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    QuickGelu,
    Gelu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_positions: usize,
    pub activation: ClipActivation,
    pub layer_norm_eps: f64,
}

impl ClipTextConfig {
    /// Reads every width and depth from the weights. The head count is not stored: CLIP's heads
    /// are 64 wide (CLIP-L: 768 / 64 = 12), unless `heads` says otherwise.
    pub fn from_weights<B: Backend>(
        w: &Weights<B>,
        heads: Option<usize>,
    ) -> Result<Self, ModelError> {
        let matrix = |name: &str| -> Result<[usize; 2], ModelError> {
            match w.shape(name)?.as_slice() {
                &[a, b] => Ok([a, b]),
                other => {
                    Err(w.config_error(format!("{name} has shape {other:?}, expected a matrix")))
                }
            }
        };
        let [vocab_size, hidden] = matrix("embeddings.token_embedding.weight")?;
        let [max_positions, _] = matrix("embeddings.position_embedding.weight")?;
        let [intermediate, _] = matrix("encoder.layers.0.mlp.fc1.weight")?;
        let layers = w.count_blocks("encoder.layers");
        let heads = heads.unwrap_or(hidden / 64);
        if heads == 0 || hidden % heads != 0 {
            return Err(w.config_error(format!(
                "hidden width {hidden} cannot be split into {heads} heads"
            )));
        }
        Ok(ClipTextConfig {
            vocab_size,
            hidden,
            intermediate,
            layers,
            heads,
            max_positions,
            activation: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        })
    }
}

#[derive(Debug, Clone)]
struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    fn load(w: &Weights<B>, name: &str, width: usize, eps: f64) -> Result<Self, ModelError> {
        Ok(LayerNorm {
            gamma: w.tensor(&format!("{name}.weight"), [width])?,
            beta: w.tensor(&format!("{name}.bias"), [width])?,
            eps,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let width = self.gamma.dims()[0];
        layer_norm(x, self.eps) * self.gamma.clone().reshape([1, 1, width])
            + self.beta.clone().reshape([1, 1, width])
    }
}

#[derive(Debug, Clone)]
struct ClipLayer<B: Backend> {
    norm1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// The CLIP text transformer.
#[derive(Debug, Clone)]
pub struct ClipTextModel<B: Backend> {
    pub config: ClipTextConfig,
    token_embedding: Tensor<B, 2>,
    position_embedding: Tensor<B, 2>,
    layers: Vec<ClipLayer<B>>,
    final_norm: LayerNorm<B>,
}

/// What [`ClipTextModel::forward`] returns (all [B, L, D] but `pooled`, [B, D]).
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// The last layer's output after the final layer norm.
    pub last_hidden: Tensor<B, 3>,
    /// The requested intermediate layer's raw output (no final norm), if one was asked for.
    pub intermediate: Option<Tensor<B, 3>>,
    /// `last_hidden` at each sequence's largest id (the end token).
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> ClipTextModel<B> {
    /// Builds the model from `source`, finding its name prefix; `heads` as in
    /// [`ClipTextConfig::from_weights`].
    pub fn load(
        source: &dyn TensorSource<B>,
        heads: Option<usize>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let prefix = Weights::find_prefix(source, MARKER, PREFIXES).ok_or_else(|| {
            ModelError::MissingTensor {
                origin: source.origin(),
                name: format!("text_model.{MARKER}"),
                hint: " (not a CLIP text encoder: no token embedding under any known prefix)"
                    .into(),
            }
        })?;
        let w = Weights::new(source, prefix, device);
        let config = ClipTextConfig::from_weights(&w, heads)?;
        Self::from_weights(&w, config)
    }

    pub fn from_weights(w: &Weights<B>, config: ClipTextConfig) -> Result<Self, ModelError> {
        let (d, eps) = (config.hidden, config.layer_norm_eps);
        let layers = (0..config.layers)
            .map(|i| {
                let p = format!("encoder.layers.{i}");
                Ok(ClipLayer {
                    norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), d, eps)?,
                    q: w.linear(&format!("{p}.self_attn.q_proj"), d, d)?,
                    k: w.linear(&format!("{p}.self_attn.k_proj"), d, d)?,
                    v: w.linear(&format!("{p}.self_attn.v_proj"), d, d)?,
                    out: w.linear(&format!("{p}.self_attn.out_proj"), d, d)?,
                    norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), d, eps)?,
                    fc1: w.linear(&format!("{p}.mlp.fc1"), d, config.intermediate)?,
                    fc2: w.linear(&format!("{p}.mlp.fc2"), config.intermediate, d)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(ClipTextModel {
            token_embedding: w
                .tensor("embeddings.token_embedding.weight", [config.vocab_size, d])?,
            position_embedding: w.tensor(
                "embeddings.position_embedding.weight",
                [config.max_positions, d],
            )?,
            layers,
            final_norm: LayerNorm::load(w, "final_layer_norm", d, eps)?,
            config,
        })
    }

    /// Encodes equal-length id sequences. `intermediate_layer` picks one layer's raw output as
    /// ComfyUI counts them: `-1` is the last layer, `-2` the penultimate, `0` the first.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        intermediate_layer: Option<isize>,
    ) -> Result<ClipTextOutput<B>, ModelError> {
        let (batch, len) = check_ids(
            "CLIP text encoder",
            ids,
            self.config.vocab_size,
            self.config.max_positions,
        )?;
        let n_layers = self.config.layers as isize;
        let keep = match intermediate_layer {
            None => None,
            Some(i) if (-n_layers..n_layers).contains(&i) => Some(i.rem_euclid(n_layers) as usize),
            Some(i) => {
                return Err(ModelError::input(
                    "CLIP text encoder",
                    format!("layer {i} does not exist in {n_layers} layers"),
                ));
            }
        };
        let device = self.token_embedding.device();
        let d = self.config.hidden;
        let mut x = embed(&self.token_embedding, ids, &device).reshape([batch, len, d])
            + self
                .position_embedding
                .clone()
                .slice([0..len, 0..d])
                .unsqueeze::<3>();
        let mask = causal_mask::<B>(len, &device);
        let mut intermediate = None;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, x, &mask);
            if keep == Some(i) {
                intermediate = Some(x.clone());
            }
        }
        let last_hidden = self.final_norm.forward(x);
        let pooled = pool_at_max_id(&last_hidden, ids, &device);
        Ok(ClipTextOutput {
            last_hidden,
            intermediate,
            pooled,
        })
    }

    /// The final layer norm, for callers that want a normed intermediate layer (ComfyUI's
    /// `layer_norm_hidden_state`, on for SD 1.x clip skip).
    pub fn final_layer_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.final_norm.forward(x)
    }

    fn layer_forward(
        &self,
        layer: &ClipLayer<B>,
        x: Tensor<B, 3>,
        mask: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let heads = self.config.heads;
        let head_dim = d / heads;
        let h = layer.norm1.forward(x.clone());
        let split = |t: Tensor<B, 3>| t.reshape([b, l, heads, head_dim]).swap_dims(1, 2);
        let q = split(layer.q.forward(h.clone()));
        let k = split(layer.k.forward(h.clone()));
        let v = split(layer.v.forward(h));
        let scores = q.matmul(k.swap_dims(2, 3)) * (head_dim as f64).powf(-0.5) + mask.clone();
        let attn = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, l, d]);
        let x = x + layer.out.forward(attn);
        let h = layer.fc1.forward(layer.norm2.forward(x.clone()));
        let h = match self.config.activation {
            ClipActivation::QuickGelu => h.clone() * sigmoid(h * 1.702),
            ClipActivation::Gelu => gelu(h),
        };
        x + layer.fc2.forward(h)
    }
}

/// Checks a batch of ids against the vocabulary and the position table; returns (batch, length).
pub(crate) fn check_ids(
    model: &'static str,
    ids: &[Vec<u32>],
    vocab: usize,
    max_len: usize,
) -> Result<(usize, usize), ModelError> {
    let len = ids.first().map_or(0, Vec::len);
    if len == 0 || ids.iter().any(|s| s.len() != len) {
        return Err(ModelError::input(
            model,
            "expected one or more non-empty id sequences of equal length",
        ));
    }
    if len > max_len {
        return Err(ModelError::input(
            model,
            format!("{len} tokens exceed the {max_len} positions"),
        ));
    }
    if let Some(&bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::input(
            model,
            format!("token id {bad} is outside the {vocab}-token vocabulary"),
        ));
    }
    Ok((ids.len(), len))
}

/// Rows of `table` for every id, flattened: [B·L, D].
pub(crate) fn embed<B: Backend>(
    table: &Tensor<B, 2>,
    ids: &[Vec<u32>],
    device: &B::Device,
) -> Tensor<B, 2> {
    let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    let n = flat.len();
    table.clone().select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [n]), device),
    )
}

/// [1, 1, L, L]: 0 on and below the diagonal, -inf above (a token sees only its past).
fn causal_mask<B: Backend>(len: usize, device: &B::Device) -> Tensor<B, 4> {
    let values: Vec<f32> = (0..len * len)
        .map(|i| {
            if i % len > i / len {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [1, 1, len, len]), device)
}

/// `hidden[b, argmax(ids[b])]` (first position of the largest id, as torch.argmax).
fn pool_at_max_id<B: Backend>(
    hidden: &Tensor<B, 3>,
    ids: &[Vec<u32>],
    device: &B::Device,
) -> Tensor<B, 2> {
    let [b, l, d] = hidden.dims();
    let rows: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, seq)| {
            let max = seq.iter().copied().max().unwrap_or(0);
            (i * l + seq.iter().position(|&t| t == max).unwrap_or(0)) as i64
        })
        .collect();
    hidden.clone().reshape([b * l, d]).select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b]), device),
    )
}
