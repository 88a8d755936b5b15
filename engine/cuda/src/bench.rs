//! `weft bench gemm`: burn-cuda's matmul against weft's cuBLASLt path ([`super::gemm`]) on the
//! same tensors, with TFLOP/s and the largest difference between the two results. The GELU
//! epilogue (`gelu_tanh(x·Wᵀ + bias)`, Flux's MLP) is checked against burn's f32 matmul followed
//! by the GELU in burn's ops, and the command fails when it is off beyond bf16 tolerance. Its
//! peer for docs/BENCHMARKS.md is tools/bench_gemm_torch.py (torch bf16 matmul, same shapes).
use super::layout::gemm_flops;
use crate::bench_support::cuda_index;
use anyhow::bail;
use clap::Args;
use serde::Serialize;

/// Shapes of `weft bench gemm` when none is given, as `(M, K, N)`: Flux's MLP up-projection at
/// 1024² (4608 tokens, 3072 → 12288) and 8192³.
pub const DEFAULT_SHAPES: [(usize, usize, usize); 2] = [(4608, 3072, 12288), (8192, 8192, 8192)];

#[derive(Args, Debug)]
pub struct GemmArgs {
    /// `cuda:N` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Rows of A and C (with --k and --n: one shape instead of the defaults).
    #[arg(long)]
    pub m: Option<usize>,
    /// Columns of B and C.
    #[arg(long)]
    pub n: Option<usize>,
    /// The inner dimension.
    #[arg(long)]
    pub k: Option<usize>,
    /// bf16 or f16.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Timed products per measurement (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long)]
    pub json: bool,
}

/// One shape's measurements (milliseconds per product).
#[derive(Debug, Serialize)]
pub struct GemmRow {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub dtype: String,
    pub iters: usize,
    /// burn-cuda's `a.matmul(b)`, queued back to back.
    pub burn_ms: f64,
    /// weft, products queued back to back, one wait at the end (the GEMM's own speed).
    pub weft_ms: f64,
    /// weft's `matmul`, which waits for burn before and for the GEMM after every product.
    pub weft_synced_ms: f64,
    /// weft `x · Wᵀ + bias` with W stored [N, K] (transpose flag + bias epilogue), back to back.
    pub weft_linear_bias_ms: f64,
    /// weft `gelu_tanh(x · Wᵀ + bias)` (GELU + bias epilogue), back to back.
    pub weft_linear_gelu_ms: f64,
    /// max |weft − burn| over C = A·B, and max |burn| for scale.
    pub max_abs_diff: f32,
    pub max_abs_ref: f32,
    /// max |weft linear − burn's x.matmul(wᵀ) + bias|.
    pub linear_bias_max_abs_diff: f32,
    /// max |weft's GELU epilogue − gelu_tanh(x.matmul(wᵀ) + bias)|, the reference in f32 from
    /// the same (rounded) operands, and max |reference|.
    pub linear_gelu_max_abs_diff: f32,
    pub linear_gelu_max_abs_ref: f32,
    /// NaNs in the GELU epilogue's output (a device `max` may skip them).
    pub linear_gelu_nan_count: i64,
}

impl GemmRow {
    pub fn tflops(&self, ms: f64) -> f64 {
        gemm_flops(self.m, self.k, self.n) / (ms * 1e-3) / 1e12
    }

    /// Whether the GELU epilogue is within bf16 tolerance of its f32 reference (the rule of
    /// `weft bench fused`: the output's one rounding, the epilogue's own tanh and the order of
    /// accumulation stay well inside it). NaN fails.
    pub fn gelu_within_tolerance(&self) -> bool {
        self.linear_gelu_nan_count == 0
            && crate::bench_support::within_bf16_tolerance(
                self.linear_gelu_max_abs_diff,
                self.linear_gelu_max_abs_ref,
            )
    }
}

