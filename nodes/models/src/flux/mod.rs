//! The Flux DiT (BFL's `flux/model.py`; dev and schnell, Fill/Kontext widths alike), read from
//! the original checkpoint names that city96 GGUF files keep, with its config taken from the
//! weights so that tiny test models and the full 12B model load through the same code.
//!
//! [`Flux::forward`] works on packed tokens as diffusers' `FluxTransformer2DModel` does;
//! [`Flux::forward_latent`] takes a latent [B, C, H, W] as ComfyUI's Flux does (2x2 patches,
//! position ids, and back).
mod blocks;
mod rope;
pub mod synthetic;

pub use blocks::{DoubleBlock, LastLayer, MlpEmbedder, SingleBlock};
pub use rope::Rope;

use super::layers::{Linear, timestep_embedding, to_dtype};
use super::source::{TensorSource, Weights};
use super::{LatentFormat, ModelError};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use std::sync::{Arc, Mutex};

/// Diffusion-model architectures this module builds, as `general.architecture` names them.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["flux"];

/// Name prefixes a Flux checkpoint may carry (ComfyUI full-checkpoint style, or none).
const PREFIXES: &[&str] = &["", "model.diffusion_model."];

/// A tensor every Flux file has; finds the prefix and tells Flux from other key sets.
const MARKER: &str = "double_blocks.0.img_attn.qkv.weight";

/// Flux's shape, read from the weights ([`FluxConfig::from_weights`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FluxConfig {
    /// Packed latent channels in (16 latent channels x 2x2 patch = 64; Fill: 384).
    pub in_channels: usize,
    pub out_channels: usize,
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp_hidden: usize,
    /// Width of the text embeddings (T5: 4096).
    pub context_dim: usize,
    /// Width of the pooled vector (CLIP: 768).
    pub vec_dim: usize,
    pub depth: usize,
    pub depth_single: usize,
    /// dev has a guidance embedding (`guidance_in`); schnell has none.
    pub guidance_embed: bool,
    pub qkv_bias: bool,
    /// Head-dimension split between the (t, row, col) RoPE axes.
    pub axes_dim: [usize; 3],
    pub theta: f64,
}

impl FluxConfig {
    /// Reads every width and depth from tensor shapes.
    ///
    /// The RoPE split is not in the weights: Flux uses [16, 56, 56] for head_dim 128, i.e. one
    /// eighth for the t axis and two equal halves of the rest; other head dims follow that rule.
    pub fn from_weights<B: Backend>(w: &Weights<B>) -> Result<Self, ModelError> {
        let dims2 = |name: &str| -> Result<[usize; 2], ModelError> {
            match w.shape(name)?.as_slice() {
                &[a, b] => Ok([a, b]),
                other => {
                    Err(w.config_error(format!("{name} has shape {other:?}, expected a matrix")))
                }
            }
        };
        let [hidden, in_channels] = dims2("img_in.weight")?;
        let [_, context_dim] = dims2("txt_in.weight")?;
        let [_, vec_dim] = dims2("vector_in.in_layer.weight")?;
        let [mlp_hidden, _] = dims2("double_blocks.0.img_mlp.0.weight")?;
        let [out_channels, _] = dims2("final_layer.linear.weight")?;
        let head_dim = match w
            .shape("double_blocks.0.img_attn.norm.query_norm.scale")?
            .as_slice()
        {
            &[d] if d > 0 && d % 2 == 0 && hidden % d == 0 => d,
            other => {
                return Err(w.config_error(format!(
                    "query_norm.scale of shape {other:?} does not fit hidden width {hidden}"
                )));
            }
        };
        let t_axis = head_dim / 8;
        let rest = head_dim - t_axis;
        if t_axis % 2 != 0 || rest % 4 != 0 {
            return Err(w.config_error(format!(
                "head dim {head_dim} cannot be split into Flux's three even RoPE axes"
            )));
        }
        Ok(FluxConfig {
            in_channels,
            out_channels,
            hidden,
            heads: hidden / head_dim,
            head_dim,
            mlp_hidden,
            context_dim,
            vec_dim,
            depth: w.count_blocks("double_blocks"),
            depth_single: w.count_blocks("single_blocks"),
            guidance_embed: w.has("guidance_in.in_layer.weight"),
            qkv_bias: w.has("double_blocks.0.img_attn.qkv.bias"),
            axes_dim: [t_axis, rest / 2, rest / 2],
            theta: 10_000.0,
        })
    }
}

