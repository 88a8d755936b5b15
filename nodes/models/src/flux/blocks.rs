//! Flux's building blocks, as in BFL's `flux/modules/layers.py`: the MLP embedder, modulation,
//! QK-normed self-attention, the double-stream and single-stream blocks and the final layer.
//! Tensor names are the checkpoint's (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1` …).
use super::FluxConfig;
use super::rope::Rope;
use crate::ModelError;
use crate::layers::{Linear, attention, layer_norm, rms_norm, to_dtype};
use crate::source::Weights;
use crate::{fast, op};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// Flux's LayerNorms (no affine) and RMSNorms both use this epsilon.
const EPS: f64 = 1e-6;

/// `out_layer(silu(in_layer(x)))`: `time_in`, `guidance_in`, `vector_in`.
#[derive(Debug, Clone)]
pub struct MlpEmbedder<B: Backend> {
    in_layer: Linear<B>,
    out_layer: Linear<B>,
}

impl<B: Backend> MlpEmbedder<B> {
    pub fn load(
        w: &Weights<B>,
        name: &str,
        d_in: usize,
        hidden: usize,
    ) -> Result<Self, ModelError> {
        Ok(MlpEmbedder {
            in_layer: w.linear(&format!("{name}.in_layer"), d_in, hidden)?,
            out_layer: w.linear(&format!("{name}.out_layer"), hidden, hidden)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out_layer.forward(silu(self.in_layer.forward(x)))
    }
}

/// Shift, scale and gate for one norm, each [B, 1, hidden].
struct Mod<B: Backend> {
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    gate: Tensor<B, 3>,
}

impl<B: Backend> Mod<B> {
    /// `(1 + scale) * LayerNorm(x) + shift` (one fused pass on CUDA).
    fn modulate_norm(&self, x: &Tensor<B, 3>) -> Tensor<B, 3> {
        modulate_norm(x, &self.shift, &self.scale)
    }

    /// `x + gate * h` (one fused pass on CUDA).
    fn gated(&self, x: Tensor<B, 3>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        op("gated residual", &x.clone(), || {
            if let Some(y) = fast::gate_residual(&x, &self.gate, &h) {
                return y;
            }
            x + self.gate.clone() * h
        })
    }
}

/// `(1 + scale) * LayerNorm(x) + shift`, LayerNorm without affine.
fn modulate_norm<B: Backend>(
    x: &Tensor<B, 3>,
    shift: &Tensor<B, 3>,
    scale: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    op("layer norm + modulate", x, || {
        if let Some(y) = fast::ln_modulate(x, shift, scale, EPS) {
            return y;
        }
        layer_norm(x.clone(), EPS) * (scale.clone() + 1.0) + shift.clone()
    })
}

/// `lin(silu(vec))` split into `chunks` [B, 1, hidden] pieces (BFL `Modulation`), in the
/// activations' type `dtype`. Takes `vec_silu` = silu(vec) (f32), computed once per forward
/// for every block.
fn modulation<B: Backend>(
    lin: &Linear<B>,
    vec_silu: &Tensor<B, 2>,
    chunks: usize,
    dtype: DType,
) -> Vec<Tensor<B, 3>> {
    op("modulation", vec_silu, || {
        to_dtype(lin.forward(vec_silu.clone()), dtype)
            .unsqueeze_dim::<3>(1)
            .chunk(chunks, 2)
    })
}

fn mods<B: Backend>(parts: &[Tensor<B, 3>]) -> Mod<B> {
    Mod {
        shift: parts[0].clone(),
        scale: parts[1].clone(),
        gate: parts[2].clone(),
    }
}

/// QK-normed query/key scales of one attention.
#[derive(Debug, Clone)]
struct QkNorm<B: Backend> {
    query: Tensor<B, 1>,
    key: Tensor<B, 1>,
}

impl<B: Backend> QkNorm<B> {
    fn load(w: &Weights<B>, name: &str, head_dim: usize) -> Result<Self, ModelError> {
        Ok(QkNorm {
            query: w.tensor(&format!("{name}.query_norm.scale"), [head_dim])?,
            key: w.tensor(&format!("{name}.key_norm.scale"), [head_dim])?,
        })
    }
}

/// Splits a fused qkv projection [B, L, 3·H·D] into q, k, v [B, H, L, D] ("B L (K H D) -> K B H L D")
/// and RMS-normalizes q and k.
fn split_qkv<B: Backend>(qkv: Tensor<B, 3>, norm: &QkNorm<B>, heads: usize) -> [Tensor<B, 4>; 3] {
    let [b, l, three_hd] = qkv.dims();
    let head_dim = three_hd / (3 * heads);
    let parts = qkv
        .reshape([b, l, 3, heads, head_dim])
        .permute([2, 0, 3, 1, 4]);
    let take = |i: usize| {
        parts
            .clone()
            .narrow(0, i, 1)
            .reshape([b, heads, l, head_dim])
    };
    [
        rms_norm(take(0), &norm.query, EPS),
        rms_norm(take(1), &norm.key, EPS),
        take(2),
    ]
}

/// q, k, v [B, H, ΣL, D] of fused projections `parts` (token order, each [B, L_i, 3·H·D]),
/// q and k RMS-normalized and rotated by `pe` (one fused pass per part on CUDA).
fn heads_qkv<B: Backend>(
    parts: Vec<(Tensor<B, 3>, &QkNorm<B>)>,
    heads: usize,
    pe: &Rope<B>,
) -> [Tensor<B, 4>; 3] {
    op("qk norm + rope", pe.cos(), || {
        heads_qkv_unprofiled(parts, heads, pe)
    })
}

fn heads_qkv_unprofiled<B: Backend>(
    parts: Vec<(Tensor<B, 3>, &QkNorm<B>)>,
    heads: usize,
    pe: &Rope<B>,
) -> [Tensor<B, 4>; 3] {
    let segments: Vec<_> = parts
        .iter()
        .map(|(qkv, norm)| (qkv.clone(), norm.query.clone(), norm.key.clone()))
        .collect();
    if let Some(out) = fast::qk_norm_rope(&segments, pe.cos(), pe.sin(), heads, EPS) {
        return out;
    }
    drop(segments);
    let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for (qkv, norm) in parts {
        let [q, k, v] = split_qkv(qkv, norm, heads);
        qs.push(q);
        ks.push(k);
        vs.push(v);
    }
    let cat = |mut t: Vec<Tensor<B, 4>>| match t.len() {
        1 => t.remove(0),
        _ => Tensor::cat(t, 2),
    };
    [pe.apply(cat(qs)), pe.apply(cat(ks)), cat(vs)]
}

/// Attention over [B, H, L, D] heads, merged back: [B, L, H·D].
fn attention_merged<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, l, d] = q.dims();
    op("attention", &q.clone(), || {
        attention(q, k, v).swap_dims(1, 2).reshape([b, l, h * d])
    })
}

