//! AutoencoderKL (ldm / BFL `ae.safetensors` naming): the Flux VAE (16 latent channels, no quant
//! convs) and SD-style ones (4 channels, `quant_conv` / `post_quant_conv`), encoder and decoder,
//! their widths and depths read from the weights.
//!
//! Names: `{encoder,decoder}.conv_in`, `encoder.down.L.block.N.{norm1,conv1,norm2,conv2,nin_shortcut}`,
//! `encoder.down.L.downsample.conv`, `decoder.up.L.block.N…`, `decoder.up.L.upsample.conv` (the
//! decoder runs its levels from the highest L down), `*.mid.{block_1,attn_1.{norm,q,k,v,proj_out},block_2}`,
//! `*.norm_out`, `*.conv_out`; optionally prefixed `first_stage_model.` or `vae.`.
//!
//! Latents here are raw (what the VAE produces); [`crate::LatentFormat`] maps them to
//! and from what a diffusion model sees.
use super::layers::{Conv2d, GroupNorm, Linear, attention};
use super::source::{TensorSource, Weights};
use super::{LatentFormat, ModelError};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;

const PREFIXES: &[&str] = &["", "first_stage_model.", "vae."];
/// ldm's `Normalize`: 32 groups, eps 1e-6, everywhere in the autoencoder.
const GROUPS: usize = 32;
const EPS: f64 = 1e-6;

/// The autoencoder's shape, read from the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels (3).
    pub image_channels: usize,
    /// Latent channels (Flux 16, SD 4).
    pub z_channels: usize,
    /// Width of each resolution level, highest resolution first (`ch * ch_mult`).
    pub channels: Vec<usize>,
    /// Width after the encoder's `conv_in` (ldm's `ch`).
    pub encoder_stem: usize,
    /// Resnet blocks per encoder level (ldm `num_res_blocks`); 0 without an encoder.
    pub encoder_blocks: usize,
    /// Resnet blocks per decoder level (`num_res_blocks + 1`); 0 without a decoder.
    pub decoder_blocks: usize,
    pub quant_conv: bool,
}

impl VaeConfig {
    pub fn from_weights<B: Backend>(w: &Weights<B>) -> Result<Self, ModelError> {
        let (has_encoder, has_decoder) = (
            w.has("encoder.conv_in.weight"),
            w.has("decoder.conv_in.weight"),
        );
        let dim = |name: &str, axis: usize| -> Result<usize, ModelError> {
            let shape = w.shape(name)?;
            shape
                .get(axis)
                .copied()
                .ok_or_else(|| w.config_error(format!("{name} has shape {shape:?}")))
        };
        let side = if has_decoder {
            "decoder.up"
        } else {
            "encoder.down"
        };
        let levels = w.count_blocks(side);
        if levels == 0 {
            return Err(w.config_error(format!("no {side}.N blocks")));
        }
        let channels = (0..levels)
            .map(|l| dim(&format!("{side}.{l}.block.0.conv2.weight"), 0))
            .collect::<Result<Vec<_>, _>>()?;
        let (z_channels, image_channels) = if has_decoder {
            (
                dim("decoder.conv_in.weight", 1)?,
                dim("decoder.conv_out.weight", 0)?,
            )
        } else {
            (
                dim("encoder.conv_out.weight", 0)? / 2,
                dim("encoder.conv_in.weight", 1)?,
            )
        };
        let config = VaeConfig {
            image_channels,
            z_channels,
            encoder_stem: if has_encoder {
                dim("encoder.conv_in.weight", 0)?
            } else {
                0
            },
            encoder_blocks: if has_encoder {
                w.count_blocks("encoder.down.0.block")
            } else {
                0
            },
            decoder_blocks: if has_decoder {
                w.count_blocks("decoder.up.0.block")
            } else {
                0
            },
            quant_conv: w.has("quant_conv.weight") || w.has("post_quant_conv.weight"),
            channels,
        };
        if config
            .channels
            .iter()
            .chain([&config.encoder_stem])
            .any(|&c| c % GROUPS != 0 && c != 0)
        {
            return Err(w.config_error(format!(
                "channel widths {:?} are not multiples of {GROUPS} groups",
                config.channels
            )));
        }
        Ok(config)
    }