/// Checks that `source` holds a Flux model and returns the name prefix its tensors carry.
///
/// A declared `general.architecture` other than flux is an error listing what is supported;
/// without one (safetensors), the key set decides.
pub fn detect<B: Backend>(source: &dyn TensorSource<B>) -> Result<&'static str, ModelError> {
    let unsupported = |found: String| ModelError::UnsupportedArchitecture {
        origin: source.origin(),
        found,
        supported: SUPPORTED_ARCHITECTURES.join(", "),
    };
    if let Some(arch) = source.architecture()
        && !SUPPORTED_ARCHITECTURES.contains(&arch.as_str())
    {
        return Err(unsupported(arch));
    }
    Weights::find_prefix(source, MARKER, PREFIXES).ok_or_else(|| match source.architecture() {
        // Declared flux but the tensors are missing: say which one.
        Some(_) => ModelError::MissingTensor {
            origin: source.origin(),
            name: MARKER.into(),
            hint: String::new(),
        },
        None => unsupported(
            recognise(source)
                .unwrap_or_else(|| format!("unknown (no {MARKER:?}, with or without a prefix)")),
        ),
    })
}

/// Names a few key sets that are not Flux, so the error says what the file is.
fn recognise<B: Backend>(source: &dyn TensorSource<B>) -> Option<String> {
    const KNOWN: &[(&str, &str)] = &[
        ("input_blocks.0.0.weight", "an SD1/SD2/SDXL UNet"),
        ("joint_blocks.0.context_block.attn.qkv.weight", "SD3"),
        ("blocks.0.self_attn.q.weight", "Wan"),
        ("decoder.conv_in.weight", "an AutoencoderKL (VAE)"),
        ("encoder.conv_in.weight", "an AutoencoderKL (VAE)"),
        ("enc.blk.0.attn_q.weight", "a T5 text encoder"),
        (
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "a CLIP text encoder",
        ),
    ];
    let names: Vec<&str> = source.names().collect();
    KNOWN
        .iter()
        .find(|(marker, _)| names.iter().any(|n| n.ends_with(marker)))
        .map(|(_, what)| (*what).to_owned())
}

/// The Flux transformer.
#[derive(Debug, Clone)]
pub struct Flux<B: Backend> {
    config: FluxConfig,
    img_in: Linear<B>,
    txt_in: Linear<B>,
    time_in: MlpEmbedder<B>,
    vector_in: MlpEmbedder<B>,
    guidance_in: Option<MlpEmbedder<B>>,
    double_blocks: Vec<DoubleBlock<B>>,
    single_blocks: Vec<SingleBlock<B>>,
    final_layer: LastLayer<B>,
    /// The RoPE tables of the last forward's ids: sampling repeats them every step, and building
    /// them takes ~10⁶ host sines and cosines at 1024².
    rope_cache: Arc<Mutex<Option<(Vec<[f32; 3]>, Rope<B>)>>>,
}

/// Inputs that accompany the image tokens.
#[derive(Debug, Clone)]
pub struct FluxConditioning<B: Backend> {
    /// Text tokens [B, L_txt, context_dim] (T5).
    pub context: Tensor<B, 3>,
    /// Pooled vector [B, vec_dim] (CLIP).
    pub y: Tensor<B, 2>,
    /// Guidance strength per batch item (dev only; ignored by schnell).
    pub guidance: Option<Vec<f32>>,
}

impl<B: Backend> Flux<B> {
    /// Detects the architecture and prefix, reads the config from the weights and loads them.
    pub fn load(source: &dyn TensorSource<B>, device: &B::Device) -> Result<Self, ModelError> {
        let prefix = detect(source)?;
        let w = Weights::new(source, prefix, device);
        let config = FluxConfig::from_weights(&w)?;
        Self::load_with_config(&w, config)
    }

