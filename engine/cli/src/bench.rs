//! `weft bench …`: measurements that go into docs/BENCHMARKS.md (benchmarks measure; tests assert).
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use weft_engine::formats::{ModelFile, tensor::to_f32};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Dequantize every tensor of FILE to f32 on the CPU and report throughput per tensor type.
    Dequant {
        file: PathBuf,
        /// Timed repetitions per tensor (the best one counts).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Load every weight of FILE through a model patcher and offload it, CYCLES times; report per
    /// cycle the load and offload times, device memory, RSS and the file's mappings.
    Offload(super::bench_offload::OffloadArgs),
    /// Write a synthetic GGUF of about SIZE_MB with city96's mix of tensor types (random values),
    /// for `bench offload`.
    Synth(super::bench_offload::SynthArgs),
    /// Time burn-cuda's matmul against weft's cuBLASLt path (TFLOP/s) and check that they agree.
    Gemm(weft_cuda::bench::GemmArgs),
    /// Time weft's flash-attention kernel against burn-cuda's attention (TFLOP/s) and check it
    /// against an f32 reference (non-zero exit beyond bf16/f16 tolerance).
    Attention(weft_cuda::bench_attention::AttentionArgs),
    /// Check the GPU dequantization kernels bit for bit against the CPU dequantizer, per type
    /// and output dtype, and time them (GB/s written and read).
    DequantGpu(weft_cuda::bench_dequant::DequantGpuArgs),
    /// Check the fused block kernels (GELU, LayerNorm + modulation, gated residual, QKV split
    /// with QK-norm and RoPE) against f32 references and time them against burn's kernels.
    Fused(weft_cuda::bench_fused::FusedArgs),
    /// Load a diffusion model on a device as its loader node would, run Euler steps on random
    /// inputs, and report load time, per-step time and peak memory.
    Model(super::bench_model::BenchModelArgs),
    /// Write a Flux-shaped GGUF with random weights (city96's type mix), tensor by tensor.
    SynthFlux(super::bench_model::SynthFluxArgs),
    /// Check the quantized-resident linear layer against the dequantized one for every quantized
    /// type (fails beyond bf16 tolerance) and time both.
    QuantLinear(super::bench_quant::QuantLinearArgs),
}

pub fn run(cmd: BenchCommand, models: &impl super::bench_model::ModelBench) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Dequant {
            file,
            repeat,
            threads,
            json,
        } => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads.unwrap_or(0))
                .build()?;
            let rows = pool.install(|| bench_dequant(&file, repeat.max(1)))?;
            let threads = pool.current_num_threads();
            if json {
                let by_type: serde_json::Map<_, _> = rows
                    .iter()
                    .map(|(ty, r)| {
                        (ty.clone(), json!({"elements": r.elements, "bytes": r.bytes, "seconds": r.seconds, "in_gb_s": r.in_gb_s(), "out_gelem_s": r.out_gelem_s()}))
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"file": file, "threads": threads, "types": by_type})
                    )?
                );
            } else {
                println!("{} ({threads} threads, best of {repeat})", file.display());
                println!(
                    "{:<8} {:>12} {:>10} {:>12} {:>14}",
                    "type", "elements", "ms", "in GB/s", "out Gelem/s"
                );
                for (ty, r) in &rows {
                    println!(
                        "{ty:<8} {:>12} {:>10.2} {:>12.2} {:>14.3}",
                        r.elements,
                        r.seconds * 1e3,
                        r.in_gb_s(),
                        r.out_gelem_s()
                    );
                }
            }
            Ok(())
        }
        BenchCommand::Offload(args) => super::bench_offload::run_offload(args),
        BenchCommand::Synth(args) => super::bench_offload::run_synth(args),
        BenchCommand::Gemm(args) => weft_cuda::bench::run_gemm(args),
        BenchCommand::Attention(args) => weft_cuda::bench_attention::run_attention(args),
        BenchCommand::DequantGpu(args) => weft_cuda::bench_dequant::run_dequant_gpu(args),
        BenchCommand::Fused(args) => weft_cuda::bench_fused::run_fused(args),
        BenchCommand::Model(args) => super::bench_model::run_model(args, models),
        BenchCommand::SynthFlux(args) => super::bench_model::run_synth(args, models),
        BenchCommand::QuantLinear(args) => super::bench_quant::run(args),
    }
}

#[derive(Default)]
struct Throughput {
    elements: u64,
    bytes: u64,
    seconds: f64,
}

impl Throughput {
    fn in_gb_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
    fn out_gelem_s(&self) -> f64 {
        self.elements as f64 / self.seconds / 1e9
    }
}

fn bench_dequant(file: &PathBuf, repeat: usize) -> anyhow::Result<BTreeMap<String, Throughput>> {
    let model = ModelFile::open(file)?;
    let mut rows: BTreeMap<String, Throughput> = BTreeMap::new();
    for t in model.tensors() {
        let bytes = model.tensor_bytes(t);
        let mut out = vec![0f32; t.n_elements() as usize];
        // Warm the page cache and the output buffer first.
        to_f32(t.dtype, bytes, &mut out, &t.name).with_context(|| format!("{}", file.display()))?;
        let mut best = f64::INFINITY;
        for _ in 0..repeat {
            let start = Instant::now();
            to_f32(t.dtype, bytes, &mut out, &t.name)?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        let row = rows.entry(t.dtype.name().to_string()).or_default();
        row.elements += t.n_elements();
        row.bytes += t.nbytes;
        row.seconds += best;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::BenchCommand;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BenchCommand,
    }

    #[test]
    fn dequant_gpu_arguments() {
        let cli = Cli::try_parse_from([
            "bench",
            "dequant-gpu",
            "--device",
            "cuda:1",
            "--elements",
            "4096",
            "--types",
            "q4_k,q8_0",
            "--json",
        ])
        .unwrap();
        let BenchCommand::DequantGpu(args) = cli.cmd else {
            panic!("parsed as another command")
        };
        assert_eq!(args.device, "cuda:1");
        assert_eq!(args.elements, 4096);
        assert_eq!(args.types, ["q4_k", "q8_0"]);
        assert!(args.json);
        let defaults = Cli::try_parse_from(["bench", "dequant-gpu"]).unwrap();
        let BenchCommand::DequantGpu(args) = defaults.cmd else {
            panic!("parsed as another command")
        };
        assert_eq!(args.device, "cuda:0");
        assert!(args.types.is_empty());
    }

    #[test]
    fn model_and_synth_flux_arguments() {
        let cli = Cli::try_parse_from([
            "bench", "model", "f.gguf", "--device", "cuda:0", "--res", "1024", "--steps", "4",
            "--json",
        ])
        .unwrap();
        let BenchCommand::Model(args) = cli.cmd else {
            panic!("parsed as another command")
        };
        assert_eq!(
            (args.device.as_str(), args.res, args.steps),
            ("cuda:0", 1024, 4)
        );
        assert!(args.json);
        let cli = Cli::try_parse_from([
            "bench",
            "synth-flux",
            "o.gguf",
            "--type",
            "q4_k",
            "--shape",
            "tiny",
            "--seed",
            "3",
        ])
        .unwrap();
        let BenchCommand::SynthFlux(args) = cli.cmd else {
            panic!("parsed as another command")
        };
        assert_eq!(
            (args.quant.as_str(), args.shape.as_str(), args.seed),
            ("q4_k", "tiny", 3)
        );
    }
}
