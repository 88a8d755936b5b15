//! `weft-custom`: the `weft` command line with the built-in nodes and this crate's nodes.
fn main() -> std::process::ExitCode {
    weft::main_with((weft_nodes::Builtin, weft_example_custom_node::CustomNodes))
}
