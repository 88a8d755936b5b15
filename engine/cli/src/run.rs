//! `weft run FILE [--set node.param=value]... [--sweep node.param=v1,v2,...] [--output-dir DIR]
//! [--device cpu|cuda:N]`: validates every variant first, then runs them in one process so that
//! cached upstream work is reused, printing which nodes ran and which were cached. Ctrl-C stops at
//! the next node or step. `--device` picks the backend: burn-flex on the CPU (default), or
//! burn-cuda (feature `cuda`) with weights uploaded through the registered-mapping path.
use super::CliBackend;
use super::progress::Renderer;
use anyhow::Context;
use burn::tensor::backend::Backend;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use weft_cuda::on_cuda::{OnBackend, on_cuda};
use weft_engine::exec::{CancelToken, ExecError, Executor, RunReport};
use weft_engine::graph::{Assignment, Graph, Sweep, Workflow, WorkflowError};
use weft_engine::node::{RunEnv, RunMetadata};
use weft_engine::patcher::WeightDevice;
use weft_engine::registry::{NodeRegistry, Plugins};

/// Arguments of `weft run`.
#[derive(clap::Args, Debug)]
pub(super) struct RunArgs {
    /// The workflow file (RON).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Sets a parameter for this run (repeatable).
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    set: Vec<String>,
    /// Runs once per value, reusing cached work between runs (repeatable: every combination runs).
    #[arg(long = "sweep", value_name = "NODE.PARAM=V1,V2,...")]
    sweep: Vec<String>,
    /// Where output nodes write their files.
    #[arg(long, value_name = "DIR", default_value = "output")]
    output_dir: PathBuf,
    /// A model folder in ComfyUI's layout (repeatable; searched in order, then the folders in
    /// WEFT_MODELS_DIR, separated like PATH).
    #[arg(long = "models-dir", value_name = "DIR")]
    models_dir: Vec<PathBuf>,
    /// Where the workflow runs: `cpu` (burn-flex) or `cuda:N` (burn-cuda; needs the `cuda` feature).
    #[arg(long, value_name = "cpu|cuda:N", default_value = "cpu")]
    device: RunDevice,
    #[command(flatten)]
    memory: crate::memory_args::MemoryArgs,
}

/// The exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_CANCELLED: u8 = 130;

/// The value of `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RunDevice {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for RunDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(RunDevice::Cpu),
            "cuda" => Ok(RunDevice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(RunDevice::Cuda)
                .ok_or_else(|| format!("\"{s}\" is not a device: expected cpu or cuda:N")),
        }
    }
}

pub(super) fn run(args: RunArgs, plugins: &impl Plugins) -> anyhow::Result<ExitCode> {
    match args.device {
        RunDevice::Cpu => {
            let device = Arc::new(weft_engine::patcher::BurnDevice::<CliBackend>::host_mapped(
                Default::default(),
            ));
            run_on::<CliBackend>(args, plugins, Default::default(), device)
        }
        RunDevice::Cuda(index) => run_cuda(args, plugins, index),
    }
}

/// `weft run` on CUDA device `index`.
fn run_cuda(args: RunArgs, plugins: &impl Plugins, index: usize) -> anyhow::Result<ExitCode> {
    struct Run<'a, P> {
        args: RunArgs,
        plugins: &'a P,
    }
    impl<P: Plugins> OnBackend for Run<'_, P> {
        type Output = anyhow::Result<ExitCode>;
        fn run<B: Backend>(
            self,
            device: B::Device,
            weights: Arc<dyn WeightDevice<B>>,
        ) -> Self::Output {
            run_on::<B>(self.args, self.plugins, device, weights)
        }
    }
    on_cuda(index, Run { args, plugins }).context("--device")?
}

