//! The `weft` command line, driven as a user would: `validate`, `run` with `--set` and `--sweep`,
//! `nodes --json`, and Ctrl-C. Uses `weft-test`, the CLI with the built-in and test plugins.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use weft_tests::{repo_root, workflow};

fn weft() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft-test"));
    command.env_remove("RUST_LOG");
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn validate_reports_every_problem_with_file_line_column_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let good = repo_root().join("workflows/blend-swatches.ron");
    let bad = write(
        dir.path(),
        "bad.ron",
        "Workflow(version: 1, nodes: {\n  \"a\": (type: \"TestConts\"),\n  \"b\": (type: \"TestAdd\", inputs: { \"a\": \"nowhere\" }),\n})\n",
    );
    let output = weft()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("blend-swatches.ron: ok (6 nodes, 6 to run)"),
        "{stdout}"
    );
    let bad = bad.display();
    assert_eq!(
        stderr,
        format!(
            "{bad}:2:15: node \"a\": unknown node type \"TestConts\" (did you mean \"TestConst\"?)\n\
             {bad}:3:3: node \"b\": missing input \"b\" (INT)\n\
             {bad}:3:41: node \"b\": input \"a\": link to unknown node \"nowhere\"\n\
             3 problems in 1 of 2 files\n"
        )
    );
}

#[test]
fn run_with_a_sweep_reuses_cached_upstream_work_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let flow = write(
        dir.path(),
        "flow.ron",
        &workflow(
            r#"
            "slow": (type: "TestSteps", params: { "steps": 4 }),
            "scaled": (type: "TestScale", inputs: { "value": "slow" }, params: { "factor": 1 }),
            "out": (type: "TestRecord", inputs: { "value": "scaled.INT" }),
            "#,
        ),
    );
    let output = weft()
        .arg("run")
        .arg(&flow)
        .args(["--set", "slow.steps=3", "--sweep", "scaled.factor=1,2,3"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let runs: Vec<&str> = stdout.lines().collect();
    assert_eq!(runs.len(), 6, "{stdout}");
    assert_eq!(runs[0], "run 1/3: scaled.factor=1");
    assert!(
        runs[1].starts_with("ran 3 (slow, scaled, out), cached 0 in "),
        "{stdout}"
    );
    assert_eq!(runs[2], "run 2/3: scaled.factor=2");
    assert!(
        runs[3].starts_with("ran 2 (scaled, out), cached 1 (slow) in "),
        "{stdout}"
    );
    assert!(
        runs[5].starts_with("ran 2 (scaled, out), cached 1 (slow) in "),
        "{stdout}"
    );
    assert!(
        stderr.contains("  slow: 3/3"),
        "progress lines without a terminal: {stderr}"
    );
    assert!(stderr.contains("  slow (TestSteps) cached"), "{stderr}");
}

#[test]
fn run_writes_into_the_output_dir_and_lists_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images");
    let output = weft()
        .arg("run")
        .arg(repo_root().join("workflows/blend-swatches.ron"))
        .arg("--output-dir")
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "wrote {}",
            out.join("swatches/blend_00001_.png").display()
        )),
        "{stdout}"
    );
    assert!(out.join("swatches/inverted_00001_.png").exists());
}

#[test]
fn bad_overrides_and_invalid_sweep_values_fail_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let flow = repo_root().join("workflows/blend-swatches.ron");
    let cases = [
        (
            vec!["--set", "mix.blend_mode=lighten"],
            "error: --set: \"mix.blend_mode=lighten\": parameter \"blend_mode\" of node \"mix\": \"lighten\" is not one of the choices: normal, multiply, screen, overlay, soft_light, difference",
        ),
        (
            vec!["--set", "mxi.blend_factor=1"],
            "error: --set: \"mxi.blend_factor=1\": unknown node \"mxi\" (did you mean \"mix\"?)",
        ),
        (
            vec!["--set", "mix.factor=1"],
            "error: --set: \"mix.factor=1\": node \"mix\" (ImageBlend) has no parameter \"factor\"",
        ),
        (
            vec!["--set", "nonsense"],
            "error: --set: \"nonsense\": expected NODE.PARAM=VALUE",
        ),
        (
            vec!["--sweep", "orange.width=8,x,16"],
            "error: --sweep: \"orange.width=x\": parameter \"width\" of node \"orange\": expected an integer, found \"x\"",
        ),
    ];
    for (args, expected) in cases {
        let output = weft()
            .arg("run")
            .arg(&flow)
            .args(&args)
            .arg("--output-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end(), expected, "{args:?}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing ran"
    );
}

