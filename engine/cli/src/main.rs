//! The `weft` binary: the command line with the built-in nodes.
fn main() -> std::process::ExitCode {
    weft::main_with(weft_nodes::Builtin)
}