/// Validates and runs the workflow on backend `B`, weights going to `weights`.
fn run_on<B: Backend>(
    args: RunArgs,
    plugins: &impl Plugins,
    device: B::Device,
    weights: Arc<dyn WeightDevice<B>>,
) -> anyhow::Result<ExitCode> {
    let registry = NodeRegistry::<B>::from_plugins(plugins).context("registering node plugins")?;
    let mut workflow = match Workflow::load(&args.file) {
        Ok(workflow) => workflow,
        Err(WorkflowError::Invalid(report)) => {
            eprintln!("{report}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    for arg in &args.set {
        Assignment::parse(arg)
            .and_then(|a| workflow.apply(&registry, &a))
            .context("--set")?;
    }
    let sweeps = args
        .sweep
        .iter()
        .map(|a| Sweep::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .context("--sweep")?;

    // Validate every variant before running any, so a bad sweep value fails in seconds, not after an hour.
    let mut variants = Vec::new();
    for combination in Sweep::combinations(&sweeps) {
        let mut variant = workflow.clone();
        for assignment in &combination {
            variant.apply(&registry, assignment).context("--sweep")?;
        }
        match Graph::build(&variant, &registry) {
            Ok(graph) => variants.push((combination, graph)),
            Err(report) => {
                eprintln!("{report}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }

    let base_dir = args.file.parent().map(PathBuf::from).unwrap_or_default();
    let mut models_dirs = args.models_dir;
    if let Some(list) = std::env::var_os(MODELS_DIR_VAR) {
        models_dirs.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    let workflow_text = std::fs::read_to_string(&args.file).unwrap_or_default();
    let mut env = RunEnv {
        output_dir: args.output_dir,
        base_dir,
        models_dirs,
        ..RunEnv::default()
    };
    let policy = args.memory.policy().map_err(anyhow::Error::msg)?;
    env.services
        .insert(Arc::new(weft_engine::memory::MemoryManager::<B>::new(
            weights, policy,
        )));
    let mut executor = Executor::<B>::new(device, env);
    let cancel = CancelToken::new();
    install_ctrl_c(cancel.clone());
    let renderer = Renderer::new();
    let count = variants.len();
    for (i, (combination, graph)) in variants.iter().enumerate() {
        let overrides: Vec<String> = combination.iter().map(Assignment::to_arg).collect();
        if count > 1 {
            println!("run {}/{count}: {}", i + 1, overrides.join(" "));
        }
        executor.env_mut().services.insert(Arc::new(run_metadata(
            &args.file,
            &workflow_text,
            &args.set,
            &overrides,
        )));
        match executor.run(graph, &renderer, &cancel) {
            Ok(report) => {
                println!("{}", summary(&report));
                for file in renderer.take_files() {
                    println!("wrote {}", file.display());
                }
            }
            Err(ExecError::Cancelled { node_id }) => {
                let at = node_id
                    .map(|n| format!(" at node \"{n}\""))
                    .unwrap_or_default();
                eprintln!(
                    "cancelled{at}; files already written are complete, nothing was left half-written"
                );
                return Ok(ExitCode::from(EXIT_CANCELLED));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `WEFT_MODELS_DIR` names extra model folders.
const MODELS_DIR_VAR: &str = "WEFT_MODELS_DIR";

/// The text outputs embed: the workflow file, and the command that reproduces this run.
fn run_metadata(
    file: &std::path::Path,
    workflow: &str,
    set: &[String],
    sweep_values: &[String],
) -> RunMetadata {
    let mut command = format!("weft run {}", file.display());
    for assignment in set.iter().chain(sweep_values) {
        command.push_str(&format!(" --set {assignment}"));
    }
    RunMetadata(vec![
        ("workflow".to_string(), workflow.to_string()),
        ("parameters".to_string(), command),
        (
            "software".to_string(),
            format!("weft {}", env!("CARGO_PKG_VERSION")),
        ),
    ])
}

/// `ran 2 (sampler, save), cached 3 (loader, clip, prompt), skipped 1 (unused) in 1.20s`.
fn summary(report: &RunReport) -> String {
    let list = |ids: &[&str]| {
        if ids.is_empty() {
            String::new()
        } else {
            format!(" ({})", ids.join(", "))
        }
    };
    let cached: Vec<&str> = report.cached.iter().map(String::as_str).collect();
    let skipped: Vec<&str> = report.skipped.iter().map(String::as_str).collect();
    let mut text = format!(
        "ran {}{}, cached {}{}",
        report.executed.len(),
        list(&report.executed_ids()),
        cached.len(),
        list(&cached)
    );
    if !skipped.is_empty() {
        text.push_str(&format!(", skipped {}{}", skipped.len(), list(&skipped)));
    }
    text.push_str(&format!(" in {:.2}s", report.duration.as_secs_f64()));
    text
}

/// First Ctrl-C: ask the run to stop at the next node or step. Second: exit at once.
fn install_ctrl_c(cancel: CancelToken) {
    let result = ctrlc::set_handler(move || {
        if cancel.is_cancelled() {
            std::process::exit(i32::from(EXIT_CANCELLED));
        }
        eprintln!("\nstopping at the next step (Ctrl-C again to quit at once)");
        cancel.cancel();
    });
    if let Err(e) = result {
        tracing::warn!("Ctrl-C will not stop the run cleanly: {e}");
    }
}