#[test]
fn nodes_json_lists_every_node_type_with_ports_and_params() {
    let output = weft().args(["nodes", "--json"]).output().unwrap();
    assert!(output.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let nodes = listing["nodes"].as_array().unwrap();
    let blend = nodes.iter().find(|n| n["type"] == "ImageBlend").unwrap();
    assert_eq!(blend["plugin"], "weft-nodes");
    assert_eq!(blend["inputs"][1]["name"], "image2");
    assert_eq!(blend["inputs"][1]["type"], "IMAGE");
    assert_eq!(blend["params"][1]["kind"], "choice");
    assert_eq!(blend["params"][1]["choices"][4], "soft_light");
    assert_eq!(blend["params"][0]["max"], 1.0);
    assert!(
        nodes
            .iter()
            .any(|n| n["type"] == "TestConst" && n["plugin"] == "weft-tests")
    );
    let types = listing["types"].as_array().unwrap();
    assert!(
        types
            .iter()
            .any(|t| t["type"] == "TEST_PAIR" && t["plugin"] == "weft-tests")
    );
    assert!(types.iter().any(|t| t["type"] == "CONDITIONING"));
}

#[test]
fn nodes_text_filters_by_name() {
    let output = weft().args(["nodes", "emptylatent"]).output().unwrap();
    let (stdout, _) = text(&output);
    assert!(
        stdout.starts_with("EmptyLatentImage (latent, weft-nodes)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    param  width: INT 16..=16384 = 512\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("ImageBlend"), "{stdout}");
}

#[test]
fn ctrl_c_stops_the_run_at_the_next_step_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The slow loop runs first (file order); the image save after it must never happen.
    let flow = write(
        dir.path(),
        "slow.ron",
        &workflow(
            r#"
            "slow": (type: "TestSteps", params: { "steps": 100000, "delay_ms": 5 }),
            "record": (type: "TestRecord", inputs: { "value": "slow" }),
            "img": (type: "EmptyImage", params: { "width": 4, "height": 4 }),
            "save": (type: "SaveImage", inputs: { "images": "img" }),
            "#,
        ),
    );
    let mut child = weft()
        .arg("run")
        .arg(&flow)
        .arg("--output-dir")
        .arg(&out)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "weft exited before the loop started: {seen}"
        );
        seen.push_str(&line);
        if line.starts_with("  slow: ") {
            break; // the loop is running
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "weft did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(code, Some(130), "{seen}{rest}");
    assert!(rest.contains("cancelled at node \"slow\""), "{rest}");
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().count() == 0,
        "nothing may be written after a cancel"
    );
}

/// Issue 5: a saved image carries the workflow and the command that reproduces its run.
#[test]
fn saved_images_embed_the_workflow_and_the_command_that_reproduces_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images");
    let flow = repo_root().join("workflows/blend-swatches.ron");
    let output = weft()
        .arg("run")
        .arg(&flow)
        .args([
            "--set",
            "mix.blend_factor=0.25",
            "--sweep",
            "mix.blend_mode=screen,multiply",
            "--output-dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    let second = std::fs::read(out.join("swatches/blend_00002_.png")).unwrap();
    let chunks = weft_nodes::image_io::read_png_text(&second).unwrap();
    let get = |key: &str| {
        chunks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("workflow"), std::fs::read_to_string(&flow).unwrap());
    let command = get("parameters");
    assert!(
        command.contains("--set mix.blend_factor=0.25")
            && command.contains("--set mix.blend_mode=multiply"),
        "{command}"
    );
    assert!(get("software").starts_with("weft "));
}

/// Issue 5: model folders come from --models-dir and WEFT_MODELS_DIR; a missing model names
/// every place looked at.
#[test]
fn models_dir_from_the_environment_is_searched() {
    let dir = tempfile::tempdir().unwrap();
    let flow = write(
        dir.path(),
        "load.ron",
        r#"Workflow(version: 1, nodes: {
            "unet": (type: "UnetLoaderGGUF", params: { "unet_name": "absent-model.gguf" }),
            "off": (type: "OffloadModel", inputs: { "model": "unet" }),
        })"#,
    );
    let models = dir.path().join("my-models");
    let output = weft()
        .arg("run")
        .arg(&flow)
        .env("WEFT_MODELS_DIR", &models)
        .arg("--output-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            &models
                .join("diffusion_models")
                .join("absent-model.gguf")
                .display()
                .to_string()
        ),
        "{stderr}"
    );
}
