//! The workflow file format: RON with comments, optional struct names, implicit `Some`, file order
//! and duplicate keys kept for validation, and a lossless round trip through `to_ron`.
use weft_engine::graph::{FORMAT_VERSION, Workflow};
use weft_engine::node::ParamValue;
use weft_tests::repo_root;

#[test]
fn parses_comments_implicit_some_hex_and_trailing_commas_without_a_struct_name() {
    let source = r#"
        /* block comment */
        (
            version: 1, // line comment
            description: "no Some(...) needed",
            nodes: {
                "img": (type: "EmptyImage", params: { "color": 0xFF8000, "width": 8, },),
            },
        )
    "#;
    let workflow = Workflow::parse(source, None).unwrap();
    assert_eq!(workflow.file.version, FORMAT_VERSION);
    assert_eq!(
        workflow.file.description.as_deref(),
        Some("no Some(...) needed")
    );
    let node = workflow.file.nodes.get("img").unwrap();
    assert_eq!(node.params.get("color"), Some(&ParamValue::Int(0xFF8000)));
}

#[test]
fn keeps_node_order_and_duplicate_keys() {
    let source =
        r#"Workflow(version: 1, nodes: { "z": (type: "A"), "a": (type: "B"), "z": (type: "C") })"#;
    let workflow = Workflow::parse(source, None).unwrap();
    let ids: Vec<&str> = workflow
        .file
        .nodes
        .0
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(ids, ["z", "a", "z"]);
}

#[test]
fn a_wrong_struct_name_is_a_syntax_error_with_a_position() {
    let err = Workflow::parse("Flow(version: 1, nodes: {})", None).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("1:1: syntax error:") || message.starts_with("1:5: syntax error:"),
        "{message}"
    );
    assert!(message.contains("Workflow"), "{message}");
}

#[test]
fn round_trips_through_to_ron() {
    for entry in std::fs::read_dir(repo_root().join("workflows")).unwrap() {
        let path = entry.unwrap().path();
        let original = Workflow::load(&path).unwrap();
        let text = original.to_ron();
        let reparsed = Workflow::parse(&text, None)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
        assert_eq!(reparsed.file, original.file, "{}", path.display());
    }
}

#[test]
fn a_missing_file_names_the_path() {
    let err = Workflow::load(std::path::Path::new("/nonexistent/flow.ron"))
        .err()
        .unwrap();
    assert_eq!(
        weft_engine::exec::error_chain(&err).split(": ").next(),
        Some("/nonexistent/flow.ron")
    );
}
