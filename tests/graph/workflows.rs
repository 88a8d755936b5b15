//! The workflows that ship in `workflows/`: every one validates against the `weft` binary's node
//! types, and the ones that need no model files run.
use weft_engine::exec::{CancelToken, Executor, NoEvents};
use weft_engine::graph::{Graph, Workflow};
use weft_engine::node::RunEnv;
use weft_engine::registry::NodeRegistry;
use weft_tests::{B, repo_root};

fn shipped() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ron"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_workflow_validates() {
    let registry = NodeRegistry::<B>::from_plugins(&weft_nodes::Builtin).unwrap();
    let files = shipped();
    assert!(!files.is_empty());
    let problems: Vec<String> = files
        .iter()
        .filter_map(|path| {
            Workflow::load(path)
                .map_err(|e| e.to_string())
                .and_then(|w| Graph::build(&w, &registry).map_err(|r| r.to_string()))
                .err()
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_swatch_workflow_runs_and_writes_its_images() {
    let registry = NodeRegistry::<B>::from_plugins(&weft_nodes::Builtin).unwrap();
    let path = repo_root().join("workflows/blend-swatches.ron");
    let graph = Graph::build(&Workflow::load(&path).unwrap(), &registry).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut executor = Executor::<B>::new(Default::default(), RunEnv::new(out.path()));
    executor
        .run(&graph, &NoEvents, &CancelToken::new())
        .unwrap();
    for name in ["swatches/blend_00001_.png", "swatches/inverted_00001_.png"] {
        let bytes = std::fs::read(out.path().join(name)).unwrap();
        let bitmap = weft_nodes::image_io::decode_png(&bytes).unwrap();
        assert_eq!((bitmap.width, bitmap.height), (64, 64), "{name}");
    }
}