/// One stream (img or txt) of a double block.
#[derive(Debug, Clone)]
struct Stream<B: Backend> {
    modulation: Linear<B>,
    qkv: Linear<B>,
    norm: QkNorm<B>,
    proj: Linear<B>,
    mlp_in: Linear<B>,
    mlp_out: Linear<B>,
}

impl<B: Backend> Stream<B> {
    fn load(w: &Weights<B>, name: &str, cfg: &FluxConfig) -> Result<Self, ModelError> {
        let (h, m) = (cfg.hidden, cfg.mlp_hidden);
        let qkv = if cfg.qkv_bias {
            w.linear(&format!("{name}_attn.qkv"), h, 3 * h)?
        } else {
            w.linear_optional_bias(&format!("{name}_attn.qkv"), h, 3 * h)?
        };
        Ok(Stream {
            modulation: w.linear(&format!("{name}_mod.lin"), h, 6 * h)?,
            qkv,
            norm: QkNorm::load(w, &format!("{name}_attn.norm"), cfg.head_dim)?,
            proj: w.linear(&format!("{name}_attn.proj"), h, h)?,
            mlp_in: w.linear(&format!("{name}_mlp.0"), h, m)?,
            mlp_out: w.linear(&format!("{name}_mlp.2"), m, h)?,
        })
    }

    /// Modulation and the fused q, k, v projection [B, L, 3·H·D] of this stream's tokens.
    fn pre_attention(
        &self,
        x: &Tensor<B, 3>,
        vec_silu: &Tensor<B, 2>,
    ) -> ([Mod<B>; 2], Tensor<B, 3>) {
        let parts = modulation(&self.modulation, vec_silu, 6, x.dtype());
        let (m1, m2) = (mods(&parts[0..3]), mods(&parts[3..6]));
        let modulated = m1.modulate_norm(x);
        let qkv = op("linear qkv", x, || self.qkv.forward(modulated));
        ([m1, m2], qkv)
    }

    fn post_attention(
        &self,
        x: Tensor<B, 3>,
        attn: Tensor<B, 3>,
        [m1, m2]: [Mod<B>; 2],
    ) -> Tensor<B, 3> {
        let proj = op("linear proj", &x, || self.proj.forward(attn));
        let x = m1.gated(x, proj);
        let modulated = m2.modulate_norm(&x);
        let hidden = op("linear mlp in + gelu", &x, || {
            self.mlp_in.forward_gelu(modulated)
        });
        let mlp = op("linear mlp out", &x, || self.mlp_out.forward(hidden));
        m2.gated(x, mlp)
    }
}

/// A double-stream block: image and text tokens keep their own weights and attend jointly.
#[derive(Debug, Clone)]
pub struct DoubleBlock<B: Backend> {
    img: Stream<B>,
    txt: Stream<B>,
    heads: usize,
}

impl<B: Backend> DoubleBlock<B> {
    /// The float type the block's products see (its image attention's qkv matrix).
    pub fn matrix_dtype(&self) -> DType {
        self.img.qkv.dtype()
    }

