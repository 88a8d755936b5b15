//! The crate layout of ARCHITECTURE.md ("Crates"), checked against `cargo metadata`: a crate that
//! gains a dependency the layout forbids, directly or through another workspace crate, fails here.
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Every crate of the layout; the test fails if one is missing (renamed crates must be named here).
const CRATES: [&str; 7] = [
    "weft-formats",
    "weft-engine",
    "weft-cuda",
    "weft-models",
    "weft-sampling",
    "weft-nodes",
    "weft",
];

/// `(crate, dependency it must never have, why)`. Workspace crates are forbidden through any
/// path of normal or build dependencies; outside crates as a direct dependency of the crate or
/// of a workspace crate it reaches.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "weft-formats",
        "burn",
        "the model-file layer knows no tensors",
    ),
    (
        "weft-formats",
        "weft-engine",
        "the model-file layer is the bottom",
    ),
    ("weft-engine", "cudarc", "the engine has no CUDA code"),
    ("weft-engine", "burn-cubecl", "the engine has no CUDA code"),
    ("weft-engine", "cubecl", "the engine has no CUDA code"),
    ("weft-engine", "clap", "the engine has no command line"),
    (
        "weft-engine",
        "weft-cuda",
        "weft-cuda implements the engine's traits, not the reverse",
    ),
    (
        "weft-engine",
        "weft-models",
        "the engine knows no architecture",
    ),
    (
        "weft-engine",
        "weft-sampling",
        "the engine knows no sampler",
    ),
    ("weft-engine", "weft-nodes", "the engine knows no node type"),
    ("weft-engine", "weft", "the engine has no command line"),
    ("weft-cuda", "weft-models", "kernels know no architecture"),
    ("weft-cuda", "weft-sampling", "kernels know no sampler"),
    ("weft-cuda", "weft-nodes", "kernels know no node type"),
    ("weft-cuda", "weft", "kernels have no command line"),
    ("weft-models", "weft-nodes", "models know no node type"),
    ("weft-models", "weft-sampling", "models know no sampler"),
    ("weft-models", "weft", "models have no command line"),
    (
        "weft-sampling",
        "weft-models",
        "sampling knows no architecture",
    ),
    (
        "weft-sampling",
        "weft-engine",
        "sampling is math on tensors",
    ),
    ("weft-sampling", "weft-nodes", "sampling knows no node type"),
    ("weft-sampling", "weft-cuda", "sampling runs on any backend"),
    ("weft-nodes", "weft", "node types have no command line"),
];

/// A crate's declared dependencies: name → the features it turns on (dev-dependencies left out).
type Deps = BTreeMap<String, BTreeSet<String>>;

/// The workspace's packages and their dependencies, from `cargo metadata --no-deps` output.
fn packages(metadata: &Value) -> BTreeMap<String, Deps> {
    let mut out = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("package name").to_owned();
        let mut deps = Deps::new();
        for dep in package["dependencies"].as_array().expect("dependencies") {
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            let features = dep["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned));
            deps.entry(dep["name"].as_str().expect("dependency name").to_owned())
                .or_default()
                .extend(features);
        }
        out.insert(name, deps);
    }
    out
}

