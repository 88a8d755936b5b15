//! The graph engine: workflow files, validation, the executor, the built-in nodes and the CLI.
mod builtin_nodes;
mod cases;
mod cli;
mod exec;
mod format;
mod hostile;
mod workflows;
