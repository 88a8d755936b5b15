//! The executor, driven through the test plugin: order, only-needed subgraph, caching across runs,
//! invalidation, opt-out, fingerprints, linked parameters, events, error naming and cancellation.
use weft_engine::exec::{CancelToken, Event, ExecError, NoEvents, error_chain};
use weft_engine::graph::{Assignment, Workflow};
use weft_tests::{Harness, workflow};

/// a=2, b=3 → sum → scaled (×factor) → record; plus an unused branch.
fn arithmetic(factor: i64) -> String {
    workflow(&format!(
        r#"
        "a": (type: "TestConst", params: {{ "value": 2 }}),
        "b": (type: "TestConst", params: {{ "value": 3 }}),
        "unused": (type: "TestConst", params: {{ "value": 99 }}),
        "sum": (type: "TestAdd", inputs: {{ "a": "a", "b": "b" }}),
        "scaled": (type: "TestScale", inputs: {{ "value": "sum.INT" }}, params: {{ "factor": {factor} }}),
        "out": (type: "TestRecord", inputs: {{ "value": "scaled.INT" }}),
        "#
    ))
}

#[test]
fn runs_in_topological_order_with_file_order_breaking_ties() {
    let mut h = Harness::new();
    // Declared sinks-first; dependencies must still run first, and independent nodes in file order.
    let report = h.run(&workflow(
        r#"
        "out": (type: "TestRecord", inputs: { "value": "sum" }),
        "sum": (type: "TestAdd", inputs: { "a": "z", "b": "y" }),
        "z": (type: "TestConst", params: { "value": 1 }),
        "y": (type: "TestConst", params: { "value": 2 }),
        "#,
    ));
    assert_eq!(report.executed_ids(), ["z", "y", "sum", "out"]);
    assert_eq!(h.probe.take_order(), ["z", "y", "sum", "out"]);
    assert_eq!(h.probe.take_recorded(), [("out".to_owned(), 3)]);
}

#[test]
fn runs_only_what_output_nodes_need() {
    let mut h = Harness::new();
    let report = h.run(&arithmetic(2));
    assert_eq!(h.probe.runs("unused"), 0);
    assert_eq!(report.skipped, ["unused"]);
    assert_eq!(h.probe.take_recorded(), [("out".to_owned(), 10)]);
}

#[test]
fn a_second_identical_run_is_served_from_the_cache() {
    let mut h = Harness::new();
    let source = arithmetic(2);
    h.run(&source);
    let second = h.run(&source);
    assert!(
        second.executed.is_empty(),
        "ran {:?}",
        second.executed_ids()
    );
    assert_eq!(second.cached, ["a", "b", "sum", "scaled", "out"]);
    for id in ["a", "b", "sum", "scaled", "out"] {
        assert_eq!(h.probe.runs(id), 1, "{id} ran again");
    }
}

#[test]
fn changing_a_parameter_reruns_that_node_and_what_follows_only() {
    let mut h = Harness::new();
    h.run(&arithmetic(2));
    let report = h.run(&arithmetic(5));
    assert_eq!(report.executed_ids(), ["scaled", "out"]);
    assert_eq!(report.cached, ["a", "b", "sum"]);
    assert_eq!(h.probe.runs("sum"), 1);
    assert_eq!(h.probe.runs("scaled"), 2);
    assert_eq!(
        h.probe.take_recorded(),
        [("out".to_owned(), 10), ("out".to_owned(), 25)]
    );
}

#[test]
fn a_set_override_changes_the_cache_key_like_an_edit() {
    let mut h = Harness::new();
    let mut wf = Workflow::parse(&arithmetic(2), None).unwrap();
    h.run_graph(&weft_engine::graph::Graph::build(&wf, &h.registry).unwrap())
        .unwrap();
    wf.apply(&h.registry, &Assignment::parse("scaled.factor=3").unwrap())
        .unwrap();
    let report = h
        .run_graph(&weft_engine::graph::Graph::build(&wf, &h.registry).unwrap())
        .unwrap();
    assert_eq!(report.executed_ids(), ["scaled", "out"]);
    assert_eq!(
        h.probe.take_recorded().last(),
        Some(&("out".to_owned(), 15))
    );
}

#[test]
fn only_the_latest_run_is_kept_in_the_cache() {
    let mut h = Harness::new();
    h.run(&arithmetic(2));
    let entries = h.executor.cached_entries();
    h.run(&arithmetic(5));
    assert_eq!(
        h.executor.cached_entries(),
        entries,
        "factor 2's results were evicted, factor 5's added"
    );
    // Back to 2: the scaled node ran for 2 before, but that result was dropped with its run.
    let report = h.run(&arithmetic(2));
    assert_eq!(report.executed_ids(), ["scaled", "out"]);
}

