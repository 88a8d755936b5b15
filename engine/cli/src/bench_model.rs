//! `weft bench model FILE [--device cpu|cuda:N] [--res 1024] [--steps 4] [--json]` and
//! `weft bench synth-flux OUT --type q8_0|q4_k [--shape dev|tiny|small] [--seed N]`: a diffusion model's load time, per-step time and peak memory,
//! and the synthetic file to run it on.
//!
//! The model-specific half comes through [`ModelBench`] (`crate::bench_flux::FluxBench` in
//! `weft`, another one through `weft::main_with_models(plugins, bench)`). This half opens the file
//! through a [`ModelPatcher`] and loads it through a [`MemoryManager`] on the chosen device, as
//! `weft run --device` does for a loader node; the `ModelBench` builds the network from the loaded
//! patcher and runs Euler steps on random inputs; this half times, syncs and measures memory.
use super::run::RunDevice;
use crate::memory_args::MemoryArgs;
use anyhow::Context;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use weft_cuda::on_cuda::{OnBackend, on_cuda};
use weft_engine::memory::MemoryManager;
use weft_engine::patcher::{LoadOptions, ModelPatcher, WeightDevice};

/// An error from a [`ModelBench`] (the node crate's typed errors, boxed at this boundary).
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// What the random inputs of a bench run look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchInputs {
    /// Image side in pixels (the latent is `res / 8`).
    pub res: usize,
    /// Text tokens of the random conditioning.
    pub text_tokens: usize,
    /// Seed of every random tensor.
    pub seed: u64,
}

/// The model-specific half of `weft bench model` and `weft bench synth-flux`
/// ([`crate::bench_flux::FluxBench`] in `weft`).
pub trait ModelBench {
    /// How the architecture's loader node opens model files on a device whose weights are
    /// dequantized to `weight_dtype` (`WeightDevice::weight_dtype`).
    fn load_options(&self, weight_dtype: DType) -> LoadOptions;

    /// Builds the network from `patcher` (already loaded) and random inputs on `device`.
    fn prepare<B: Backend>(
        &self,
        patcher: &ModelPatcher<B>,
        device: &B::Device,
        inputs: &BenchInputs,
    ) -> Result<Box<dyn DenoiseBench<B>>, BenchError>;

