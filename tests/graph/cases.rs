//! Workflow files as data (dora style): every `tests/cases/invalid/*.ron` must fail validation with
//! exactly the messages of its `// expect:` lines, and every `tests/cases/valid/*.ron` must validate
//! (and run its `// plan:` nodes in that order, when it has one).
use weft_engine::graph::{Graph, Workflow};
use weft_tests::{TestPlugin, registry, repo_root};

fn case_files(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = repo_root().join("tests/cases").join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ron"))
        .collect();
    files.sort();
    files
}

fn directive<'a>(source: &'a str, name: &str) -> Vec<&'a str> {
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .map(str::trim)
        .collect()
}

#[test]
fn every_invalid_case_reports_exactly_its_expected_messages() {
    let registry = registry(&TestPlugin::default());
    let files = case_files("invalid");
    assert!(
        files.len() >= 25,
        "expected the full set of invalid cases, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let expected = directive(&source, "// expect:");
        assert!(
            !expected.is_empty(),
            "{}: no `// expect:` line",
            path.display()
        );
        let report = match Workflow::parse(&source, Some(path))
            .and_then(|w| Graph::build(&w, &registry).map(drop))
        {
            Ok(()) => {
                failures.push(format!("{}: validated, but should not", path.display()));
                continue;
            }
            Err(report) => report,
        };
        let actual: Vec<String> = report
            .diagnostics
            .iter()
            .map(|d| d.without_file())
            .collect();
        if actual != expected {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  actual:\n    {}",
                path.display(),
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
        // The full message names the file too.
        for d in &report.diagnostics {
            assert!(
                d.to_string().starts_with(&format!("{}:", path.display())),
                "{d}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_valid_case_validates_and_plans_in_order() {
    let registry = registry(&TestPlugin::default());
    let files = case_files("valid");
    assert!(files.len() >= 5, "found {}", files.len());
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let graph = Workflow::parse(&source, Some(path))
            .and_then(|w| Graph::build(&w, &registry))
            .unwrap_or_else(|report| panic!("{report}"));
        if let Some(plan) = directive(&source, "// plan:").first() {
            let expected: Vec<&str> = plan.split(',').map(str::trim).collect();
            assert_eq!(graph.plan(), expected, "{}", path.display());
        }
    }
}
