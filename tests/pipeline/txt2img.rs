//! Flux txt2img and img2img, 4 steps on the tiny fixture models, against the reference pipeline:
//! (a) from precomputed embeddings (`LoadConditioning`), (b) from a prompt through CLIP-L + T5 with
//! cfg 2 and a negative prompt (the shipped `flux-txt2img.ron`), (c) img2img from a PNG (the shipped
//! `flux-img2img.ron`, an ancestral sampler).
//!
//! What is compared: the KSampler's latent, VAEDecode's float image and the 8-bit PNG SaveImage
//! wrote. Both sides compute in f32 with different summation orders (GEMM blocking, attention,
//! norms), and sampling compounds them over 4 steps (8 model calls at cfg 2). The bound,
//! max |got - want| ≤ 1e-4 · max |want|, is the models' own tolerance (tests/models); measured
//! errors are in each test's comment. PNG bytes come from truncating 255·x, so a float error of
//! 1e-6 can move a byte that sits on an integer boundary by one: at most a few such bytes, never
//! more than 1 apart, are allowed.
use super::{Bench, byte_difference, case, parse, references, shipped};
use crate::models::{assert_close, reference};
use weft_engine::exec::NoEvents;
use weft_nodes::image_io::decode_png;

const REL: f32 = 1e-4;
/// Bytes allowed to differ by one (truncation at an integer boundary), of 1152.
const BYTES_OFF_BY_ONE: usize = 4;

/// The overrides that make a shipped workflow run `name`'s case.
fn sets(name: &str) -> Vec<String> {
    let c = case(name);
    let mut sets = vec![
        "clip.clip_name2=clip_l.gguf".to_owned(),
        format!("sampler.seed={}", c["seed"]),
        format!("sampler.steps={}", c["steps"]),
        format!("sampler.cfg={}", c["cfg"]),
        format!("sampler.sampler_name={}", c["sampler"].as_str().unwrap()),
        format!("sampler.scheduler={}", c["scheduler"].as_str().unwrap()),
        format!("sampler.denoise={}", c["denoise"]),
        format!("guidance.guidance={}", c["guidance"]),
        format!("positive.text={}", c["positive"].as_str().unwrap()),
        format!("negative.text={}", c["negative"].as_str().unwrap()),
    ];
    if name == "img2img" {
        sets.push(format!("model.width={}", c["width"]));
        sets.push(format!("model.height={}", c["height"]));
    } else {
        sets.push(format!("width.value={}", c["width"]));
        sets.push(format!("height.value={}", c["height"]));
    }
    sets
}

/// Compares a finished run with case `name` of the reference; returns the image's relative error.
fn check(bench: &Bench, name: &str) -> f32 {
    let refs = references();
    assert_close(
        &format!("{name}: latent"),
        bench.latent("sampler"),
        reference(&refs, &format!("{name}.latent")),
        REL,
    );
    let measured = assert_close(
        &format!("{name}: image"),
        bench.image("decode"),
        reference(&refs, &format!("{name}.image")),
        REL,
    );
    let pngs = bench.pngs();
    assert_eq!(pngs.len(), 1, "{pngs:?}");
    let bitmap = decode_png(&std::fs::read(&pngs[0]).unwrap()).unwrap();
    assert_eq!((bitmap.width, bitmap.height, bitmap.channels), (24, 16, 3));
    let want = crate::models::values(&refs, &format!("{name}.png"));
    let (differ, worst) = byte_difference(&bitmap.pixels, &want);
    println!(
        "{name}: PNG bytes differing from the reference: {differ} (largest difference {worst})"
    );
    assert!(
        worst <= 1 && differ <= BYTES_OFF_BY_ONE,
        "{name}: {differ} bytes differ, by up to {worst}"
    );
    measured
}

pub(super) const FROM_EMBEDDINGS: &str = r#"
Workflow(
    version: 1,
    nodes: {
        "unet": (type: "UnetLoaderGGUF", params: { "unet_name": "flux1-dev-Q8_0.gguf" }),
        "model": (type: "ModelSamplingFlux", inputs: { "model": "unet" }, params: { "width": 96, "height": 64 }),
        "vae": (type: "VAELoader", params: { "vae_name": "ae.safetensors" }),
        "text": (type: "LoadConditioning", params: { "file": "embeddings.safetensors" }),
        "guidance": (type: "FluxGuidance", inputs: { "conditioning": "text" }, params: { "guidance": 4.0 }),
        "negative": (type: "ConditioningZeroOut", inputs: { "conditioning": "text" }),
        "latent": (type: "EmptySD3LatentImage", params: { "width": 96, "height": 64 }),
        "sampler": (
            type: "KSampler",
            inputs: { "model": "model", "positive": "guidance", "negative": "negative", "latent_image": "latent" },
            params: { "seed": 42, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0 },
        ),
        "decode": (type: "VAEDecode", inputs: { "samples": "sampler", "vae": "vae" }),
        "save": (type: "SaveImage", inputs: { "images": "decode" }, params: { "filename_prefix": "embeddings" }),
    },
)
"#;

/// Measured (CPU, Flex): see the report printed with --nocapture.
#[test]
fn txt2img_from_embeddings_matches_the_reference_pipeline() {
    let c = case("embeddings");
    assert_eq!(
        (
            c["seed"].as_u64(),
            c["steps"].as_u64(),
            c["guidance"].as_f64()
        ),
        (Some(42), Some(4), Some(4.0)),
        "the workflow above mirrors the case"
    );
    let mut bench = Bench::flux("flux/dev.gguf");
    bench.input("pipeline/embeddings.safetensors", "embeddings.safetensors");
    let graph = bench.graph(parse(FROM_EMBEDDINGS), &[]);
    bench.run(&graph, &NoEvents);
    check(&bench, "embeddings");
}

#[test]
fn txt2img_from_a_prompt_matches_the_reference_pipeline() {
    let mut bench = Bench::flux("pipeline/flux_prompt.gguf");
    let graph = bench.graph(shipped("flux-txt2img.ron"), &sets("prompt"));
    bench.run(&graph, &NoEvents);
    let refs = references();
    for side in ["positive", "negative"] {
        let Some(weft_engine::node::Value::Conditioning(cond)) =
            bench.executor.outputs_of(side).map(|o| o[0].clone())
        else {
            panic!("{side}: no conditioning")
        };
        let entry = &cond.entries[0];
        assert_close(
            &format!("{side}: T5 context"),
            entry.context.clone(),
            reference(&refs, &format!("prompt.{side}.context")),
            REL,
        );
        assert_close(
            &format!("{side}: CLIP pooled"),
            entry.pooled.clone().unwrap(),
            reference(&refs, &format!("prompt.{side}.pooled")),
            REL,
        );
    }
    check(&bench, "prompt");
}

#[test]
fn img2img_matches_the_reference_pipeline() {
    let mut bench = Bench::flux("pipeline/flux_prompt.gguf");
    bench.input("pipeline/input.png", "input.png");
    let graph = bench.graph(shipped("flux-img2img.ron"), &sets("img2img"));
    bench.run(&graph, &NoEvents);
    check(&bench, "img2img");
}