    /// Writes a synthetic model file to `out`: `shape` and `quant` name the variant (the
    /// implementation lists what it accepts). `progress(done_bytes, total_bytes)` is called
    /// after every tensor. Returns one line describing what was written.
    fn synthesize(
        &self,
        out: &Path,
        shape: &str,
        quant: &str,
        seed: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<String, BenchError>;
}

/// A network with its random latent and conditioning, stepping the latent.
pub trait DenoiseBench<B: Backend> {
    /// One line about the network (architecture and widths).
    fn describe(&self) -> String;
    /// Image tokens per forward.
    fn image_tokens(&self) -> usize;
    /// Text tokens per forward.
    fn text_tokens(&self) -> usize;
    /// One Euler step from `sigma` to `sigma_next`; may return before the device is done (the
    /// caller syncs).
    fn step(&mut self, sigma: f32, sigma_next: f32) -> Result<(), BenchError>;
    /// Whether every value of the latent is finite.
    fn latent_is_finite(&self) -> Result<bool, BenchError>;
}

/// Arguments of `weft bench model`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchModelArgs {
    /// The diffusion model file (GGUF or safetensors).
    pub file: PathBuf,
    /// Where the model runs: `cpu` (burn-flex) or `cuda:N` (burn-cuda; needs the `cuda` feature).
    #[arg(long, value_name = "cpu|cuda:N", default_value = "cpu")]
    pub device: String,
    /// Image side in pixels (square; the latent is res/8).
    #[arg(long, default_value_t = 1024)]
    pub res: usize,
    /// Euler steps (sigmas linear from 1 to 0).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Text tokens of the random conditioning (Flux's T5 context: 512 for dev).
    #[arg(long, default_value_t = 512)]
    pub text_tokens: usize,
    /// Seed of the random latent and conditioning.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object on stdout instead of lines.
    #[arg(long)]
    pub json: bool,
    /// The memory flags of `weft run`: `--vram-budget` to plan as on a smaller card,
    /// `--residency` to force dequantized or quantized weights.
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// Arguments of `weft bench synth-flux`.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthFluxArgs {
    /// The GGUF file to write.
    pub out: PathBuf,
    /// Quantization of the block matrices (city96's mix around them).
    #[arg(long = "type", value_name = "q8_0|q4_k", default_value = "q8_0")]
    pub quant: String,
    /// `dev` (FLUX.1-dev's names and shapes, ~12 GB at Q8_0), `tiny` (the same structure,
    /// small widths, for tests) or `small` (214 MB at Q8_0, for memory tests on the CPU).
    #[arg(long, default_value = "dev")]
    pub shape: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What `weft bench model` measured. `None` is "not measured" (printed as `-`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelBenchReport {
    pub file: PathBuf,
    pub device: String,
    /// The network, as the [`ModelBench`] describes it.
    pub model: String,
    pub res: usize,
    pub image_tokens: usize,
    pub text_tokens: usize,
    /// Mapping the file and reading its header.
    pub open_s: f64,
    /// Uploading the weights through the memory manager (dequantized per the loader's options).
    pub upload_s: f64,
    /// Building the network from the device copies, and the random inputs.
    pub build_s: f64,
    /// open + upload + build.
    pub load_s: f64,
    /// The form the weights got (dequantized- or quantized-resident) and why.
    pub residency: String,
    /// `--vram-budget`, when given.
    pub vram_budget_bytes: Option<u64>,
    /// Weights left streaming because they did not fit the budget.
    pub streamed_weights: usize,
    /// Bytes of the model's device copies after the load.
    pub weight_device_bytes: u64,
    /// Every step's wall time in ms, device synced after each; the first includes JIT/autotune.
    pub step_ms: Vec<f64>,
    pub first_step_ms: Option<f64>,
    /// Mean of the steps after the first.
    pub rest_mean_ms: Option<f64>,
    /// CUDA: device memory in use (driver, total − free) before the file was opened.
    pub device_used_before_bytes: Option<u64>,
    /// CUDA: the largest device memory in use (driver, total − free), sampled after the load and
    /// after every step (a peak inside a step is not seen).
    pub peak_device_used_bytes: Option<u64>,
    /// CUDA: the largest pool burn's allocator held, sampled likewise.
    pub peak_pool_reserved_bytes: Option<u64>,
    /// The process's peak resident memory (VmHWM, Linux), mapped file pages included.
    pub peak_rss_bytes: Option<u64>,
    /// Anonymous resident memory (RssAnon, Linux) before the file was opened.
    pub host_anon_before_bytes: Option<u64>,
    /// The largest anonymous resident memory sampled (every millisecond) from the open to the
    /// last step: on the CPU, what the weights and activations cost beyond the mapped pages.
    pub peak_host_anon_bytes: Option<u64>,
    /// Every value of the final latent is finite.
    pub latent_finite: bool,
    /// The `WEFT_PROFILE=1` per-op table, when profiling.
    pub profile: Option<String>,
}

/// Runs `weft bench synth-flux`.
pub(super) fn run_synth(args: SynthFluxArgs, models: &impl ModelBench) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let line = models
        .synthesize(
            &args.out,
            &args.shape,
            &args.quant,
            args.seed,
            &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    println!("{line} in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `weft bench model` and prints its report.
pub(super) fn run_model(args: BenchModelArgs, models: &impl ModelBench) -> anyhow::Result<()> {
    let report = measure(&args, models)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Loads `args.file` on `args.device` and runs the steps: what `weft bench model` measures,
/// as a library function so that tests check exactly what the benchmark reports.
pub fn measure(
    args: &BenchModelArgs,
    models: &impl ModelBench,
) -> anyhow::Result<ModelBenchReport> {
    if args.steps == 0 {
        anyhow::bail!("--steps 0: expected at least 1");
    }
    if args.res < 16 {
        anyhow::bail!("--res {}: expected at least 16", args.res);
    }
    let device: RunDevice = args.device.parse().map_err(anyhow::Error::msg)?;
    match device {
        RunDevice::Cpu => {
            type B = super::CliBackend;
            let weights = Arc::new(weft_engine::patcher::BurnDevice::<B>::host_mapped(
                Default::default(),
            ));
            measure_on::<B>(args, models, Default::default(), weights, false)
        }
        RunDevice::Cuda(index) => measure_cuda(args, models, index),
    }
}

/// `weft bench model` on CUDA device `index`.
fn measure_cuda(
    args: &BenchModelArgs,
    models: &impl ModelBench,
    index: usize,
) -> anyhow::Result<ModelBenchReport> {
    struct Measure<'a, M> {
        args: &'a BenchModelArgs,
        models: &'a M,
    }
    impl<M: ModelBench> OnBackend for Measure<'_, M> {
        type Output = anyhow::Result<ModelBenchReport>;
        fn run<B: Backend>(
            self,
            device: B::Device,
            weights: Arc<dyn WeightDevice<B>>,
        ) -> Self::Output {
            measure_on::<B>(self.args, self.models, device, weights, true)
        }
    }
    on_cuda(index, Measure { args, models }).context("--device")?
}

/// Device memory samples: driver-level use and burn's pool.
#[derive(Default)]
struct DevicePeaks {
    used: Option<u64>,
    pool: Option<u64>,
}

impl DevicePeaks {
    fn sample<B: Backend>(&mut self, weights: &dyn WeightDevice<B>) {
        if let Some(c) = weights.capacity() {
            let used = c.total.saturating_sub(c.free);
            self.used = Some(self.used.map_or(used, |u| u.max(used)));
        }
        if let Some(u) = weights.usage() {
            self.pool = Some(
                self.pool
                    .map_or(u.bytes_reserved, |p| p.max(u.bytes_reserved)),
            );
        }
    }
}

fn measure_on<B: Backend>(
    args: &BenchModelArgs,
    models: &impl ModelBench,
    device: B::Device,
    weights: Arc<dyn WeightDevice<B>>,
    gpu: bool,
) -> anyhow::Result<ModelBenchReport> {
    let used_before = gpu
        .then(|| weights.capacity())
        .flatten()
        .map(|c| c.total.saturating_sub(c.free));
    let policy = args.memory.policy().map_err(anyhow::Error::msg)?;
    let anon = weft_engine::memory::proc::AnonPeak::start();
    let anon_before = anon.as_ref().map(|a| a.peak());
    let manager = MemoryManager::<B>::new(weights.clone(), policy);
    let load_started = Instant::now();
    let (patcher, residency) = manager
        .open_model(&args.file, models.load_options(weights.weight_dtype()))
        .with_context(|| format!("opening {}", args.file.display()))?;
    let open_s = load_started.elapsed().as_secs_f64();
    let upload_started = Instant::now();
    let load = manager
        .load_models(&[&patcher])
        .with_context(|| format!("loading {}", args.file.display()))?;
    B::sync(&device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
    let upload_s = upload_started.elapsed().as_secs_f64();
    let build_started = Instant::now();
    let inputs = BenchInputs {
        res: args.res,
        text_tokens: args.text_tokens,
        seed: args.seed,
    };
    let mut run = models
        .prepare(&patcher, &device, &inputs)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("building the model of {}", args.file.display()))?;
    B::sync(&device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
    let build_s = build_started.elapsed().as_secs_f64();
    let mut peaks = DevicePeaks::default();
    if gpu {
        peaks.sample(weights.as_ref());
    }

    let mut step_ms = Vec::with_capacity(args.steps);
    for i in 0..args.steps {
        let sigma = 1.0 - i as f32 / args.steps as f32;
        let sigma_next = 1.0 - (i + 1) as f32 / args.steps as f32;
        let started = Instant::now();
        run.step(sigma, sigma_next)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("step {}", i + 1))?;
        B::sync(&device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        step_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if gpu {
            peaks.sample(weights.as_ref());
        }
        if i == 0 {
            // The first step compiles kernels: the profile covers the others.
            weft_models::profile::take();
        }
    }
    let profile = weft_models::profile::enabled().then(|| {
        weft_models::profile::table(&weft_models::profile::take(), args.steps.saturating_sub(1))
    });
    let rest = &step_ms[1..];
    let latent_finite = run.latent_is_finite().map_err(|e| anyhow::anyhow!("{e}"))?;
    let first = load.first();
    Ok(ModelBenchReport {
        file: args.file.clone(),
        device: weights.describe(),
        model: run.describe(),
        res: args.res,
        image_tokens: run.image_tokens(),
        text_tokens: run.text_tokens(),
        open_s,
        upload_s,
        build_s,
        load_s: open_s + upload_s + build_s,
        residency: format!("{} ({})", residency.residency, residency.reason),
        vram_budget_bytes: policy.capacity,
        streamed_weights: first.map_or(0, |r| r.streamed),
        weight_device_bytes: first.map_or(0, |r| r.device_bytes),
        first_step_ms: step_ms.first().copied(),
        rest_mean_ms: (!rest.is_empty()).then(|| rest.iter().sum::<f64>() / rest.len() as f64),
        step_ms,
        device_used_before_bytes: used_before,
        peak_device_used_bytes: peaks.used,
        peak_pool_reserved_bytes: peaks.pool,
        peak_rss_bytes: weft_engine::memory::proc::peak_resident_memory(),
        host_anon_before_bytes: anon_before,
        peak_host_anon_bytes: anon.as_ref().map(|a| a.peak()),
        latent_finite,
        profile,
    })
}

fn print_report(r: &ModelBenchReport) {
    let gib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.2} GiB", b as f64 / GIB));
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    println!("{} on {}", r.file.display(), r.device);
    println!("model: {}", r.model);
    println!("weights: {}", r.residency);
    println!(
        "tokens: {} image ({}x{} px) + {} text",
        r.image_tokens, r.res, r.res, r.text_tokens
    );
    println!(
        "load: {:.2} s (open {:.2} s, upload {:.2} s, build {:.2} s); weights on device {}, streamed {}",
        r.load_s,
        r.open_s,
        r.upload_s,
        r.build_s,
        gib(Some(r.weight_device_bytes)),
        r.streamed_weights
    );
    let steps: Vec<String> = r.step_ms.iter().map(|v| format!("{v:.1}")).collect();
    println!("steps (ms): {}", steps.join(" "));
    println!(
        "first step: {} (includes JIT/autotune); mean of the rest: {}",
        ms(r.first_step_ms),
        ms(r.rest_mean_ms)
    );
    println!(
        "device memory used (driver, sampled after load and each step): peak {}, before load {}; burn pool peak {}",
        gib(r.peak_device_used_bytes),
        gib(r.device_used_before_bytes),
        gib(r.peak_pool_reserved_bytes)
    );
    println!(
        "peak RSS: {}; anonymous memory: peak {}, before load {}",
        gib(r.peak_rss_bytes),
        gib(r.peak_host_anon_bytes),
        gib(r.host_anon_before_bytes)
    );
    if let Some(profile) = &r.profile {
        print!("per-op profile over the steps after the first (waits around each op):\n{profile}");
    }
    println!(
        "final latent: {}",
        if r.latent_finite {
            "finite"
        } else {
            "NOT finite"
        }
    );
}

const GIB: f64 = (1u64 << 30) as f64;
