//! weft, the command line: argument parsing (clap), logging setup, friendly error reports, and
//! every subcommand (`run`, `validate`, `nodes`, `gguf`, `bench`).
//!
//! Libraries return typed errors; this is the one place that turns them into messages for people.
//! A node crate's binary is five lines: `fn main() -> ExitCode { weft::main_with((weft_nodes::Builtin,
//! my_nodes::MyPlugin)) }`.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
pub mod bench_flux;
pub mod bench_model;
mod bench_offload;
pub mod bench_quant;
pub mod gguf;
pub mod memory_args;
mod nodes;
pub mod offload_cycle;
mod progress;
mod run;
mod validate;

/// The backend the CLI runs workflows on.
type CliBackend = burn::backend::Flex;

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "A node-graph workflow engine for GGUF diffusion models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect GGUF and safetensors model files.
    #[command(subcommand)]
    Gguf(gguf::GgufCommand),
    /// Measure: dequantization, offload, GEMM, attention, a diffusion model's steps.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a workflow.
    Run(run::RunArgs),
    /// Check workflows without running them: every problem, with file:line:col and node id.
    Validate(validate::ValidateArgs),
    /// List the node types (with their ports and parameters) and the port types.
    Nodes(nodes::NodesArgs),
}

/// Runs the `weft` command line with the node types of `plugins` and returns the process exit code:
/// `fn main() -> ExitCode { weft::main_with((weft_nodes::Builtin, my_nodes::MyPlugin)) }`.
/// `weft bench model` and `weft bench synth-flux` measure Flux ([`bench_flux::FluxBench`]).
pub fn main_with(plugins: impl weft_engine::registry::Plugins) -> ExitCode {
    main_with_models(plugins, bench_flux::FluxBench)
}

/// [`main_with`] with another architecture behind `weft bench model` and `weft bench synth-flux`:
/// `models` supplies the model-specific half of both.
pub fn main_with_models(
    plugins: impl weft_engine::registry::Plugins,
    models: impl bench_model::ModelBench,
) -> ExitCode {
    init_tracing();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Gguf(cmd) => gguf::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Bench(cmd) => bench::run(cmd, &models).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::run(args, &plugins),
        Command::Validate(args) => validate::run(args, &plugins),
        Command::Nodes(args) => nodes::run(args, &plugins),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line: the error and its causes, joined by ": ".
fn report(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::log_writer)
        .try_init();
}
