//! The `weft` binary: the engine's CLI with the built-in nodes.
fn main() -> std::process::ExitCode {
    weft_engine::cli::main_with(weft_nodes::Builtin)
}