#[test]
fn an_always_run_node_runs_every_time_and_invalidates_what_follows() {
    let mut h = Harness::new();
    let source = workflow(
        r#"
        "count": (type: "TestCounter"),
        "c": (type: "TestConst", params: { "value": 1 }),
        "sum": (type: "TestAdd", inputs: { "a": "count", "b": "c" }),
        "out": (type: "TestRecord", inputs: { "value": "sum" }),
        "#,
    );
    h.run(&source);
    let report = h.run(&source);
    assert_eq!(report.executed_ids(), ["count", "sum", "out"]);
    assert_eq!(report.cached, ["c"]);
    assert_eq!(
        h.probe.take_recorded(),
        [("out".to_owned(), 2), ("out".to_owned(), 3)]
    );
}

#[test]
fn a_changed_file_fingerprint_reruns_the_node() {
    let mut h = Harness::new();
    let file = h.dir.path().join("data.txt");
    std::fs::write(&file, "four").unwrap();
    let source = workflow(
        r#"
        "size": (type: "TestFileSize", params: { "path": "data.txt" }),
        "out": (type: "TestRecord", inputs: { "value": "size" }),
        "#,
    );
    h.run(&source);
    assert!(
        h.run(&source).executed.is_empty(),
        "unchanged file: all cached"
    );
    std::fs::write(&file, "eleven long").unwrap();
    let report = h.run(&source);
    assert_eq!(report.executed_ids(), ["size", "out"]);
    assert_eq!(
        h.probe.take_recorded(),
        [("out".to_owned(), 4), ("out".to_owned(), 11)]
    );
}

#[test]
fn a_linked_parameter_takes_its_value_from_upstream_and_is_range_checked() {
    let mut h = Harness::new();
    let source = |v: i64| {
        workflow(&format!(
            r#"
            "factor": (type: "PrimitiveInt", params: {{ "value": {v} }}),
            "base": (type: "TestConst", params: {{ "value": 7 }}),
            "scaled": (type: "TestScale", inputs: {{ "value": "base", "factor": "factor" }}),
            "out": (type: "TestRecord", inputs: {{ "value": "scaled.DOUBLE" }}),
            "#
        ))
    };
    h.run(&source(3));
    assert_eq!(h.probe.take_recorded(), [("out".to_owned(), 42)]);
    // 500 passes PrimitiveInt but not TestScale's factor range (0..=100): caught at run time, named.
    let graph = h.graph(&source(500));
    let err = h.run_graph(&graph).unwrap_err();
    assert_eq!(
        error_chain(&err),
        "node \"scaled\" (TestScale): parameters: parameter \"factor\" (linked): 500 is out of range 0..=100"
    );
}

#[test]
fn plugin_defined_types_flow_between_nodes() {
    let mut h = Harness::new();
    h.run(&workflow(
        r#"
        "a": (type: "TestConst", params: { "value": 20 }),
        "b": (type: "TestConst", params: { "value": 22 }),
        "pair": (type: "TestMakePair", inputs: { "a": "a", "b": "b" }),
        "sum": (type: "TestPairSum", inputs: { "pair": "pair.PAIR" }),
        "out": (type: "TestRecord", inputs: { "value": "sum" }),
        "#,
    ));
    assert_eq!(h.probe.take_recorded(), [("out".to_owned(), 42)]);
}

/// Issue 7: an object's release hook (a text encoder's weights) runs once its last consumer in
/// the run has finished — not after the first consumer, and not never.
#[test]
fn objects_are_released_after_their_last_consumer() {
    let mut h = Harness::new();
    h.run(&workflow(
        r#"
        "a": (type: "TestConst", params: { "value": 20 }),
        "b": (type: "TestConst", params: { "value": 22 }),
        "pair": (type: "TestMakePair", inputs: { "a": "a", "b": "b" }),
        "first": (type: "TestPairSum", inputs: { "pair": "pair" }),
        "second": (type: "TestPairDiff", inputs: { "pair": "pair" }),
        "total": (type: "TestAdd", inputs: { "a": "first", "b": "second" }),
        "out": (type: "TestRecord", inputs: { "value": "total" }),
        "#,
    ));
    assert_eq!(
        h.probe.take_order(),
        [
            "a",
            "b",
            "pair",
            "first",
            "second",
            "released pair",
            "total",
            "out"
        ]
    );
    assert_eq!(h.probe.take_recorded(), [("out".to_owned(), 40)]);
}

