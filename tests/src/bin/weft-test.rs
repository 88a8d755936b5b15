//! The `weft` CLI with the built-in nodes and the test plugin: what the CLI tests drive.
fn main() -> std::process::ExitCode {
    weft::main_with((weft_nodes::Builtin, weft_tests::TestPlugin::default()))
}
