//! The whole Flux pipeline on the CPU, from RON workflows through the executor, against reference
//! images computed without weft (tools/gen_pipeline_fixtures.py: diffusers' Flux and VAE,
//! transformers' CLIP and T5, ComfyUI's own sampling code), and the model nodes one by one.
//!
//! Each test copies the fixture models into a temporary ComfyUI-style models folder under the
//! file names the workflows use (`flux1-dev-Q8_0.gguf`, `ae.safetensors` …), so the shipped
//! workflows run as users run them, with `--set`-style overrides from `cases.json`.
mod nodes;
mod residency;
mod txt2img;

use burn::tensor::Tensor;
use std::path::{Path, PathBuf};
use weft_engine::exec::{CancelToken, EventSink, Executor, RunReport, error_chain};
use weft_engine::formats::ModelFile;
use weft_engine::graph::{Assignment, Graph, Workflow};
use weft_engine::node::{RunEnv, Value};
use weft_engine::registry::NodeRegistry;
use weft_tests::{B, repo_root};

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// The generator's reference values.
pub fn references() -> ModelFile {
    ModelFile::open(fixture("pipeline/reference.safetensors")).unwrap_or_else(|e| panic!("{e}"))
}

/// A case of `cases.json`: the workflow parameters both sides used.
pub fn case(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("pipeline/cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"][name].clone()
}

/// A temporary run: a models folder (ComfyUI layout), a workflow folder and an output folder.
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub executor: Executor<B>,
    pub registry: NodeRegistry<B>,
}

impl Bench {
    /// `models`: (fixture path, path under the models folder).
    pub fn new(models: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (from, to) in models {
            let target = dir.path().join("models").join(to);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(fixture(from), &target).unwrap_or_else(|e| panic!("{from}: {e}"));
        }
        let env = RunEnv {
            output_dir: dir.path().join("output"),
            base_dir: dir.path().join("workflow"),
            models_dirs: vec![dir.path().join("models")],
            ..RunEnv::default()
        };
        std::fs::create_dir_all(&env.base_dir).unwrap();
        let registry = NodeRegistry::from_plugins(&weft_nodes::Builtin).unwrap();
        Bench {
            dir,
            executor: Executor::new(Default::default(), env),
            registry,
        }
    }

    /// The shipped Flux workflows' models, from the fixtures: the diffusion model `unet`.
    pub fn flux(unet: &str) -> Self {
        Self::new(&[
            (unet, "diffusion_models/flux1-dev-Q8_0.gguf"),
            ("vae/flux_vae.safetensors", "vae/ae.safetensors"),
            (
                "pipeline/t5xxl.gguf",
                "text_encoders/t5-v1_1-xxl-encoder-Q8_0.gguf",
            ),
            ("pipeline/clip_l.gguf", "text_encoders/clip_l.gguf"),
        ])
    }

    /// Copies a fixture into the workflow folder.
    pub fn input(&self, from: &str, name: &str) {
        std::fs::copy(fixture(from), self.dir.path().join("workflow").join(name)).unwrap();
    }

    /// Builds `workflow` with `sets` (`node.param=value`, as `--set`).
    pub fn graph(&self, workflow: Workflow, sets: &[String]) -> Graph<B> {
        let mut workflow = workflow;
        for set in sets {
            workflow
                .apply(&self.registry, &Assignment::parse(set).unwrap())
                .unwrap_or_else(|e| panic!("{set}: {e}"));
        }
        Graph::build(&workflow, &self.registry).unwrap_or_else(|r| panic!("{r}"))
    }

    /// Runs `graph`, panicking with the error chain on failure.
    pub fn run(&mut self, graph: &Graph<B>, events: &dyn EventSink) -> RunReport {
        self.executor
            .run(graph, events, &CancelToken::new())
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
    }

    /// Output `index` of node `id` from the last run.
    pub fn output(&self, id: &str, index: usize) -> Value<B> {
        self.executor
            .outputs_of(id)
            .unwrap_or_else(|| panic!("no cached outputs of {id}"))[index]
            .clone()
    }

    pub fn image(&self, id: &str) -> Tensor<B, 4> {
        match self.output(id, 0) {
            Value::Image(image) => image,
            other => panic!("{id}: {other:?}"),
        }
    }

    pub fn latent(&self, id: &str) -> Tensor<B, 4> {
        match self.output(id, 0) {
            Value::Latent(latent) => latent.samples,
            other => panic!("{id}: {other:?}"),
        }
    }

    /// The PNG files written under the output folder, sorted.
    pub fn pngs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.dir.path().join("output")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "png") {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }
}

/// A shipped workflow.
pub fn shipped(name: &str) -> Workflow {
    Workflow::load(&repo_root().join("workflows").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A workflow from RON text.
pub fn parse(source: &str) -> Workflow {
    Workflow::parse(source, Some(Path::new("test.ron"))).unwrap_or_else(|r| panic!("{r}"))
}

/// How far an 8-bit image is from the reference's: (pixels that differ, the largest difference).
pub fn byte_difference(got: &[u8], want: &[f32]) -> (usize, u8) {
    assert_eq!(got.len(), want.len(), "8-bit image sizes");
    got.iter().zip(want).fold((0, 0), |(n, worst), (&g, &w)| {
        let d = (f32::from(g) - w).abs() as u8;
        (n + usize::from(d > 0), worst.max(d))
    })
}
