//! No input makes validation panic: every case file, cut short at every character and with
//! stray characters spliced in, either validates or yields diagnostics.
use weft_engine::graph::Workflow;
use weft_tests::{TestPlugin, build, registry, repo_root};

fn corpus() -> Vec<String> {
    let mut sources = Vec::new();
    for kind in ["valid", "invalid"] {
        for entry in std::fs::read_dir(repo_root().join("tests/cases").join(kind)).unwrap() {
            sources.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    sources
}

#[test]
fn truncated_and_spliced_workflows_never_panic() {
    let registry = registry(&TestPlugin::default());
    let mut checked = 0usize;
    for source in corpus() {
        let boundaries: Vec<usize> = source.char_indices().map(|(i, _)| i).collect();
        for (n, &at) in boundaries.iter().enumerate() {
            // Every prefix of the file, and a stray token at every third position.
            let _ = build(&source[..at], &registry);
            if n % 3 == 0 {
                let token = ["{", ")", "\"", ":", ",", "r#\"", "/*", "'", "-", "9e999"][n % 10];
                let spliced = format!("{}{token}{}", &source[..at], &source[at..]);
                if let Ok(workflow) = Workflow::parse(&spliced, None) {
                    let _ = weft_engine::graph::Graph::build(&workflow, &registry);
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 5_000, "checked {checked}");
}

#[test]
fn deep_nesting_and_huge_numbers_are_errors() {
    let registry = registry(&TestPlugin::default());
    let deep = format!(
        "Workflow(version: 1, nodes: {{ \"a\": (type: \"TestConst\", params: {{ \"value\": {}1{} }}) }})",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(build(&deep, &registry).is_err());
    let huge = r#"Workflow(version: 1, nodes: { "a": (type: "TestConst", params: { "value": 99999999999999999999999 }) })"#;
    assert!(build(huge, &registry).is_err());
    let too_big_for_i64 = r#"Workflow(version: 1, nodes: { "a": (type: "TestConst", params: { "value": 18446744073709551615 }) })"#;
    assert!(build(too_big_for_i64, &registry).is_err());
    let version = r#"Workflow(version: 4294967296, nodes: {})"#;
    assert!(build(version, &registry).is_err());
}
