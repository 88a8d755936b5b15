//! The example crate's own tests: its schemas, its workflow run through the engine, and its binary.
use std::path::Path;
use std::process::Command;
use weft_engine::exec::{CancelToken, Executor, NoEvents, error_chain};
use weft_engine::graph::{Assignment, Graph, Workflow};
use weft_engine::node::RunEnv;
use weft_engine::registry::NodeRegistry;
use weft_example_custom_node::CustomNodes;

type B = burn::backend::Flex;

fn workflow_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/graded-swatch.ron")
}

fn registry() -> NodeRegistry<B> {
    NodeRegistry::from_plugins(&(weft_nodes::Builtin, CustomNodes))
        .expect("no conflicts with the built-in nodes")
}

#[test]
fn schemas_agree_with_their_params() {
    assert_eq!(registry().self_check(), Vec::<String>::new());
}

#[test]
fn the_workflow_runs_and_writes_a_prompt_and_a_graded_image() {
    let registry = registry();
    let graph = Graph::build(&Workflow::load(&workflow_path()).unwrap(), &registry)
        .unwrap_or_else(|r| panic!("{r}"));
    let out = tempfile::tempdir().unwrap();
    let mut executor = Executor::<B>::new(Default::default(), RunEnv::new(out.path()));
    executor
        .run(&graph, &NoEvents, &CancelToken::new())
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));

    let prompt = std::fs::read_to_string(out.path().join("graded/prompt_00001_.txt")).unwrap();
    assert_eq!(
        prompt, "a lighthouse at dusk, oil painting",
        "the empty {{detail}} part is tidied away"
    );

    let png = std::fs::read(out.path().join("graded/swatch_00001_.png")).unwrap();
    let bitmap = weft_nodes::image_io::decode_png(&png).unwrap();
    // The grade by hand, in f64: contrast 1.2 and brightness 0.1, then saturation 0.5 around Rec. 601 luma.
    let rgb = [0x40, 0x80, 0xC0].map(|c| (f64::from(c) / 255.0 - 0.5) * 1.2 + 0.5 + 0.1);
    let luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
    let expected = rgb.map(|c| ((luma + (c - luma) * 0.5) * 255.0) as i32);
    for (channel, want) in expected.iter().enumerate() {
        let got = i32::from(bitmap.pixels[channel]);
        assert!(
            (got - want).abs() <= 1,
            "channel {channel}: {got} vs {want}"
        );
    }
}

#[test]
fn a_bad_template_fails_naming_the_node() {
    let registry = registry();
    let mut workflow = Workflow::load(&workflow_path()).unwrap();
    workflow
        .apply(
            &registry,
            &Assignment::parse("prompt.template={subjct}").unwrap(),
        )
        .unwrap();
    let graph = Graph::build(&workflow, &registry).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut executor = Executor::<B>::new(Default::default(), RunEnv::new(out.path()));
    let err = executor
        .run(&graph, &NoEvents, &CancelToken::new())
        .unwrap_err();
    assert_eq!(
        error_chain(&err),
        "node \"prompt\" (PromptTemplate): unknown placeholder {subjct} at byte 0 (known: {subject}, {style}, {detail})"
    );
}

#[test]
fn the_five_line_binary_validates_and_runs_the_workflow() {
    let out = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_weft-custom");
    let validate = Command::new(binary)
        .arg("validate")
        .arg(workflow_path())
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let run = Command::new(binary)
        .arg("run")
        .arg(workflow_path())
        .arg("--output-dir")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("graded/swatch_00001_.png"), "{stdout}");
    let nodes = Command::new(binary)
        .args(["nodes", "ColorGrade"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nodes.stdout).contains("output COLOR_GRADE: COLOR_GRADE"));
}
