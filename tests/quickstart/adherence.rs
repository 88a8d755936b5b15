//! The prompt-adherence test: 48 prompts whose scenes were held out of training (never drawn by
//! the trainer, tools/quickstart/shapes.py `is_held_out`) run through the shipped
//! workflows/quickstart.ron as users run it (`--set prompt.text=… --set sampler.seed=…`, models
//! from models/quickstart/ by the workflow's own relative paths), and each picture's foreground
//! color and shape are read back by [`super::classify`]. At least 80 % must match the prompt.
//!
//! Two executors share the prompts (CI has two cores; burn-flex runs each on one).
use super::classify::{Reading, classify, rgb_of};
use super::json;
use weft_engine::exec::{CancelToken, Executor, NoEvents, error_chain};
use weft_engine::graph::{Assignment, Graph, Workflow};
use weft_engine::node::{RunEnv, Value};
use weft_engine::registry::NodeRegistry;
use weft_nodes::image_io::image_to_bitmaps;
use weft_tests::{B, repo_root};

/// Runs the shipped workflow once per `(seed, caption)` and reads each picture back.
fn generate(jobs: &[(usize, String)]) -> Vec<Reading> {
    let out = tempfile::tempdir().unwrap();
    let env = RunEnv {
        output_dir: out.path().to_owned(),
        base_dir: repo_root().join("workflows"),
        ..RunEnv::default()
    };
    let registry = NodeRegistry::<B>::from_plugins(&weft_nodes::Builtin).unwrap();
    let mut executor = Executor::<B>::new(Default::default(), env);
    let shipped = Workflow::load(&repo_root().join("workflows/quickstart.ron")).unwrap();
    let mut readings = Vec::new();
    for (seed, caption) in jobs {
        let mut workflow = shipped.clone();
        for set in [
            format!("prompt.text={caption}"),
            format!("sampler.seed={seed}"),
        ] {
            workflow
                .apply(&registry, &Assignment::parse(&set).unwrap())
                .unwrap();
        }
        let graph = Graph::build(&workflow, &registry).unwrap_or_else(|r| panic!("{r}"));
        executor
            .run(&graph, &NoEvents, &CancelToken::new())
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let image = match &executor.outputs_of("decode").unwrap()[0] {
            Value::Image(image) => image.clone(),
            other => panic!("decode gave {other:?}"),
        };
        let bitmap = image_to_bitmaps(image).unwrap().remove(0);
        assert_eq!((bitmap.width, bitmap.height), (64, 64));
        readings.push(classify(64, 64, &rgb_of(&bitmap)));
    }
    readings
}

#[test]
fn held_out_prompts_give_the_asked_color_and_shape() {
    let prompts = json("held_out.json");
    let prompts = prompts.as_array().unwrap();
    assert_eq!(prompts.len(), 48);
    let jobs: Vec<(usize, String)> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p["caption"].as_str().unwrap().to_string()))
        .collect();
    let (first, second) = jobs.split_at(jobs.len() / 2);
    let readings: Vec<Reading> = std::thread::scope(|s| {
        let a = s.spawn(|| generate(first));
        let b = s.spawn(|| generate(second));
        let mut all = a.join().unwrap();
        all.extend(b.join().unwrap());
        all
    });
    let (mut color_hits, mut shape_hits, mut both, mut background_hits) = (0, 0, 0, 0);
    let mut report = Vec::new();
    for ((p, (_, caption)), got) in prompts.iter().zip(&jobs).zip(&readings) {
        let color = got.color == p["color"].as_str();
        let shape = got.shape == p["shape"].as_str();
        color_hits += usize::from(color);
        shape_hits += usize::from(shape);
        both += usize::from(color && shape);
        background_hits += usize::from(Some(got.background) == p["background"].as_str());
        report.push(format!(
            "{} {caption:?} -> {:?} {:?} on {}",
            if color && shape { "ok  " } else { "MISS" },
            got.color,
            got.shape,
            got.background
        ));
    }
    let rate = both as f64 / prompts.len() as f64;
    println!("{}", report.join("\n"));
    println!(
        "prompt adherence on {} held-out prompts: color and shape {both} ({:.1} %), color {color_hits}, shape {shape_hits}, background {background_hits}",
        prompts.len(),
        100.0 * rate
    );
    assert!(
        rate >= 0.8,
        "adherence {:.1} % < 80 %:\n{}",
        100.0 * rate,
        report.join("\n")
    );
}