    /// Loads the weights of a given config (names relative to `w`'s prefix).
    pub fn load_with_config(w: &Weights<B>, config: FluxConfig) -> Result<Self, ModelError> {
        let h = config.hidden;
        if config.axes_dim.iter().sum::<usize>() != config.head_dim
            || config.heads * config.head_dim != h
        {
            return Err(w.config_error(format!("inconsistent Flux config {config:?}")));
        }
        if config.depth == 0 {
            return Err(w.config_error("no double_blocks"));
        }
        let guidance_in = if config.guidance_embed {
            Some(MlpEmbedder::load(w, "guidance_in", 256, h)?)
        } else {
            None
        };
        Ok(Flux {
            img_in: w.linear("img_in", config.in_channels, h)?,
            txt_in: w.linear("txt_in", config.context_dim, h)?,
            time_in: MlpEmbedder::load(w, "time_in", 256, h)?,
            vector_in: MlpEmbedder::load(w, "vector_in", config.vec_dim, h)?,
            guidance_in,
            double_blocks: (0..config.depth)
                .map(|i| DoubleBlock::load(w, i, &config))
                .collect::<Result<_, _>>()?,
            single_blocks: (0..config.depth_single)
                .map(|i| SingleBlock::load(w, i, &config))
                .collect::<Result<_, _>>()?,
            final_layer: LastLayer::load(w, &config)?,
            rope_cache: Arc::default(),
            config,
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// The latent format Flux's VAE latents are scaled with.
    pub fn latent_format(&self) -> LatentFormat {
        LatentFormat::FLUX
    }

    /// The transformer on packed tokens: `img` [B, L_img, in_channels], `img_ids` / `txt_ids`
    /// one (t, row, col) per token, `timesteps` = sigma in [0, 1] per batch item.
    /// Returns [B, L_img, out_channels].
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        img_ids: &[[f32; 3]],
        txt_ids: &[[f32; 3]],
        timesteps: &[f32],
        cond: &FluxConditioning<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let c = &self.config;
        let device = img.device();
        let [b, l_img, ch] = img.dims();
        let [cb, l_txt, ctx] = cond.context.dims();
        let [yb, yd] = cond.y.dims();
        let check = |ok: bool, what: String| {
            if ok {
                Ok(())
            } else {
                Err(ModelError::input("flux", what))
            }
        };
        check(
            ch == c.in_channels,
            format!(
                "image tokens have {ch} channels, the model takes {}",
                c.in_channels
            ),
        )?;
        check(
            cb == b && ctx == c.context_dim,
            format!(
                "context {:?}, expected [{b}, L, {}]",
                [cb, l_txt, ctx],
                c.context_dim
            ),
        )?;
        check(
            yb == b && yd == c.vec_dim,
            format!(
                "pooled vector {:?}, expected [{b}, {}]",
                [yb, yd],
                c.vec_dim
            ),
        )?;
        check(
            timesteps.len() == b,
            format!("{} timesteps for a batch of {b}", timesteps.len()),
        )?;
        check(
            img_ids.len() == l_img && txt_ids.len() == l_txt,
            format!(
                "{} image / {} text ids for {l_img} image / {l_txt} text tokens",
                img_ids.len(),
                txt_ids.len()
            ),
        )?;

        let mut vec = self
            .time_in
            .forward(timestep_embedding(timesteps, 256, 1000.0, &device));
        if let Some(guidance_in) = &self.guidance_in {
            // ComfyUI passes 3.5 when no guidance is given; requiring it keeps the choice visible.
            let g = cond.guidance.as_deref().ok_or_else(|| {
                ModelError::input("flux", "this model (dev) needs a guidance value")
            })?;
            check(
                g.len() == b,
                format!("{} guidance values for a batch of {b}", g.len()),
            )?;
            vec = vec + guidance_in.forward(timestep_embedding(g, 256, 1000.0, &device));
        }
        vec = vec + self.vector_in.forward(cond.y.clone());

        // Every modulation (BFL's `lin(silu(vec))`) starts from the same silu(vec).
        let vec_silu = silu(vec);
        let out_dtype = img.dtype();
        let act = self.activation_dtype();
        let mut img = to_dtype(self.img_in.forward(img), act);
        let mut txt = to_dtype(self.txt_in.forward(cond.context.clone()), act);
        let ids: Vec<[f32; 3]> = txt_ids.iter().chain(img_ids).copied().collect();
        let pe = self.rope(ids, &device);

        for block in &self.double_blocks {
            (img, txt) = block.forward(img, txt, &vec_silu, &pe);
        }
        let mut x = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_blocks {
            x = block.forward(x, &vec_silu, &pe);
        }
        let img = x.narrow(1, l_txt, l_img);
        Ok(to_dtype(
            self.final_layer.forward(img, &vec_silu),
            out_dtype,
        ))
    }

    /// The RoPE tables of `ids`, from the cache when the last forward had the same ids.
    fn rope(&self, ids: Vec<[f32; 3]>, device: &B::Device) -> Rope<B> {
        let mut cache = self.rope_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, pe)) = cache.as_ref()
            && *cached == ids
            && &pe.cos().device() == device
        {
            return pe.clone();
        }
        let c = &self.config;
        let pe = Rope::new(&ids, c.axes_dim, c.theta, device);
        *cache = Some((ids, pe.clone()));
        pe
    }

