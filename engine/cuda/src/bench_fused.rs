//! `weft bench fused`: the fused block kernels ([`super::fused`]) against the chains of burn-cuda
//! kernels they replace (for the GEMV: burn's f32 product with the weight converted, the
//! model's fallback), on Flux-shaped random activations: the largest difference from an f32
//! reference computed by burn (the command fails beyond bf16 tolerance), and wall time per call
//! of each side, waits included, as the model sees them.
use crate::bench_support::within_bf16_tolerance;
use anyhow::bail;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct FusedArgs {
    /// `cuda:N` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Tokens (rows) of the activations: Flux at 1024² has 4096 image + 512 text.
    #[arg(long, default_value_t = 4608)]
    pub tokens: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 3072)]
    pub hidden: usize,
    /// Attention heads (hidden / heads is the head dim).
    #[arg(long, default_value_t = 24)]
    pub heads: usize,
    /// Timed calls per measurement (after one warm-up call).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long)]
    pub json: bool,
}

/// One kernel's check and timing.
#[derive(Debug, Clone, Serialize)]
pub struct FusedRow {
    pub op: String,
    pub shape: Vec<usize>,
    /// Fused kernel, wall time per call (waits included), milliseconds.
    pub fused_ms: f64,
    /// burn-cuda's chain of kernels in bf16, as the model's fallback runs it.
    pub burn_ms: f64,
    /// max |fused − f32 reference| and max |reference|.
    pub max_abs_diff: f32,
    pub max_abs_ref: f32,
}

impl FusedRow {
    /// Whether the fused result is within bf16 tolerance of the reference.
    pub fn within_tolerance(&self) -> bool {
        within_bf16_tolerance(self.max_abs_diff, self.max_abs_ref)
    }
}