/// The shapes to run: the one given by --m/--k/--n, or the defaults.
pub fn shapes(args: &GemmArgs) -> anyhow::Result<Vec<(usize, usize, usize)>> {
    match (args.m, args.k, args.n) {
        (None, None, None) => Ok(DEFAULT_SHAPES.to_vec()),
        (Some(m), Some(k), Some(n)) if m > 0 && k > 0 && n > 0 => Ok(vec![(m, k, n)]),
        _ => bail!("give all of --m, --k, --n (each > 0), or none"),
    }
}

pub fn run_gemm(args: GemmArgs) -> anyhow::Result<()> {
    let Some(index) = cuda_index(&args.device) else {
        bail!("--device {}: expected cuda:N", args.device)
    };
    if !matches!(args.dtype.as_str(), "bf16" | "f16") {
        bail!("--dtype {}: expected bf16 or f16", args.dtype);
    }
    let shapes = shapes(&args)?;
    let rows = cuda::measure(index, &shapes, &args.dtype, args.iters.max(1))?;
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("burn_tflops".into(), r.tflops(r.burn_ms).into());
                    o.insert("weft_tflops".into(), r.tflops(r.weft_ms).into());
                    o.insert(
                        "weft_synced_tflops".into(),
                        r.tflops(r.weft_synced_ms).into(),
                    );
                    o.insert(
                        "weft_linear_bias_tflops".into(),
                        r.tflops(r.weft_linear_bias_ms).into(),
                    );
                    o.insert(
                        "weft_linear_gelu_tflops".into(),
                        r.tflops(r.weft_linear_gelu_ms).into(),
                    );
                    o.insert("gelu_ok".into(), r.gelu_within_tolerance().into());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"device": args.device, "rows": rows})
            )?
        );
    } else {
        print_table(&args, &rows);
    }
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.gelu_within_tolerance())
        .map(|r| {
            format!(
                "{}x{}x{} (max|diff| {:.3e}, max|ref| {:.3})",
                r.m, r.k, r.n, r.linear_gelu_max_abs_diff, r.linear_gelu_max_abs_ref
            )
        })
        .collect();
    if !bad.is_empty() {
        bail!(
            "the GELU epilogue is off burn's reference beyond bf16 tolerance: {}",
            bad.join(", ")
        );
    }
    Ok(())
}