    /// Pixels per latent pixel along each side (8 for Flux and SD).
    pub fn downscale(&self) -> usize {
        1 << (self.channels.len() - 1)
    }
}

#[derive(Debug, Clone)]
struct ResnetBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    fn load(w: &Weights<B>, name: &str, c_in: usize, c_out: usize) -> Result<Self, ModelError> {
        Ok(ResnetBlock {
            norm1: w.group_norm(&format!("{name}.norm1"), c_in, GROUPS, EPS)?,
            conv1: w.conv2d(&format!("{name}.conv1"), c_in, c_out, 3, 1, 1)?,
            norm2: w.group_norm(&format!("{name}.norm2"), c_out, GROUPS, EPS)?,
            conv2: w.conv2d(&format!("{name}.conv2"), c_out, c_out, 3, 1, 1)?,
            nin_shortcut: if c_in != c_out {
                Some(w.conv2d(&format!("{name}.nin_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.nin_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over the pixels (`mid.attn_1`); q/k/v/proj_out are 1x1 convs in
/// ldm files and linears in converted ones: both load.
#[derive(Debug, Clone)]
struct AttnBlock<B: Backend> {
    norm: GroupNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    proj_out: Linear<B>,
}

impl<B: Backend> AttnBlock<B> {
    fn load(w: &Weights<B>, name: &str, c: usize) -> Result<Self, ModelError> {
        Ok(AttnBlock {
            norm: w.group_norm(&format!("{name}.norm"), c, GROUPS, EPS)?,
            q: w.projection(&format!("{name}.q"), c, c)?,
            k: w.projection(&format!("{name}.k"), c, c)?,
            v: w.projection(&format!("{name}.v"), c, c)?,
            proj_out: w.projection(&format!("{name}.proj_out"), c, c)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let heads = |proj: &Linear<B>| proj.forward(tokens.clone()).unsqueeze_dim::<4>(1);
        let out = attention(heads(&self.q), heads(&self.k), heads(&self.v)).reshape([b, h * w, c]);
        x + self
            .proj_out
            .forward(out)
            .swap_dims(1, 2)
            .reshape([b, c, h, w])
    }
}

#[derive(Debug, Clone)]
struct MidBlock<B: Backend> {
    block_1: ResnetBlock<B>,
    attn_1: AttnBlock<B>,
    block_2: ResnetBlock<B>,
}

impl<B: Backend> MidBlock<B> {
    fn load(w: &Weights<B>, name: &str, c: usize) -> Result<Self, ModelError> {
        Ok(MidBlock {
            block_1: ResnetBlock::load(w, &format!("{name}.block_1"), c, c)?,
            attn_1: AttnBlock::load(w, &format!("{name}.attn_1"), c)?,
            block_2: ResnetBlock::load(w, &format!("{name}.block_2"), c, c)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.block_2
            .forward(self.attn_1.forward(self.block_1.forward(x)))
    }
}

/// One resolution level: resnet blocks, then a resample conv (all but the last encoder level and
/// the first decoder level).
#[derive(Debug, Clone)]
struct Level<B: Backend> {
    blocks: Vec<ResnetBlock<B>>,
    resample: Option<Conv2d<B>>,
}

impl<B: Backend> Level<B> {
    fn load(
        w: &Weights<B>,
        name: &str,
        n_blocks: usize,
        c_in: usize,
        c_out: usize,
        resample: Option<(&str, usize)>,
    ) -> Result<Self, ModelError> {
        let blocks = (0..n_blocks)
            .map(|i| {
                ResnetBlock::load(
                    w,
                    &format!("{name}.block.{i}"),
                    if i == 0 { c_in } else { c_out },
                    c_out,
                )
            })
            .collect::<Result<_, _>>()?;
        let resample = match resample {
            Some((kind, stride)) => Some(w.conv2d(
                &format!("{name}.{kind}.conv"),
                c_out,
                c_out,
                3,
                stride,
                if stride == 1 { 1 } else { 0 },
            )?),
            None => None,
        };
        Ok(Level { blocks, resample })
    }

    fn blocks(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.blocks.iter().fold(x, |x, block| block.forward(x))
    }
}

#[derive(Debug, Clone)]
struct Encoder<B: Backend> {
    conv_in: Conv2d<B>,
    down: Vec<Level<B>>,
    mid: MidBlock<B>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    fn load(w: &Weights<B>, cfg: &VaeConfig) -> Result<Self, ModelError> {
        let last = cfg.channels.len() - 1;
        let mut c_in = cfg.encoder_stem;
        let mut down = Vec::new();
        for (level, &c_out) in cfg.channels.iter().enumerate() {
            let resample = (level != last).then_some(("downsample", 2));
            down.push(Level::load(
                w,
                &format!("encoder.down.{level}"),
                cfg.encoder_blocks,
                c_in,
                c_out,
                resample,
            )?);
            c_in = c_out;
        }
        let top = cfg.channels[last];
        Ok(Encoder {
            conv_in: w.conv2d(
                "encoder.conv_in",
                cfg.image_channels,
                cfg.encoder_stem,
                3,
                1,
                1,
            )?,
            down,
            mid: MidBlock::load(w, "encoder.mid", top)?,
            norm_out: w.group_norm("encoder.norm_out", top, GROUPS, EPS)?,
            conv_out: w.conv2d("encoder.conv_out", top, 2 * cfg.z_channels, 3, 1, 1)?,
        })
    }

    /// Image [B, C, H, W] in [-1, 1] → moments [B, 2z, H/f, W/f] (mean, then log-variance).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.conv_in.forward(x);
        for level in &self.down {
            h = level.blocks(h);
            if let Some(conv) = &level.resample {
                // ldm pads right and bottom only, then convolves with stride 2 and no padding.
                h = conv.forward(h.pad((0, 1, 0, 1), PadMode::Constant(0.0)));
            }
        }
        let h = self.mid.forward(h);
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}

#[derive(Debug, Clone)]
struct Decoder<B: Backend> {
    conv_in: Conv2d<B>,
    mid: MidBlock<B>,
    /// Indexed as in the names (`up.0` is the highest resolution); run from the last.
    up: Vec<Level<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    fn load(w: &Weights<B>, cfg: &VaeConfig) -> Result<Self, ModelError> {
        let top = *cfg.channels.last().expect("levels checked by VaeConfig");
        let mut c_in = top;
        let mut up = Vec::new();
        for (level, &c_out) in cfg.channels.iter().enumerate().rev() {
            let resample = (level != 0).then_some(("upsample", 1));
            up.push(Level::load(
                w,
                &format!("decoder.up.{level}"),
                cfg.decoder_blocks,
                c_in,
                c_out,
                resample,
            )?);
            c_in = c_out;
        }
        up.reverse();
        Ok(Decoder {
            conv_in: w.conv2d("decoder.conv_in", cfg.z_channels, top, 3, 1, 1)?,
            mid: MidBlock::load(w, "decoder.mid", top)?,
            up,
            norm_out: w.group_norm("decoder.norm_out", cfg.channels[0], GROUPS, EPS)?,
            conv_out: w.conv2d(
                "decoder.conv_out",
                cfg.channels[0],
                cfg.image_channels,
                3,
                1,
                1,
            )?,
        })
    }

    fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.mid.forward(self.conv_in.forward(z));
        for level in self.up.iter().rev() {
            h = level.blocks(h);
            if let Some(conv) = &level.resample {
                h = conv.forward(upsample_nearest_2x(h));
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}

/// Nearest-neighbour 2x upsampling: each pixel becomes a 2x2 block.
fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// An AutoencoderKL; a file may hold only one half (then the other direction is an error).
#[derive(Debug, Clone)]
pub struct Vae<B: Backend> {
    config: VaeConfig,
    origin: String,
    encoder: Option<Encoder<B>>,
    decoder: Option<Decoder<B>>,
    quant_conv: Option<Conv2d<B>>,
    post_quant_conv: Option<Conv2d<B>>,
}

impl<B: Backend> Vae<B> {
    /// Finds the prefix, reads the config from the weights and loads both halves present.
    pub fn load(source: &dyn TensorSource<B>, device: &B::Device) -> Result<Self, ModelError> {
        let markers = ["decoder.conv_in.weight", "encoder.conv_in.weight"];
        let prefix = markers
            .iter()
            .find_map(|m| Weights::find_prefix(source, m, PREFIXES))
            .ok_or_else(|| ModelError::UnsupportedArchitecture {
                origin: source.origin(),
                found: "no AutoencoderKL tensors (decoder.conv_in.weight / encoder.conv_in.weight)"
                    .into(),
                supported: "AutoencoderKL in ldm/BFL naming (Flux ae.safetensors, SD VAEs)".into(),
            })?;
        let w = Weights::new(source, prefix, device);
        let config = VaeConfig::from_weights(&w)?;
        let z = config.z_channels;
        Ok(Vae {
            encoder: if config.encoder_blocks > 0 {
                Some(Encoder::load(&w, &config)?)
            } else {
                None
            },
            decoder: if config.decoder_blocks > 0 {
                Some(Decoder::load(&w, &config)?)
            } else {
                None
            },
            quant_conv: if config.quant_conv && config.encoder_blocks > 0 {
                Some(w.conv2d("quant_conv", 2 * z, 2 * z, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if config.quant_conv && config.decoder_blocks > 0 {
                Some(w.conv2d("post_quant_conv", z, z, 1, 1, 0)?)
            } else {
                None
            },
            origin: w.origin(),
            config,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The usual latent format for this VAE's channel count (the diffusion model may override).
    pub fn latent_format(&self) -> Option<LatentFormat> {
        LatentFormat::for_channels(self.config.z_channels)
    }

    /// Raw latent [B, z, h, w] → image [B, C, h·f, w·f], roughly in [-1, 1] (not clamped).
    pub fn decode(&self, z: Tensor<B, 4>) -> Result<Tensor<B, 4>, ModelError> {
        let decoder = self
            .decoder
            .as_ref()
            .ok_or_else(|| self.missing_half("decoder"))?;
        let [_, c, h, w] = z.dims();
        if c != self.config.z_channels || h == 0 || w == 0 {
            return Err(ModelError::input(
                "vae",
                format!(
                    "latent [_, {c}, {h}, {w}], expected {} channels",
                    self.config.z_channels
                ),
            ));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        Ok(decoder.forward(z))
    }

    /// Image [B, C, H, W] in [-1, 1] → raw latent: the mean of the posterior (deterministic, as
    /// ComfyUI's VAEEncode).
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>, ModelError> {
        let encoder = self
            .encoder
            .as_ref()
            .ok_or_else(|| self.missing_half("encoder"))?;
        let [_, c, h, w] = x.dims();
        let f = self.config.downscale();
        if c != self.config.image_channels || h < f || w < f {
            return Err(ModelError::input(
                "vae",
                format!(
                    "image [_, {c}, {h}, {w}], expected {} channels and at least {f}x{f}",
                    self.config.image_channels
                ),
            ));
        }
        let moments = encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(moments),
            None => moments,
        };
        Ok(moments.narrow(1, 0, self.config.z_channels))
    }

    fn missing_half(&self, half: &str) -> ModelError {
        ModelError::Config {
            origin: self.origin.clone(),
            message: format!("this VAE file has no {half}"),
        }
    }
}