pub fn run_fused(args: FusedArgs) -> anyhow::Result<()> {
    let Some(index) = crate::bench_support::cuda_index(&args.device) else {
        bail!("--device {}: expected cuda:N", args.device)
    };
    if args.heads == 0 || !args.hidden.is_multiple_of(args.heads) {
        bail!(
            "--hidden {} is not a multiple of --heads {}",
            args.hidden,
            args.heads
        );
    }
    let rows = measure(index, &args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "device": args.device, "tokens": args.tokens, "hidden": args.hidden,
                "heads": args.heads, "iters": args.iters, "rows": rows
            }))?
        );
    } else {
        println!(
            "fused block kernels on {} ({} tokens × {}, {} heads), bf16, {} calls each",
            args.device, args.tokens, args.hidden, args.heads, args.iters
        );
        println!(
            "{:<14} {:>10} {:>10} {:>8} {:>12} {:>10}",
            "op", "fused ms", "burn ms", "speedup", "max |diff|", "max |ref|"
        );
        for r in &rows {
            println!(
                "{:<14} {:>10.4} {:>10.4} {:>7.2}x {:>12.3e} {:>10.3}",
                r.op,
                r.fused_ms,
                r.burn_ms,
                r.burn_ms / r.fused_ms,
                r.max_abs_diff,
                r.max_abs_ref
            );
        }
    }
    let bad: Vec<&str> = rows
        .iter()
        .filter(|r| !r.within_tolerance())
        .map(|r| r.op.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("beyond bf16 tolerance: {}", bad.join(", "));
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn measure(_: usize, _: &FusedArgs) -> anyhow::Result<Vec<FusedRow>> {
    bail!("this weft was built without the `cuda` feature")
}

#[cfg(feature = "cuda")]
fn measure(index: usize, args: &FusedArgs) -> anyhow::Result<Vec<FusedRow>> {
    cuda::measure(index, args)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{FusedArgs, FusedRow};
    use crate::activation::gelu_tanh as gelu;
    use crate::backend::CudaBackend;
    use crate::fused::{CudaFused, QkvSegment};
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Distribution, Tensor, TensorData};
    use burn_cubecl::cubecl::cuda::CudaDevice;
    use std::time::Instant;

    type T<const D: usize> = Tensor<CudaBackend, D>;

    fn randn<const D: usize>(shape: [usize; D], std: f64, device: &CudaDevice) -> T<D> {
        T::<D>::random(shape, Distribution::Normal(0.0, std), device).cast(DType::BF16)
    }

    /// Wall milliseconds per call of `f` (one warm-up call, then `iters`, synced at both ends).
    fn time<R>(device: &CudaDevice, iters: usize, mut f: impl FnMut() -> R) -> anyhow::Result<f64> {
        drop(f());
        CudaBackend::sync(device).map_err(|e| anyhow::anyhow!("sync: {e:?}"))?;
        let start = Instant::now();
        for _ in 0..iters {
            drop(f());
        }
        CudaBackend::sync(device).map_err(|e| anyhow::anyhow!("sync: {e:?}"))?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / iters as f64)
    }

    fn diff<const D: usize>(got: T<D>, want: T<D>) -> anyhow::Result<(f32, f32)> {
        let got = got.cast(DType::F32);
        let max = |t: T<D>| -> anyhow::Result<f32> {
            t.abs()
                .max()
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .first()
                .copied()
                .ok_or_else(|| anyhow::anyhow!("empty tensor"))
        };
        Ok((max(got - want.clone())?, max(want)?))
    }

    fn f32_of<const D: usize>(t: &T<D>) -> T<D> {
        t.clone().cast(DType::F32)
    }

    fn layer_norm(x: T<3>, eps: f64) -> T<3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        (x - mean) / (var + eps).sqrt()
    }

    fn rms(x: T<4>, scale: &T<1>, eps: f64) -> T<4> {
        let d = scale.dims()[0];
        let ms = x.clone().square().mean_dim(3);
        x * (ms + eps).sqrt().recip() * scale.clone().reshape([1, 1, 1, d])
    }

    /// Pair rotation with tables [L, D]: x·cos + (−x₁, x₀)·sin.
    fn rope(x: T<4>, cos: &T<2>, sin: &T<2>) -> T<4> {
        let [b, h, l, d] = x.dims();
        let pairs = x.clone().reshape([b, h, l, d / 2, 2]);
        let rotated = Tensor::cat(
            vec![pairs.clone().narrow(4, 1, 1).neg(), pairs.narrow(4, 0, 1)],
            4,
        )
        .reshape([b, h, l, d]);
        x * cos.clone().reshape([1, 1, l, d]) + rotated * sin.clone().reshape([1, 1, l, d])
    }

    fn tables(tokens: usize, d: usize, device: &CudaDevice) -> (T<2>, T<2>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for l in 0..tokens {
            for i in 0..d / 2 {
                let angle = l as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
                cos.extend([angle.cos() as f32; 2]);
                sin.extend([angle.sin() as f32; 2]);
            }
        }
        let t = |v| T::<2>::from_data(TensorData::new(v, [tokens, d]), device);
        (t(cos), t(sin))
    }

    pub fn measure(index: usize, args: &FusedArgs) -> anyhow::Result<Vec<FusedRow>> {
        let device = CudaDevice { index };
        let fused = CudaFused::shared(index)?;
        let (l, c, heads, iters) = (args.tokens, args.hidden, args.heads, args.iters.max(1));
        let d = c / heads;
        let eps = 1e-6;
        let mut rows = Vec::new();
        let mut row =
            |op: &str, shape: Vec<usize>, fused_ms, burn_ms, (max_abs_diff, max_abs_ref)| {
                rows.push(FusedRow {
                    op: op.into(),
                    shape,
                    fused_ms,
                    burn_ms,
                    max_abs_diff,
                    max_abs_ref,
                })
            };

        // GELU over the MLP's hidden activations [1, L, 4C].
        let h = randn([1, l, 4 * c], 2.0, &device);
        let got = fused.gelu_tanh(&h)?;
        row(
            "gelu_tanh",
            vec![1, l, 4 * c],
            time(&device, iters, || fused.gelu_tanh(&h))?,
            time(&device, iters, || gelu(h.clone()))?,
            diff(got, gelu(f32_of(&h)))?,
        );

        // LayerNorm + modulation.
        let x = randn([1, l, c], 1.0, &device).add_scalar(0.5);
        let (shift, scale) = (
            randn([1, 1, c], 0.5, &device),
            randn([1, 1, c], 0.5, &device),
        );
        let got = fused.ln_modulate(&x, &shift, &scale, eps as f32)?;
        let want = layer_norm(f32_of(&x), eps) * (f32_of(&scale) + 1.0) + f32_of(&shift);
        row(
            "ln_modulate",
            vec![1, l, c],
            time(&device, iters, || {
                fused.ln_modulate(&x, &shift, &scale, eps as f32)
            })?,
            time(&device, iters, || {
                layer_norm(x.clone().cast(DType::F32), eps).cast(DType::BF16)
                    * (scale.clone() + 1.0)
                    + shift.clone()
            })?,
            diff(got, want)?,
        );

        // Gated residual.
        let y = randn([1, l, c], 1.0, &device);
        let got = fused.gate_residual(&x, &scale, &y)?;
        let want = f32_of(&x) + f32_of(&scale) * f32_of(&y);
        row(
            "gate_residual",
            vec![1, l, c],
            time(&device, iters, || fused.gate_residual(&x, &scale, &y))?,
            time(&device, iters, || x.clone() + scale.clone() * y.clone())?,
            diff(got, want)?,
        );

        // GEMV: a modulation layer, x [1, C] (f32, as the model's `vec`) times W [6C, C] bf16.
        let xv = randn([1, c], 1.0, &device).cast(DType::F32);
        let w = randn([6 * c, c], 0.02, &device);
        let bias = randn([6 * c], 0.1, &device).cast(DType::F32);
        let got = fused.gemv(&xv, &w, Some(&bias))?;
        let want = xv.clone().matmul(f32_of(&w).transpose()) + bias.clone().unsqueeze::<2>();
        row(
            "gemv",
            vec![1, c, 6 * c],
            time(&device, iters, || fused.gemv(&xv, &w, Some(&bias)))?,
            time(&device, iters, || {
                xv.clone().matmul(w.clone().cast(DType::F32).transpose())
                    + bias.clone().unsqueeze::<2>()
            })?,
            diff(got, want)?,
        );

        // QKV split + QK RMS-norm + RoPE, two segments (text then image) as a double block.
        let l_txt = l / 9;
        let segments: Vec<QkvSegment> = [l_txt, l - l_txt]
            .into_iter()
            .map(|n| QkvSegment {
                qkv: randn([1, n, 3 * c], 1.0, &device),
                q_scale: randn([d], 0.3, &device).add_scalar(1.0),
                k_scale: randn([d], 0.3, &device).add_scalar(1.0),
            })
            .collect();
        let (cos, sin) = tables(l, d, &device);
        let [q, k, v] = fused.qk_norm_rope(&segments, &cos, &sin, heads, eps as f32)?;
        let split = |s: &QkvSegment, i: usize, f32: bool| -> T<4> {
            let [b, n, _] = s.qkv.dims();
            let t = s
                .qkv
                .clone()
                .reshape([b, n, 3, heads, d])
                .narrow(2, i, 1)
                .reshape([b, n, heads, d])
                .swap_dims(1, 2);
            if f32 { t.cast(DType::F32) } else { t }
        };
        let reference = |i: usize| -> T<4> {
            let parts: Vec<T<4>> = segments
                .iter()
                .map(|s| match i {
                    0 => rms(split(s, 0, true), &f32_of(&s.q_scale), eps),
                    1 => rms(split(s, 1, true), &f32_of(&s.k_scale), eps),
                    _ => split(s, 2, true),
                })
                .collect();
            let t = Tensor::cat(parts, 2);
            if i < 2 { rope(t, &cos, &sin) } else { t }
        };
        let (mut worst, mut top) = (0f32, 0f32);
        for (i, got) in [q, k, v].into_iter().enumerate() {
            let (dd, r) = diff(got, reference(i))?;
            worst = worst.max(dd);
            top = top.max(r);
        }
        let burn_chain = || {
            let mut out = Vec::new();
            for i in 0..3 {
                let parts: Vec<T<4>> =
                    segments
                        .iter()
                        .map(|s| {
                            let t = split(s, i, false);
                            match i {
                                0 => rms(t.cast(DType::F32), &f32_of(&s.q_scale), eps)
                                    .cast(DType::BF16),
                                1 => rms(t.cast(DType::F32), &f32_of(&s.k_scale), eps)
                                    .cast(DType::BF16),
                                _ => t,
                            }
                        })
                        .collect();
                let t = Tensor::cat(parts, 2);
                out.push(if i < 2 {
                    rope(t.cast(DType::F32), &cos, &sin).cast(DType::BF16)
                } else {
                    t
                });
            }
            out
        };
        row(
            "qk_norm_rope",
            vec![1, l, 3 * c],
            time(&device, iters, || {
                fused.qk_norm_rope(&segments, &cos, &sin, heads, eps as f32)
            })?,
            time(&device, iters, burn_chain)?,
            (worst, top),
        );
        Ok(rows)
    }
}