#[test]
fn a_failing_node_is_named_with_its_type_and_stops_the_run() {
    let mut h = Harness::new();
    let graph = h.graph(&workflow(
        r#"
        "a": (type: "TestConst", params: { "value": 1 }),
        "boom": (type: "TestFail", inputs: { "value": "a" }, params: { "message": "the disk is full" }),
        "out": (type: "TestRecord", inputs: { "value": "boom" }),
        "#,
    ));
    let err = h.run_graph(&graph).unwrap_err();
    assert!(
        matches!(&err, ExecError::Node { node_id, node_type, .. } if node_id == "boom" && node_type == "TestFail")
    );
    assert_eq!(
        error_chain(&err),
        "node \"boom\" (TestFail): the disk is full"
    );
    assert_eq!(h.probe.runs("out"), 0);
    let failed = h.events.events().into_iter().find_map(|e| match e {
        Event::NodeFailed {
            node_id,
            node_type,
            error,
        } => Some((node_id, node_type, error)),
        _ => None,
    });
    assert_eq!(
        failed,
        Some((
            "boom".to_owned(),
            "TestFail".to_owned(),
            "the disk is full".to_owned()
        ))
    );
    // What finished before the failure stays cached: fixing the node does not rerun "a".
    let fixed = h.run(&workflow(
        r#"
        "a": (type: "TestConst", params: { "value": 1 }),
        "out": (type: "TestRecord", inputs: { "value": "a" }),
        "#,
    ));
    assert_eq!(fixed.cached, ["a"]);
}

#[test]
fn a_node_that_breaks_its_schema_is_reported_not_trusted() {
    let mut h = Harness::new();
    let graph = h.graph(&workflow(
        r#"
        "bad": (type: "TestBadOutputs"),
        "out": (type: "TestRecord", inputs: { "value": "bad" }),
        "#,
    ));
    let err = h.run_graph(&graph).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node \"bad\" (TestBadOutputs) broke its schema: output \"INT\" should be INT, is STRING"
    );
}

#[test]
fn events_tell_started_progress_cached_and_finished() {
    let mut h = Harness::new();
    let source = workflow(
        r#"
        "steps": (type: "TestSteps", params: { "steps": 3 }),
        "out": (type: "TestRecord", inputs: { "value": "steps" }),
        "#,
    );
    h.run(&source);
    h.run(&source);
    let names: Vec<String> = h
        .events
        .events()
        .iter()
        .map(|e| match e {
            Event::RunStarted { run, planned } => format!("run {run} ({planned})"),
            Event::NodeStarted { node_id, .. } => format!("start {node_id}"),
            Event::Progress {
                node_id,
                step,
                total,
            } => format!("{node_id} {step}/{total}"),
            Event::NodeFinished { node_id, .. } => format!("done {node_id}"),
            Event::NodeCached { node_id, .. } => format!("cached {node_id}"),
            Event::RunFinished { run, .. } => format!("end {run}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "run 1 (2)",
            "start steps",
            "steps 1/3",
            "steps 2/3",
            "steps 3/3",
            "done steps",
            "start out",
            "done out",
            "end 1",
            "run 2 (2)",
            "cached steps",
            "cached out",
            "end 2"
        ]
    );
}

#[test]
fn cancelling_mid_node_stops_at_the_next_step_and_runs_nothing_after() {
    let mut h = Harness::new();
    let graph = h.graph(&workflow(
        r#"
        "steps": (type: "TestSteps", params: { "steps": 100, "cancel_at": 3 }),
        "out": (type: "TestRecord", inputs: { "value": "steps" }),
        "#,
    ));
    let err = h.run_graph(&graph).unwrap_err();
    assert!(
        matches!(&err, ExecError::Cancelled { node_id: Some(n) } if n == "steps"),
        "{err:?}"
    );
    let steps: Vec<i64> = h
        .probe
        .take_recorded()
        .into_iter()
        .map(|(_, step)| step)
        .collect();
    assert_eq!(steps, [1, 2, 3], "the loop stops at the check after step 3");
    assert_eq!(h.probe.runs("out"), 0);
    assert_eq!(
        h.executor.cached_entries(),
        0,
        "a cancelled node's partial result is not cached"
    );
    assert!(h.events.events().contains(&Event::Cancelled {
        node_id: Some("steps".to_owned())
    }));
}

#[test]
fn a_cancelled_token_stops_before_the_next_node() {
    let mut h = Harness::new();
    let graph = h.graph(&arithmetic(2));
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = h.executor.run(&graph, &NoEvents, &cancel).unwrap_err();
    assert_eq!(err.to_string(), "cancelled at node \"a\"");
    assert_eq!(h.probe.runs("a"), 0);
}

#[test]
fn outputs_of_the_last_run_can_be_read_back() {
    let mut h = Harness::new();
    h.run(&arithmetic(2));
    let outputs = h.executor.outputs_of("scaled").unwrap();
    assert_eq!(format!("{outputs:?}"), "[Int(10), Int(20)]");
    assert!(h.executor.outputs_of("unused").is_none());
}
