//! `weft bench quant-linear [--device cpu|cuda:N]`: the quantized-resident linear layer's
//! self-test and timing. For every quantized type: random ggml blocks uploaded as the patcher
//! uploads them, a layer over the blocks (`weft_models::quant`, dequantized at each product)
//! against a layer over the same matrix dequantized once on the host, on the same activations;
//! the command fails when the outputs differ beyond bf16 tolerance, and times both layers.
use super::run::RunDevice;
use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use weft_cuda::bench_dequant::{random_blocks, selected_types};
use weft_cuda::bench_support::within_bf16_tolerance;
use weft_cuda::on_cuda::{OnBackend, on_cuda};
use weft_engine::formats::gguf::dequant;
use weft_engine::patcher::WeightDevice;
use weft_models::layers::{Linear, to_dtype};
use weft_models::quant::{Matrix, QuantMatrix};

/// Arguments of `weft bench quant-linear`.
#[derive(clap::Args, Debug, Clone)]
pub struct QuantLinearArgs {
    /// `cpu` (burn-flex) or `cuda:N`.
    #[arg(long, value_name = "cpu|cuda:N", default_value = "cpu")]
    pub device: String,
    /// Rows of the activations (Flux-dev at 1024²: 4608 tokens).
    #[arg(long, default_value_t = 4608)]
    pub tokens: usize,
    /// Input width (a multiple of 256, so that every type's blocks fit whole).
    #[arg(long, default_value_t = 3072)]
    pub d_in: usize,
    /// Output width.
    #[arg(long, default_value_t = 12288)]
    pub d_out: usize,
    /// Only these ggml types (comma-separated, e.g. `q4_k,q8_0`); default: every quantized one.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Timed calls per layer (after one warm-up call).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Seed of the random blocks and activations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// One type's comparison and timing.
#[derive(Debug, Clone, Serialize)]
pub struct QuantLinearRow {
    #[serde(rename = "type")]
    pub ty: String,
    /// Bytes of the blocks the layer holds.
    pub block_bytes: u64,
    /// Bytes the same matrix takes dequantized in the compute dtype.
    pub dense_bytes: u64,
    /// Largest |quantized − dense| over the outputs.
    pub max_abs_diff: f32,
    /// Largest |dense| over the outputs.
    pub max_abs_ref: f32,
    /// `max_abs_diff` within bf16 tolerance of `max_abs_ref`.
    pub within_tolerance: bool,
    /// Milliseconds per call of the layer over the dequantized matrix.
    pub dense_ms: f64,
    /// Milliseconds per call of the layer over the blocks (dequantization included).
    pub quantized_ms: f64,
}

/// What `weft bench quant-linear` measured.
#[derive(Debug, Clone, Serialize)]
pub struct QuantLinearReport {
    pub device: String,
    /// The compute dtype (the weight device's: bf16 on CUDA, f32 on the CPU).
    pub dtype: String,
    pub tokens: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub rows: Vec<QuantLinearRow>,
}

impl QuantLinearReport {
    /// Whether every type stayed within tolerance.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.within_tolerance)
    }
}

/// Runs `weft bench quant-linear`, prints its report, and fails when a type is out of tolerance.
pub(super) fn run(args: QuantLinearArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "quantized linear vs dequantized linear on {} ({}), [{}, {}] · [{}, {}]ᵀ",
            report.device, report.dtype, report.tokens, report.d_in, report.d_out, report.d_in
        );
        println!(
            "type     blocks MiB  dense MiB  max|diff|   max|ref|   dense ms  quant ms  ratio"
        );
        for r in &report.rows {
            println!(
                "{:<8} {:>10.1} {:>10.1} {:>10.3e} {:>10.3e} {:>10.3} {:>9.3} {:>6.2}{}",
                r.ty,
                r.block_bytes as f64 / MIB,
                r.dense_bytes as f64 / MIB,
                r.max_abs_diff,
                r.max_abs_ref,
                r.dense_ms,
                r.quantized_ms,
                r.quantized_ms / r.dense_ms,
                if r.within_tolerance {
                    ""
                } else {
                    "  OUT OF TOLERANCE"
                }
            );
        }
    }
    if !report.passed() {
        anyhow::bail!(
            "the quantized linear layer differs from the dequantized one beyond bf16 tolerance"
        );
    }
    Ok(())
}

