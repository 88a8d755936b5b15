//! `weft bench attention`: weft's flash kernel ([`super::attention`]) against burn-cuda's
//! attention (`softmax(q·kᵀ·scale)·v` as the model layers write it) on the same random tensors,
//! with TFLOP/s and the error of both against an f32 reference computed on the device. Exits
//! non-zero when weft's error is beyond bf16/f16 tolerance. Its peer for docs/BENCHMARKS.md is
//! tools/bench_attention_torch.py (torch SDPA, same shapes).
use super::attention_plan::attention_flops;
use crate::bench_support::cuda_index;
use anyhow::bail;
use clap::Args;
use serde::Serialize;

/// Shapes `(B, H, S, D)` of `weft bench attention` when none is given: Flux at 1024² (4096 image +
/// 512 text tokens, 24 heads of 128), the d = 64 instantiation, and sequences that are not a
/// multiple of the 128-row query tile or the 64-key tile.
pub const DEFAULT_SHAPES: [(usize, usize, usize, usize); 4] = [
    (1, 24, 4608, 128),
    (1, 24, 4608, 64),
    (1, 24, 1000, 128),
    (2, 8, 1000, 64),
];

/// Largest `max |weft − ref|` accepted, relative to `max |ref|`: a few bf16 ulps (2⁻⁸ relative)
/// of the output plus the rounding of P to 16 bits before P·V.
pub const TOLERANCE: f32 = 2e-2;

#[derive(Args, Debug)]
pub struct AttentionArgs {
    /// `cuda:N` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Batch (any of --b/--h/--s/--d gives one shape, the rest defaulting to 1×24×4608×128).
    #[arg(long)]
    pub b: Option<usize>,
    /// Heads.
    #[arg(long)]
    pub h: Option<usize>,
    /// Sequence length (queries and keys).
    #[arg(long)]
    pub s: Option<usize>,
    /// Head dim (64 or 128).
    #[arg(long)]
    pub d: Option<usize>,
    /// bf16 or f16.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Timed runs per measurement (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Skip burn's attention (slow in bf16: ~80 ms a call at 1×24×4608×128).
    #[arg(long)]
    pub no_burn: bool,
    #[arg(long)]
    pub json: bool,
}

/// One shape's measurements (milliseconds per attention) and errors.
#[derive(Debug, Serialize)]
pub struct AttentionRow {
    pub b: usize,
    pub h: usize,
    pub s: usize,
    pub d: usize,
    pub dtype: String,
    pub iters: usize,
    /// weft's kernel alone: CUDA events around back-to-back launches.
    pub weft_kernel_ms: f64,
    /// weft's `attention`, which waits for burn before and for the kernel after every call.
    pub weft_synced_ms: f64,
    /// burn-cuda's attention in the input dtype (scores' softmax in f32), back to back.
    pub burn_ms: Option<f64>,
    /// max |weft − ref| and max |ref|, the reference in f32 from the same (rounded) inputs.
    pub weft_max_abs_err: f32,
    pub max_abs_ref: f32,
    /// NaNs in weft's output (a device `max` may skip them).
    pub weft_nan_count: i64,
    /// max |burn − ref|, for scale.
    pub burn_max_abs_err: Option<f32>,
}

impl AttentionRow {
    pub fn flops(&self) -> f64 {
        attention_flops(self.b, self.h, self.s, self.s, self.d)
    }

    pub fn tflops(&self, ms: f64) -> f64 {
        self.flops() / (ms * 1e-3) / 1e12
    }

    /// `max |weft − ref| / max |ref|`.
    pub fn weft_rel_err(&self) -> f32 {
        self.weft_max_abs_err / self.max_abs_ref.max(f32::MIN_POSITIVE)
    }

    pub fn within_tolerance(&self) -> bool {
        // NaN compares false, so a NaN error fails too.
        self.weft_nan_count == 0 && self.max_abs_ref.is_finite() && self.weft_rel_err() <= TOLERANCE
    }
}

/// The shapes to run: one from --b/--h/--s/--d (defaults for those not given), or the defaults.
pub fn shapes(args: &AttentionArgs) -> anyhow::Result<Vec<(usize, usize, usize, usize)>> {
    if args.b.is_none() && args.h.is_none() && args.s.is_none() && args.d.is_none() {
        return Ok(DEFAULT_SHAPES.to_vec());
    }
    let shape = (
        args.b.unwrap_or(1),
        args.h.unwrap_or(24),
        args.s.unwrap_or(4608),
        args.d.unwrap_or(128),
    );
    if shape.0 == 0 || shape.1 == 0 || shape.2 == 0 || shape.3 == 0 {
        bail!("--b, --h, --s and --d must be > 0");
    }
    Ok(vec![shape])
}