    pub fn load(w: &Weights<B>, index: usize, cfg: &FluxConfig) -> Result<Self, ModelError> {
        Ok(DoubleBlock {
            img: Stream::load(w, &format!("double_blocks.{index}.img"), cfg)?,
            txt: Stream::load(w, &format!("double_blocks.{index}.txt"), cfg)?,
            heads: cfg.heads,
        })
    }

    /// `(img, txt)` after the block. `vec_silu` is silu(vec); `pe` covers the text tokens, then
    /// the image tokens.
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        vec_silu: &Tensor<B, 2>,
        pe: &Rope<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (img_mods, img_qkv) = self.img.pre_attention(&img, vec_silu);
        let (txt_mods, txt_qkv) = self.txt.pre_attention(&txt, vec_silu);
        let [q, k, v] = heads_qkv(
            vec![(txt_qkv, &self.txt.norm), (img_qkv, &self.img.norm)],
            self.heads,
            pe,
        );
        let attn = attention_merged(q, k, v);
        let (n_txt, n_img) = (txt.dims()[1], img.dims()[1]);
        let txt_attn = attn.clone().narrow(1, 0, n_txt);
        let img_attn = attn.narrow(1, n_txt, n_img);
        let img = self.img.post_attention(img, img_attn, img_mods);
        let txt = self.txt.post_attention(txt, txt_attn, txt_mods);
        (img, txt)
    }
}

/// A single-stream block over the concatenated text and image tokens; attention and MLP run in
/// parallel from one fused projection (`linear1`) and merge in `linear2`.
#[derive(Debug, Clone)]
pub struct SingleBlock<B: Backend> {
    modulation: Linear<B>,
    /// `linear1`'s first 3·hidden rows (q, k, v) and the rest (MLP in), split at load so that
    /// both outputs are contiguous (strided element-wise ops are slow on the CPU backend).
    qkv: Linear<B>,
    mlp_in: Linear<B>,
    linear2: Linear<B>,
    norm: QkNorm<B>,
    heads: usize,
}

impl<B: Backend> SingleBlock<B> {
    pub fn load(w: &Weights<B>, index: usize, cfg: &FluxConfig) -> Result<Self, ModelError> {
        let (h, m) = (cfg.hidden, cfg.mlp_hidden);
        let name = format!("single_blocks.{index}");
        let [qkv, mlp_in] = w
            .linear(&format!("{name}.linear1"), h, 3 * h + m)?
            .split_rows(3 * h);
        Ok(SingleBlock {
            modulation: w.linear(&format!("{name}.modulation.lin"), h, 3 * h)?,
            qkv,
            mlp_in,
            linear2: w.linear(&format!("{name}.linear2"), h + m, h)?,
            norm: QkNorm::load(w, &format!("{name}.norm"), cfg.head_dim)?,
            heads: cfg.heads,
        })
    }

    /// The block on `x` (text then image tokens); `vec_silu` is silu(vec).
    pub fn forward(&self, x: Tensor<B, 3>, vec_silu: &Tensor<B, 2>, pe: &Rope<B>) -> Tensor<B, 3> {
        let m = mods(&modulation(&self.modulation, vec_silu, 3, x.dtype()));
        let modulated = m.modulate_norm(&x);
        let mlp = op("linear mlp in + gelu", &x, || {
            self.mlp_in.forward_gelu(modulated.clone())
        });
        let qkv = op("linear qkv", &x, || self.qkv.forward(modulated));
        let [q, k, v] = heads_qkv(vec![(qkv, &self.norm)], self.heads, pe);
        let attn = attention_merged(q, k, v);
        let merged = op("concat", &x, || Tensor::cat(vec![attn, mlp], 2));
        let out = op("linear2 (out)", &x, || self.linear2.forward(merged));
        m.gated(x, out)
    }
}

/// `final_layer`: adaLN (shift first, then scale) and the projection to patch channels.
#[derive(Debug, Clone)]
pub struct LastLayer<B: Backend> {
    ada_ln: Linear<B>,
    linear: Linear<B>,
}

impl<B: Backend> LastLayer<B> {
    pub fn load(w: &Weights<B>, cfg: &FluxConfig) -> Result<Self, ModelError> {
        Ok(LastLayer {
            ada_ln: w.linear("final_layer.adaLN_modulation.1", cfg.hidden, 2 * cfg.hidden)?,
            linear: w.linear("final_layer.linear", cfg.hidden, cfg.out_channels)?,
        })
    }

    /// The projection of the image tokens `x`; `vec_silu` is silu(vec).
    pub fn forward(&self, x: Tensor<B, 3>, vec_silu: &Tensor<B, 2>) -> Tensor<B, 3> {
        let parts = modulation(&self.ada_ln, vec_silu, 2, x.dtype());
        self.linear.forward(modulate_norm(&x, &parts[0], &parts[1]))
    }
}
