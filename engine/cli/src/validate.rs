//! `weft validate FILE...`: checks workflows against the registered node types and prints every
//! problem of every file, each with file:line:col and the node id.
use super::CliBackend;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_engine::graph::{Graph, Workflow, WorkflowError};
use weft_engine::registry::{NodeRegistry, Plugins};

/// Arguments of `weft validate`.
#[derive(clap::Args, Debug)]
pub(super) struct ValidateArgs {
    /// Workflow files (RON).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

pub(super) fn run(args: ValidateArgs, plugins: &impl Plugins) -> anyhow::Result<ExitCode> {
    let registry =
        NodeRegistry::<CliBackend>::from_plugins(plugins).context("registering node plugins")?;
    let (mut bad_files, mut problems) = (0usize, 0usize);
    for file in &args.files {
        let report = match Workflow::load(file) {
            Ok(workflow) => match Graph::build(&workflow, &registry) {
                Ok(graph) => {
                    let total = graph.nodes().count();
                    println!(
                        "{}: ok ({total} nodes, {} to run)",
                        file.display(),
                        graph.plan().len()
                    );
                    continue;
                }
                Err(report) => report,
            },
            Err(WorkflowError::Invalid(report)) => report,
            Err(e @ WorkflowError::Io { .. }) => {
                eprintln!("{}", weft_engine::exec::error_chain(&e));
                bad_files += 1;
                problems += 1;
                continue;
            }
        };
        eprintln!("{report}");
        bad_files += 1;
        problems += report.diagnostics.len();
    }
    if bad_files == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let s = |n: usize| if n == 1 { "" } else { "s" };
    eprintln!(
        "{problems} problem{} in {bad_files} of {} file{}",
        s(problems),
        args.files.len(),
        s(args.files.len())
    );
    Ok(ExitCode::FAILURE)
}