/// Every rule broken, as `crate -> dependency (via path): why`.
fn violations(packages: &BTreeMap<String, Deps>) -> Vec<String> {
    let mut problems = Vec::new();
    for name in CRATES {
        if !packages.contains_key(name) {
            problems.push(format!("{name}: not in the workspace"));
        }
    }
    for &(krate, forbidden, why) in FORBIDDEN {
        // Breadth-first over workspace crates, remembering how each was reached.
        let mut paths: BTreeMap<&str, Vec<&str>> = BTreeMap::from([(krate, vec![krate])]);
        let mut queue = std::collections::VecDeque::from([krate]);
        'search: while let Some(current) = queue.pop_front() {
            let Some(deps) = packages.get(current) else {
                continue;
            };
            let path = paths[current].clone();
            for dep in deps.keys() {
                if dep == forbidden {
                    // The shortest path is enough to say what to fix.
                    problems.push(format!("{} -> {forbidden}: {why}", path.join(" -> ")));
                    break 'search;
                }
                if packages.contains_key(dep.as_str()) && !paths.contains_key(dep.as_str()) {
                    let mut next = path.clone();
                    next.push(dep);
                    paths.insert(dep, next);
                    queue.push_back(dep);
                }
            }
        }
    }
    // burn's `cuda` feature would bring cudarc in through burn itself.
    for krate in ["weft-formats", "weft-engine", "weft-sampling", "weft-nodes"] {
        if let Some(features) = packages.get(krate).and_then(|d| d.get("burn"))
            && features.iter().any(|f| f.contains("cuda"))
        {
            problems.push(format!(
                "{krate} turns on burn's cuda feature: only weft-cuda may"
            ));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn workspace_metadata() -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON")
}

#[test]
fn no_crate_has_a_dependency_the_layout_forbids() {
    let packages = packages(&workspace_metadata());
    let problems = violations(&packages);
    assert!(
        problems.is_empty(),
        "the crate layout (ARCHITECTURE.md, \"Crates\") is broken:\n  {}",
        problems.join("\n  ")
    );
    // The layout as it stands, so that a rule cannot pass because its crate lost the edge it names.
    assert!(packages["weft-cuda"].contains_key("weft-engine"));
    assert!(packages["weft-models"].contains_key("weft-cuda"));
    assert!(packages["weft-nodes"].contains_key("weft-models"));
    assert!(packages["weft-nodes"].contains_key("weft-sampling"));
    assert!(packages["weft"].contains_key("weft-nodes"));
}

/// A made-up workspace in `cargo metadata`'s shape: `(package, [(dependency, kind, features)])`.
fn fake(packages: &[(&str, &[(&str, Option<&str>, &[&str])])]) -> Value {
    let packages: Vec<Value> = packages
        .iter()
        .map(|(name, deps)| {
            let deps: Vec<Value> = deps
                .iter()
                .map(|(dep, kind, features)| {
                    serde_json::json!({"name": dep, "kind": kind, "features": features})
                })
                .collect();
            serde_json::json!({"name": name, "dependencies": deps})
        })
        .collect();
    serde_json::json!({ "packages": packages })
}

#[test]
fn the_check_names_direct_transitive_and_feature_violations_and_ignores_dev_dependencies() {
    let metadata = fake(&[
        ("weft-formats", &[("cudarc", None, &[])]),
        (
            "weft-engine",
            &[("weft-formats", None, &[]), ("clap", None, &[])],
        ),
        // weft-cuda reaches weft-models through a crate the layout does not name.
        (
            "weft-cuda",
            &[("weft-engine", None, &[]), ("weft-helper", None, &[])],
        ),
        ("weft-helper", &[("weft-models", None, &[])]),
        // A dev-dependency is the tests' business.
        (
            "weft-models",
            &[("weft-cuda", None, &[]), ("weft-nodes", Some("dev"), &[])],
        ),
        ("weft-sampling", &[]),
        (
            "weft-nodes",
            &[
                ("weft-models", None, &[]),
                ("weft-sampling", None, &[]),
                ("burn", None, &["std", "cuda"]),
            ],
        ),
        (
            "weft",
            &[("weft-nodes", None, &[]), ("tempfile", Some("dev"), &[])],
        ),
    ]);
    let problems = violations(&packages(&metadata));
    assert_eq!(
        problems,
        [
            "weft-cuda -> weft-helper -> weft-models: kernels know no architecture",
            "weft-engine -> clap: the engine has no command line",
            // An outside crate counts wherever a reached workspace crate declares it.
            "weft-engine -> weft-formats -> cudarc: the engine has no CUDA code",
            "weft-nodes turns on burn's cuda feature: only weft-cuda may",
        ]
    );

    let without_sampling = fake(&[("weft-formats", &[]), ("weft-engine", &[])]);
    let problems = violations(&packages(&without_sampling));
    assert!(problems.contains(&"weft-sampling: not in the workspace".to_owned()));
    assert_eq!(problems.len(), 5, "{problems:?}");
}
