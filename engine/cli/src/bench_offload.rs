//! `weft bench offload FILE --cycles N [--device cpu|cuda:0] [--verify] [--json]` and
//! `weft bench synth OUT --size-mb N`: load/offload cycles through a model patcher, and the
//! synthetic model file to run them on.
use crate::offload_cycle::{OffloadBench, offload_cycles};
use anyhow::{Context, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use std::path::PathBuf;
use std::sync::Arc;
use weft_cuda::on_cuda::{OnBackend, on_cuda};
use weft_engine::patcher::{BurnDevice, LoadOptions, WeightDevice, WeightFormat};
use weft_engine::weights::{MmapCache, synthetic};

/// Arguments of `weft bench offload`.
#[derive(clap::Args, Debug)]
pub struct OffloadArgs {
    /// The model file (GGUF or safetensors).
    file: PathBuf,
    /// Load/offload cycles.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Where weights go: `cpu`, or `cuda:N` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// After each load, read every device copy back and compare it with the file.
    #[arg(long)]
    verify: bool,
    /// Dequantize every weight to this dtype (f32, f16, bf16) instead of uploading the stored
    /// bytes; also the dtype of patched weights (default f32).
    #[arg(long, value_name = "DTYPE")]
    dequantize: Option<String>,
    /// Patch the model with this LoRA (baked into the device copy at every load).
    #[arg(long, value_name = "FILE")]
    lora: Option<PathBuf>,
    /// The LoRA's strength.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    strength: f32,
    /// One JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `weft bench synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// The GGUF file to write.
    out: PathBuf,
    /// Its approximate size in MB (10^6 bytes); at least one ~13 MB block is written.
    #[arg(long, default_value_t = 200)]
    size_mb: u64,
    /// Seed of the random values.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write a kohya-style LoRA for the model here (F16 factors for every matrix).
    #[arg(long, value_name = "FILE")]
    lora: Option<PathBuf>,
    /// The LoRA's rank.
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
}

pub fn run_synth(args: SynthArgs) -> anyhow::Result<()> {
    let made =
        synthetic::write_mixed_gguf(&args.out, args.size_mb.saturating_mul(1_000_000), args.seed)?;
    println!(
        "wrote {}: {} bytes, {} tensors in {} blocks",
        args.out.display(),
        made.file_bytes,
        made.tensors,
        made.blocks
    );
    if let Some(lora) = &args.lora {
        if args.lora_rank == 0 {
            bail!("--lora-rank 0: expected at least 1");
        }
        let modules =
            synthetic::write_lora(lora, made.blocks, args.lora_rank, args.seed.wrapping_add(1))?;
        println!(
            "wrote {}: {modules} rank-{} modules",
            lora.display(),
            args.lora_rank
        );
    }
    Ok(())
}

pub fn run_offload(args: OffloadArgs) -> anyhow::Result<()> {
    let options = match args.dequantize.as_deref() {
        None => LoadOptions::default(),
        Some(name) => {
            let compute_dtype = match name.to_ascii_lowercase().as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                other => bail!("--dequantize {other}: expected f32, f16 or bf16"),
            };
            LoadOptions {
                format: WeightFormat::Dequantized,
                compute_dtype,
            }
        }
    };
    if args.cycles == 0 {
        bail!("--cycles 0: expected at least 1");
    }
    let bench = match args.device.as_str() {
        "cpu" => {
            let device: Arc<dyn WeightDevice<burn::backend::Flex>> =
                Arc::new(BurnDevice::host(Default::default()));
            cycles(&args, device, options)?
        }
        cuda if cuda.starts_with("cuda") => {
            let index: usize = match cuda.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .with_context(|| format!("--device {cuda}: expected cuda:N"))?,
                None if cuda == "cuda" => 0,
                None => bail!("--device {cuda}: expected cpu or cuda:N"),
            };
            cuda_cycles(&args, index, options)?
        }
        other => bail!("--device {other}: expected cpu or cuda:N"),
    };
    print(&args, &bench)
}

fn cycles<B: Backend>(
    args: &OffloadArgs,
    device: Arc<dyn WeightDevice<B>>,
    options: LoadOptions,
) -> anyhow::Result<OffloadBench> {
    let lora = args.lora.as_deref().map(|path| (path, args.strength));
    Ok(offload_cycles(
        &args.file,
        args.cycles,
        args.verify,
        lora,
        device,
        options,
        MmapCache::global(),
    )?)
}

/// The cycles on CUDA device `index`.
fn cuda_cycles(
    args: &OffloadArgs,
    index: usize,
    options: LoadOptions,
) -> anyhow::Result<OffloadBench> {
    struct Cycles<'a> {
        args: &'a OffloadArgs,
        options: LoadOptions,
    }
    impl OnBackend for Cycles<'_> {
        type Output = anyhow::Result<OffloadBench>;
        fn run<B: Backend>(self, _: B::Device, weights: Arc<dyn WeightDevice<B>>) -> Self::Output {
            cycles(self.args, weights, self.options)
        }
    }
    on_cuda(index, Cycles { args, options }).with_context(|| format!("--device {}", args.device))?
}

fn print(args: &OffloadArgs, bench: &OffloadBench) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(bench)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{} ({:.1} MiB) on {}, {} cycles",
        args.file.display(),
        mib(bench.file_bytes),
        args.device,
        bench.cycles.len()
    );
    println!(
        "{:>5} {:>9} {:>8} {:>11} {:>12} {:>12} {:>13} {:>13} {:>8} {:>6}",
        "cycle",
        "load s",
        "GB/s",
        "offload ms",
        "loaded MiB",
        "after MiB",
        "RssAnon MiB",
        "RssFile MiB",
        "mappings",
        "match"
    );
    for c in &bench.cycles {
        let matched = match c.weights_match_file {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:>5} {:>9.3} {:>8.2} {:>11.2} {:>12.1} {:>12.1} {:>13.1} {:>13.1} {:>8} {:>6}",
            c.cycle,
            c.load_s,
            c.device_bytes_loaded as f64 / c.load_s / 1e9,
            c.offload_s * 1e3,
            mib(c.device_bytes_loaded),
            mib(c.device_bytes_after_offload),
            mib(c.rss_anon_after_offload),
            mib(c.rss_file_after_offload),
            c.file_mappings,
            matched
        );
    }
    if let (Some(second), Some(last)) = (bench.cycles.get(1), bench.cycles.last()) {
        let growth = last.rss_anon_after_offload as i64 - second.rss_anon_after_offload as i64;
        println!(
            "RssAnon growth over cycles 2..{}: {:+.2} MiB ({:+.3}% of the file)",
            last.cycle,
            growth as f64 / (1 << 20) as f64,
            growth as f64 * 100.0 / bench.file_bytes.max(1) as f64
        );
    }
    Ok(())
}