    /// The type the blocks' activations are kept in: BF16 when the weights are (a CUDA load, as
    /// ComfyUI and diffusers run Flux in bf16; norms, RoPE and softmax still compute in f32),
    /// else F32. F16 weights keep f32 activations: Flux's activations overflow f16.
    pub fn activation_dtype(&self) -> DType {
        // The blocks' matrices decide: the embedders may be stored in F16 in a GGUF whose blocks
        // are quantized (city96's files), and a quantized-resident model keeps them so.
        let matrices = self
            .double_blocks
            .first()
            .map_or(self.txt_in.dtype(), DoubleBlock::matrix_dtype);
        match matrices {
            DType::BF16 => DType::BF16,
            _ => DType::F32,
        }
    }

    /// The model on a latent [B, C, H, W] (C·4 = in_channels), ComfyUI style: odd sizes are
    /// padded circularly to whole 2x2 patches, text ids are zeros, and the output is cropped
    /// back to [B, C_out/4, H, W].
    pub fn forward_latent(
        &self,
        x: Tensor<B, 4>,
        timesteps: &[f32],
        cond: &FluxConditioning<B>,
    ) -> Result<Tensor<B, 4>, ModelError> {
        let [b, c, h, w] = x.dims();
        if c * 4 != self.config.in_channels {
            return Err(ModelError::input(
                "flux",
                format!(
                    "latent has {c} channels, the model takes {}",
                    self.config.in_channels / 4
                ),
            ));
        }
        if h == 0 || w == 0 {
            return Err(ModelError::input("flux", "empty latent"));
        }
        let x = pad_to_patches(x);
        let (rows, cols) = (x.dims()[2] / 2, x.dims()[3] / 2);
        let img = patchify(x);
        let txt_ids = vec![[0.0; 3]; cond.context.dims()[1]];
        let out = self.forward(img, &image_ids(rows, cols), &txt_ids, timesteps, cond)?;
        Ok(unpatchify(out, rows, cols).slice([0..b, 0..self.config.out_channels / 4, 0..h, 0..w]))
    }
}

/// Ids of a `rows` x `cols` patch grid, row-major: (0, row, col), as FluxPipeline and ComfyUI
/// make them.
pub fn image_ids(rows: usize, cols: usize) -> Vec<[f32; 3]> {
    (0..rows)
        .flat_map(|r| (0..cols).map(move |c| [0.0, r as f32, c as f32]))
        .collect()
}

/// Repeats the first rows/columns at the end so that H and W are even (`padding_mode="circular"`).
fn pad_to_patches<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let x = if h % 2 == 1 {
        Tensor::cat(vec![x.clone(), x.narrow(2, 0, 1)], 2)
    } else {
        x
    };
    if w % 2 == 1 {
        Tensor::cat(vec![x.clone(), x.narrow(3, 0, 1)], 3)
    } else {
        x
    }
}

/// [B, C, H, W] → [B, (H/2)(W/2), C·4]: "b c (h ph) (w pw) -> b (h w) (c ph pw)".
pub fn patchify<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

/// The inverse of [`patchify`] for a `rows` x `cols` grid.
pub fn unpatchify<B: Backend>(x: Tensor<B, 3>, rows: usize, cols: usize) -> Tensor<B, 4> {
    let [b, _, cp] = x.dims();
    let c = cp / 4;
    x.reshape([b, rows, cols, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c, rows * 2, cols * 2])
}

/// Ids as a host list from a tensor [L, 3] (as diffusers and the fixtures store them).
pub fn ids_from_tensor<B: Backend>(ids: Tensor<B, 2>) -> Result<Vec<[f32; 3]>, ModelError> {
    let [_, three] = ids.dims();
    if three != 3 {
        return Err(ModelError::input(
            "flux",
            format!("position ids have {three} columns, expected 3"),
        ));
    }
    let data: TensorData = ids.into_data();
    let values = data
        .to_vec::<f32>()
        .map_err(|e| ModelError::input("flux", format!("position ids: {e:?}")))?;
    Ok(values.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
}