pub fn run_attention(args: AttentionArgs) -> anyhow::Result<()> {
    let Some(index) = cuda_index(&args.device) else {
        bail!("--device {}: expected cuda:N", args.device)
    };
    if !matches!(args.dtype.as_str(), "bf16" | "f16") {
        bail!("--dtype {}: expected bf16 or f16", args.dtype);
    }
    let shapes = shapes(&args)?;
    let rows = cuda::measure(
        index,
        &shapes,
        &args.dtype,
        args.iters.max(1),
        !args.no_burn,
    )?;
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "weft_kernel_tflops".into(),
                        r.tflops(r.weft_kernel_ms).into(),
                    );
                    o.insert(
                        "weft_synced_tflops".into(),
                        r.tflops(r.weft_synced_ms).into(),
                    );
                    o.insert(
                        "burn_tflops".into(),
                        r.burn_ms.map(|ms| r.tflops(ms)).into(),
                    );
                    o.insert("weft_rel_err".into(), r.weft_rel_err().into());
                    o.insert("ok".into(), r.within_tolerance().into());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"device": args.device, "tolerance": TOLERANCE, "rows": rows})
            )?
        );
    } else {
        println!(
            "attention on {} ({}, B x H x S x D, ms per call and TFLOP/s, {} iterations)",
            args.device, args.dtype, args.iters
        );
        println!(
            "{:>18} {:>16} {:>16} {:>16} {:>11} {:>9} {:>11} {:>5}",
            "shape",
            "weft kernel",
            "weft synced",
            "burn",
            "weft |err|",
            "max|ref|",
            "burn |err|",
            "ok"
        );
        for r in &rows {
            let cell = |ms: f64| format!("{ms:.3} ({:.0})", r.tflops(ms));
            println!(
                "{:>18} {:>16} {:>16} {:>16} {:>11.2e} {:>9.3} {:>11} {:>5}",
                format!("{}x{}x{}x{}", r.b, r.h, r.s, r.d),
                cell(r.weft_kernel_ms),
                cell(r.weft_synced_ms),
                r.burn_ms.map_or("-".into(), cell),
                r.weft_max_abs_err,
                r.max_abs_ref,
                r.burn_max_abs_err
                    .map_or("-".into(), |e| format!("{e:.2e}")),
                if r.within_tolerance() { "yes" } else { "NO" }
            );
        }
    }
    let failed: Vec<_> = rows.iter().filter(|r| !r.within_tolerance()).collect();
    if !failed.is_empty() {
        let list: Vec<_> = failed
            .iter()
            .map(|r| {
                format!(
                    "{}x{}x{}x{} (max|err| / max|ref| = {:.3e})",
                    r.b,
                    r.h,
                    r.s,
                    r.d,
                    r.weft_rel_err()
                )
            })
            .collect();
        bail!(
            "weft's attention is off the f32 reference beyond {TOLERANCE}: {}",
            list.join(", ")
        );
    }
    Ok(())
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::AttentionRow;
    use crate::attention::CudaAttention;
    use crate::attention_plan::AttnDType;
    use crate::backend::CudaBackend;
    use crate::bench_support::{max_abs, nan_count};
    use anyhow::Context;
    use burn::tensor::activation::softmax;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Distribution, Tensor};
    use std::time::Instant;

    type T4 = Tensor<CudaBackend, 4>;

    /// burn's attention as nodes/models/src/layers.rs runs it: products in the input dtype,
    /// softmax in f32.
    fn burn_attention(q: T4, k: T4, v: T4, scale: f32) -> T4 {
        let dtype = q.dtype();
        let scores = q.matmul(k.swap_dims(2, 3)) * scale;
        softmax(scores.cast(DType::F32), 3).cast(dtype).matmul(v)
    }

    /// The reference: everything in f32 (from the same rounded inputs).
    fn reference(q: &T4, k: &T4, v: &T4, scale: f32) -> T4 {
        let f = |t: &T4| t.clone().cast(DType::F32);
        let scores = f(q).matmul(f(k).swap_dims(2, 3)) * scale;
        softmax(scores, 3).matmul(f(v))
    }

    pub fn measure(
        index: usize,
        shapes: &[(usize, usize, usize, usize)],
        dtype: &str,
        iters: usize,
        with_burn: bool,
    ) -> anyhow::Result<Vec<AttentionRow>> {
        let dt = if dtype == "f16" {
            DType::F16
        } else {
            DType::BF16
        };
        let attention = CudaAttention::new(index).with_context(|| format!("cuda:{index}"))?;
        eprintln!(
            "flash kernel: {}",
            attention.kernel(AttnDType::from_burn(dt)?).name()
        );
        let dev = attention.device().clone();
        let sync = || CudaBackend::sync(&dev).map_err(|e| anyhow::anyhow!("sync: {e:?}"));
        let mut rows = Vec::new();
        for &(b, h, s, d) in shapes {
            let scale = 1.0 / (d as f32).sqrt();
            let rand = || T4::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &dev).cast(dt);
            let (q, k, v) = (rand(), rand(), rand());
            sync()?;

            let weft_kernel_ms = attention.time_kernel(&q, &k, &v, scale, iters)?;

            for _ in 0..3 {
                drop(attention.attention(q.clone(), k.clone(), v.clone(), scale)?);
            }
            let start = Instant::now();
            for _ in 0..iters {
                drop(attention.attention(q.clone(), k.clone(), v.clone(), scale)?);
            }
            sync()?;
            let weft_synced_ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;

            let burn_ms = if with_burn {
                drop(burn_attention(q.clone(), k.clone(), v.clone(), scale));
                sync()?;
                let start = Instant::now();
                for _ in 0..iters {
                    drop(burn_attention(q.clone(), k.clone(), v.clone(), scale));
                }
                sync()?;
                Some(start.elapsed().as_secs_f64() * 1e3 / iters as f64)
            } else {
                None
            };

            let reference = reference(&q, &k, &v, scale);
            let ours = attention.attention(q.clone(), k.clone(), v.clone(), scale)?;
            let max_abs_ref = max_abs(reference.clone());
            let ours = ours.cast(DType::F32);
            let weft_nan_count = nan_count(&ours);
            let weft_max_abs_err = max_abs(ours - reference.clone());
            let burn_max_abs_err = if with_burn {
                let theirs = burn_attention(q.clone(), k.clone(), v.clone(), scale);
                Some(max_abs(theirs.cast(DType::F32) - reference))
            } else {
                None
            };
            sync()?;

            rows.push(AttentionRow {
                b,
                h,
                s,
                d,
                dtype: dtype.to_string(),
                iters,
                weft_kernel_ms,
                weft_synced_ms,
                burn_ms,
                weft_max_abs_err,
                max_abs_ref,
                weft_nan_count,
                burn_max_abs_err,
            });
            eprintln!("{b}x{h}x{s}x{d}: done");
        }
        Ok(rows)
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::AttentionRow;
    pub fn measure(
        index: usize,
        _shapes: &[(usize, usize, usize, usize)],
        _dtype: &str,
        _iters: usize,
        _with_burn: bool,
    ) -> anyhow::Result<Vec<AttentionRow>> {
        anyhow::bail!(
            "--device cuda:{index}: this weft was built without CUDA; build it with `cargo build --release -p weft --features cuda`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(b: Option<usize>, s: Option<usize>, d: Option<usize>) -> AttentionArgs {
        AttentionArgs {
            device: "cuda:0".into(),
            b,
            h: None,
            s,
            d,
            dtype: "bf16".into(),
            iters: 1,
            no_burn: false,
            json: false,
        }
    }

    fn row(err: f32, max_ref: f32) -> AttentionRow {
        AttentionRow {
            b: 1,
            h: 24,
            s: 4608,
            d: 128,
            dtype: "bf16".into(),
            iters: 1,
            weft_kernel_ms: 1.0,
            weft_synced_ms: 1.0,
            burn_ms: None,
            weft_max_abs_err: err,
            max_abs_ref: max_ref,
            weft_nan_count: 0,
            burn_max_abs_err: None,
        }
    }

    #[test]
    fn default_and_given_shapes() {
        let defaults = shapes(&args(None, None, None)).unwrap();
        assert_eq!(defaults, DEFAULT_SHAPES.to_vec());
        // The defaults cover both instantiations and a sequence off the tile sizes.
        assert!(defaults.iter().any(|s| s.3 == 64) && defaults.iter().any(|s| s.3 == 128));
        assert!(defaults.iter().any(|s| s.2 % 128 != 0 && s.2 % 64 != 0));
        assert_eq!(
            shapes(&args(None, Some(1000), Some(64))).unwrap(),
            vec![(1, 24, 1000, 64)]
        );
        assert!(shapes(&args(Some(0), None, None)).is_err());
    }

    #[test]
    fn flops_tolerance_and_nan() {
        // 4·24·4608²·128 flops in 0.40 ms (torch SDPA on the H100): ~652 TFLOP/s.
        assert!((row(0.0, 1.0).tflops(0.40) - 652.3).abs() < 0.5);
        assert!(row(0.01, 1.0).within_tolerance());
        assert!(!row(0.05, 1.0).within_tolerance());
        assert!(!row(f32::NAN, 1.0).within_tolerance());
        assert!(!row(0.0, f32::NAN).within_tolerance());
        let mut nan = row(0.0, 1.0);
        nan.weft_nan_count = 3;
        assert!(!nan.within_tolerance());
    }
}