fn print_table(args: &GemmArgs, rows: &[GemmRow]) {
    println!(
        "GEMM on {} ({}, M x K x N, ms per product and TFLOP/s, {} iterations)",
        args.device, args.dtype, args.iters
    );
    println!(
        "{:>20} {:>16} {:>16} {:>16} {:>18} {:>18} {:>12} {:>10} {:>12} {:>13}",
        "shape",
        "burn",
        "weft",
        "weft synced",
        "weft x·Wᵀ+bias",
        "weft gelu(x·Wᵀ+b)",
        "max|diff|",
        "max|C|",
        "lin |diff|",
        "gelu |diff|"
    );
    for r in rows {
        let cell = |ms: f64| format!("{ms:.3} ({:.0})", r.tflops(ms));
        println!(
            "{:>20} {:>16} {:>16} {:>16} {:>18} {:>18} {:>12.4} {:>10.2} {:>12.4} {:>13}",
            format!("{}x{}x{}", r.m, r.k, r.n),
            cell(r.burn_ms),
            cell(r.weft_ms),
            cell(r.weft_synced_ms),
            cell(r.weft_linear_bias_ms),
            cell(r.weft_linear_gelu_ms),
            r.max_abs_diff,
            r.max_abs_ref,
            r.linear_bias_max_abs_diff,
            format!(
                "{:.4}{}",
                r.linear_gelu_max_abs_diff,
                if r.gelu_within_tolerance() { "" } else { " NO" }
            )
        );
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use super::GemmRow;
    use crate::activation::{Activation, gelu_tanh};
    use crate::backend::CudaBackend;
    use crate::bench_support::{max_abs, nan_count};
    use crate::gemm::CudaGemm;
    use anyhow::{Context, bail};
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Distribution, Tensor};
    use std::time::Instant;

    type T2 = Tensor<CudaBackend, 2>;

    pub fn measure(
        index: usize,
        shapes: &[(usize, usize, usize)],
        dtype: &str,
        iters: usize,
    ) -> anyhow::Result<Vec<GemmRow>> {
        let dt = if dtype == "f16" {
            DType::F16
        } else {
            DType::BF16
        };
        let gemm = CudaGemm::new(index).with_context(|| format!("cuda:{index}"))?;
        let dev = gemm.device().clone();
        let sync = || CudaBackend::sync(&dev).map_err(|e| anyhow::anyhow!("sync: {e:?}"));
        let mut rows = Vec::new();
        for &(m, k, n) in shapes {
            let rand = |shape: [usize; 2]| {
                T2::random(shape, Distribution::Uniform(-1.0, 1.0), &dev).cast(dt)
            };
            let (a, b, w) = (rand([m, k]), rand([k, n]), rand([n, k]));
            let bias =
                Tensor::<CudaBackend, 1>::random([n], Distribution::Uniform(-1.0, 1.0), &dev)
                    .cast(dt);
            sync()?;

            // burn-cuda's own matmul, back to back.
            let time_burn = || -> anyhow::Result<f64> {
                for _ in 0..3 {
                    drop(a.clone().matmul(b.clone()));
                }
                sync()?;
                let start = Instant::now();
                for _ in 0..iters {
                    drop(a.clone().matmul(b.clone()));
                }
                sync()?;
                Ok(start.elapsed().as_secs_f64() * 1e3 / iters as f64)
            };
            let burn_ms = time_burn()?;

            // weft, queued back to back (outputs kept until the wait: their buffers are in use).
            let batched = |x: &T2,
                           y: &T2,
                           bias: Option<&Tensor<CudaBackend, 1>>,
                           activation: Activation|
             -> anyhow::Result<f64> {
                let run = |count: usize| -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let mut outs = Vec::with_capacity(count);
                    for _ in 0..count {
                        match gemm.enqueue(x, y, bias, activation)? {
                            Ok(out) => outs.push(out),
                            Err(reason) => bail!("cuBLASLt path not taken: {reason}"),
                        }
                    }
                    gemm.wait()?;
                    let elapsed = start.elapsed().as_secs_f64();
                    drop(outs);
                    Ok(elapsed * 1e3 / count as f64)
                };
                run(3)?;
                run(iters)
            };
            let weft_ms = batched(&a, &b, None, Activation::Identity)?;
            let wt = w.clone().transpose();
            let weft_linear_bias_ms = batched(&a, &wt, Some(&bias), Activation::Identity)?;
            let weft_linear_gelu_ms = batched(&a, &wt, Some(&bias), Activation::GeluTanh)?;

            // weft's `matmul`: waits on both sides of every product.
            for _ in 0..3 {
                drop(gemm.matmul(a.clone(), b.clone())?);
            }
            let start = Instant::now();
            for _ in 0..iters {
                drop(gemm.matmul(a.clone(), b.clone())?);
            }
            sync()?;
            let weft_synced_ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;

            // Agreement with burn, computed on the device.
            let reference = a.clone().matmul(b.clone());
            let ours = gemm.matmul(a.clone(), b.clone())?;
            let max_abs_ref = max_abs(reference.clone());
            let max_abs_diff = max_abs(ours.cast(DType::F32) - reference.cast(DType::F32));
            let reference = a.clone().matmul(wt.clone()) + bias.clone().unsqueeze_dim(0);
            let ours = gemm.linear(a.clone(), w.clone(), Some(bias.clone()))?;
            let linear_bias_max_abs_diff =
                max_abs(ours.cast(DType::F32) - reference.cast(DType::F32));
            let f32_of = |t: &T2| t.clone().cast(DType::F32);
            let reference = gelu_tanh(
                f32_of(&a).matmul(f32_of(&wt)) + bias.clone().cast(DType::F32).unsqueeze_dim(0),
            );
            let ours = gemm.linear_gelu(a.clone(), w.clone(), Some(bias.clone()))?;
            let linear_gelu_max_abs_ref = max_abs(reference.clone());
            let ours = ours.cast(DType::F32);
            let linear_gelu_nan_count = nan_count(&ours);
            let linear_gelu_max_abs_diff = max_abs(ours - reference);
            sync()?;

            rows.push(GemmRow {
                m,
                k,
                n,
                dtype: dtype.to_string(),
                iters,
                burn_ms,
                weft_ms,
                weft_synced_ms,
                weft_linear_bias_ms,
                weft_linear_gelu_ms,
                max_abs_diff,
                max_abs_ref,
                linear_bias_max_abs_diff,
                linear_gelu_max_abs_diff,
                linear_gelu_max_abs_ref,
                linear_gelu_nan_count,
            });
            eprintln!("{m}x{k}x{n}: done");
        }
        Ok(rows)
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::GemmRow;
    pub fn measure(
        index: usize,
        _shapes: &[(usize, usize, usize)],
        _dtype: &str,
        _iters: usize,
    ) -> anyhow::Result<Vec<GemmRow>> {
        anyhow::bail!(
            "--device cuda:{index}: this weft was built without CUDA; build it with `cargo build --release -p weft --features cuda`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(m: Option<usize>, k: Option<usize>, n: Option<usize>) -> GemmArgs {
        GemmArgs {
            device: "cuda:0".into(),
            m,
            n,
            k,
            dtype: "bf16".into(),
            iters: 1,
            json: false,
        }
    }

    #[test]
    fn shapes_and_devices() {
        assert_eq!(
            shapes(&args(None, None, None)).unwrap(),
            DEFAULT_SHAPES.to_vec()
        );
        assert_eq!(
            shapes(&args(Some(2), Some(3), Some(4))).unwrap(),
            vec![(2, 3, 4)]
        );
        assert!(shapes(&args(Some(2), None, Some(4))).is_err());
        assert!(shapes(&args(Some(0), Some(3), Some(4))).is_err());
        assert_eq!(cuda_index("cuda:1"), Some(1));
        assert_eq!(cuda_index("cpu"), None);
    }

    fn row(gelu_diff: f32, gelu_ref: f32) -> GemmRow {
        GemmRow {
            m: 8192,
            k: 8192,
            n: 8192,
            dtype: "bf16".into(),
            iters: 1,
            burn_ms: 1.0,
            weft_ms: 1.0,
            weft_synced_ms: 1.0,
            weft_linear_bias_ms: 1.0,
            weft_linear_gelu_ms: 1.0,
            max_abs_diff: 0.0,
            max_abs_ref: 0.0,
            linear_bias_max_abs_diff: 0.0,
            linear_gelu_max_abs_diff: gelu_diff,
            linear_gelu_max_abs_ref: gelu_ref,
            linear_gelu_nan_count: 0,
        }
    }

    #[test]
    fn tflops_of_a_row() {
        assert!((row(0.0, 0.0).tflops(1.0) - 1099.5).abs() < 0.1);
    }

    #[test]
    fn gelu_tolerance_is_relative_to_the_reference() {
        assert!(row(0.5, 100.0).gelu_within_tolerance());
        assert!(!row(1.0, 100.0).gelu_within_tolerance());
        assert!(row(5e-4, 0.0).gelu_within_tolerance());
        assert!(!row(f32::NAN, 100.0).gelu_within_tolerance());
        assert!(!row(0.5, f32::NAN).gelu_within_tolerance());
        let mut nan = row(0.0, 100.0);
        nan.linear_gelu_nan_count = 1;
        assert!(!nan.gelu_within_tolerance());
    }
}
