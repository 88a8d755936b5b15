//! The `weft` binary: the engine's CLI with the built-in nodes and the Flux benchmarks.
fn main() -> std::process::ExitCode {
    weft_engine::cli::main_with_models(weft_nodes::Builtin, weft_nodes::bench::FluxBench)
}