/// Compares and times every selected type on `args.device`: the library function behind the
/// command, so that tests check what it reports.
pub fn measure(args: &QuantLinearArgs) -> anyhow::Result<QuantLinearReport> {
    if args.d_in == 0 || !args.d_in.is_multiple_of(256) {
        anyhow::bail!("--d-in {}: expected a positive multiple of 256", args.d_in);
    }
    if args.d_out == 0 || args.tokens == 0 || args.iters == 0 {
        anyhow::bail!("--d-out, --tokens and --iters must be positive");
    }
    args.d_out
        .checked_mul(args.d_in)
        .and_then(|n| n.checked_mul(4))
        .filter(|&bytes| bytes <= 1 << 34)
        .context("--d-out × --d-in: the matrix would take more than 16 GiB as f32")?;
    let types: Vec<_> = selected_types(&args.types)?
        .into_iter()
        .filter(|t| t.is_quantized())
        .collect();
    if types.is_empty() {
        anyhow::bail!("--types: no quantized type selected");
    }
    struct Measure<'a> {
        args: &'a QuantLinearArgs,
        types: Vec<weft_engine::formats::gguf::GgmlType>,
    }
    impl OnBackend for Measure<'_> {
        type Output = anyhow::Result<QuantLinearReport>;
        fn run<B: Backend>(
            self,
            device: B::Device,
            weights: Arc<dyn WeightDevice<B>>,
        ) -> Self::Output {
            measure_on::<B>(self.args, &self.types, &device, weights.as_ref())
        }
    }
    let work = Measure { args, types };
    match args
        .device
        .parse::<RunDevice>()
        .map_err(anyhow::Error::msg)?
    {
        RunDevice::Cpu => {
            type B = super::CliBackend;
            let weights = Arc::new(weft_engine::patcher::BurnDevice::<B>::host(
                Default::default(),
            ));
            work.run::<B>(Default::default(), weights)
        }
        RunDevice::Cuda(index) => on_cuda(index, work).context("--device")?,
    }
}

fn measure_on<B: Backend>(
    args: &QuantLinearArgs,
    types: &[weft_engine::formats::gguf::GgmlType],
    device: &B::Device,
    weights: &dyn WeightDevice<B>,
) -> anyhow::Result<QuantLinearReport> {
    let dtype = weights.weight_dtype();
    let (rows, cols) = (args.d_out, args.d_in);
    B::seed(device, args.seed);
    let x = Tensor::<B, 2>::random([args.tokens, cols], Distribution::Normal(0.0, 1.0), device);
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"));
    let mut out = Vec::with_capacity(types.len());
    for &ty in types {
        let bytes = random_blocks(ty, rows * cols, args.seed);
        let mut w = vec![0f32; rows * cols];
        dequant::dequantize(ty, &bytes, &mut w, "random blocks")?;
        // Random blocks span the f16 scales' whole range: scale the activations so that the
        // products stay finite (the same factor for both layers).
        let largest = w
            .iter()
            .fold(0f32, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
        let x = to_dtype(
            x.clone() * (1.0 / (largest.max(1e-30) * cols as f32).sqrt()),
            dtype,
        );
        let dense = to_dtype(
            Tensor::<B, 1>::from_data(TensorData::new(w, [rows * cols]), device)
                .reshape([rows, cols]),
            dtype,
        );
        let dense = Linear::new(dense, None);
        let blocks = weights.upload_blocks(&bytes, ty.name())?;
        let quantized = Linear::from_matrix(
            Matrix::Quantized(QuantMatrix::new(
                blocks,
                ty,
                [rows, cols],
                dtype,
                "bench",
                ty.name(),
            )?),
            None,
        );
        let reference = dense.forward(x.clone());
        let got = quantized.forward(x.clone());
        let max_abs_ref = reference.clone().abs().max().into_scalar().elem::<f32>();
        let max_abs_diff = (got - reference).abs().max().into_scalar().elem::<f32>();
        let time = |layer: &Linear<B>| -> anyhow::Result<f64> {
            let _ = layer.forward(x.clone());
            sync()?;
            let started = Instant::now();
            for _ in 0..args.iters {
                let _ = layer.forward(x.clone());
            }
            sync()?;
            Ok(started.elapsed().as_secs_f64() * 1e3 / args.iters as f64)
        };
        let dense_ms = time(&dense)?;
        let quantized_ms = time(&quantized)?;
        out.push(QuantLinearRow {
            ty: ty.name().to_owned(),
            block_bytes: bytes.len() as u64,
            dense_bytes: (rows * cols * dtype.size()) as u64,
            max_abs_diff,
            max_abs_ref,
            within_tolerance: max_abs_diff.is_finite()
                && max_abs_ref.is_finite()
                && within_bf16_tolerance(max_abs_diff, max_abs_ref),
            dense_ms,
            quantized_ms,
        });
    }
    Ok(QuantLinearReport {
        device: weights.describe(),
        dtype: format!("{dtype:?}"),
        tokens: args.tokens,
        d_in: args.d_in,
        d_out: args.d_out,
        rows: out,
    })
}

const MIB: f64 = (1u64 << 20) as f64;
