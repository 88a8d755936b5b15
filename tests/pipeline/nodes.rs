//! The model nodes one by one, in workflows on the fixture models: LoRA patches change the result
//! and the base model is itself again afterwards; VAEDecode's `release_vae` frees the VAE's device
//! copy; KSampler at cfg 1 never evaluates the negative; cancelling stops between sampler steps;
//! CLIPTextEncodeFlux sends each prompt to its encoder; SaveImage embeds the run's text chunks;
//! loaders name the files they could not use.
use super::{Bench, case, parse, references};
use crate::models::{assert_close, reference};
use burn::tensor::Tensor;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::path::Path;
use std::sync::{Arc, Mutex};
use weft_engine::exec::{CancelToken, Event, ExecError, NoEvents, error_chain};
use weft_engine::node::Value;
use weft_engine::patcher::ModelHandle;
use weft_nodes::image_io::{PngTextChunks, read_png_text};
use weft_nodes::text_nodes::TextEncoders;
use weft_tests::B;

/// Writes f32 tensors as safetensors.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            (
                (*name).to_owned(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Deterministic values in [-scale, scale).
fn wave(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| scale * ((i as f32 * 0.37 + seed).sin()))
        .collect()
}

/// The embeddings workflow of txt2img.rs (cfg, negative and `release_vae` as given) plus `extra`
/// nodes.
fn workflow(extra: &str, negative: &str, cfg: f64, release_vae: bool) -> String {
    format!(
        r#"(version: 1, nodes: {{
        "unet": (type: "UnetLoaderGGUF", params: {{ "unet_name": "flux1-dev-Q8_0.gguf" }}),
        "model": (type: "ModelSamplingFlux", inputs: {{ "model": "unet" }}, params: {{ "width": 96, "height": 64 }}),
        "vae": (type: "VAELoader", params: {{ "vae_name": "ae.safetensors" }}),
        "text": (type: "LoadConditioning", params: {{ "file": "embeddings.safetensors" }}),
        "negative": {negative},
        "latent": (type: "EmptySD3LatentImage", params: {{ "width": 96, "height": 64 }}),
        "sampler": (
            type: "KSampler",
            inputs: {{ "model": "model", "positive": "text", "negative": "negative", "latent_image": "latent" }},
            params: {{ "seed": 42, "steps": 4, "cfg": {cfg:?}, "sampler_name": "euler", "scheduler": "simple" }},
        ),
        "decode": (type: "VAEDecode", inputs: {{ "samples": "sampler", "vae": "vae" }}, params: {{ "release_vae": {release_vae} }}),
        "save": (type: "SaveImage", inputs: {{ "images": "decode" }}),
        {extra}
    }})"#
    )
}

const ZERO_NEGATIVE: &str = r#"(type: "ConditioningZeroOut", inputs: { "conditioning": "text" })"#;

fn bench() -> Bench {
    let bench = Bench::flux("flux/dev.gguf");
    bench.input("pipeline/embeddings.safetensors", "embeddings.safetensors");
    bench
}

fn handle(bench: &Bench, id: &str) -> Arc<ModelHandle<B>> {
    let Value::Object(object) = bench.output(id, 0) else {
        panic!("{id}: not an object")
    };
    object
        .downcast_arc::<ModelHandle<B>>()
        .unwrap_or_else(|| panic!("{id}: not a ModelHandle"))
}

fn same(a: &Tensor<B, 4>, b: &Tensor<B, 4>) -> bool {
    a.clone().into_data().to_vec::<f32>().unwrap() == b.clone().into_data().to_vec::<f32>().unwrap()
}

/// A rank-4 LoRA for the fixture Flux: a kohya module on double block 0's fused qkv weight and a
/// diffusers one on the `to_k` slice of single block 1's linear1 (through the Flux key map).
pub(super) fn write_detail_lora(path: &Path) {
    write_safetensors(
        path,
        &[
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                vec![192, 4],
                wave(768, 0.1, 0.05),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                vec![4, 64],
                wave(256, 0.7, 0.05),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.alpha",
                vec![],
                vec![2.0],
            ),
            (
                "transformer.single_transformer_blocks.1.attn.to_k.lora_B.weight",
                vec![64, 4],
                wave(256, 1.3, 0.05),
            ),
            (
                "transformer.single_transformer_blocks.1.attn.to_k.lora_A.weight",
                vec![4, 64],
                wave(256, 2.1, 0.05),
            ),
        ],
    );
}

#[test]
fn lora_changes_the_result_and_the_base_model_comes_back_unpatched() {
    let mut bench = bench();
    write_detail_lora(&bench.dir.path().join("models/loras/detail.safetensors"));
    let lora_nodes = r#"
        "lora": (type: "LoraLoaderModelOnly", inputs: { "model": "unet" }, params: { "lora_name": "detail.safetensors", "strength_model": 0.8 }),
        "lora_model": (type: "ModelSamplingFlux", inputs: { "model": "lora" }, params: { "width": 96, "height": 64 }),
        "lora_sampler": (
            type: "KSampler",
            inputs: { "model": "lora_model", "positive": "text", "negative": "negative", "latent_image": "latent" },
            params: { "seed": 42, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple" },
        ),
        "lora_decode": (type: "VAEDecode", inputs: { "samples": "lora_sampler", "vae": "vae" }),
        "lora_save": (type: "SaveImage", inputs: { "images": "lora_decode" }),
    "#;
    let graph = bench.graph(parse(&workflow(lora_nodes, ZERO_NEGATIVE, 1.0, true)), &[]);
    bench.run(&graph, &NoEvents);
    let (base, patched) = (bench.latent("sampler"), bench.latent("lora_sampler"));
    assert!(!same(&base, &patched), "the LoRA changed nothing");
    let lora = handle(&bench, "lora");
    assert_eq!(lora.patcher().patches().len(), 2, "both modules matched");
    let single = lora
        .patcher()
        .patches()
        .iter()
        .find(|p| p.target.starts_with("single_blocks.1"))
        .unwrap();
    assert_eq!(single.target, "single_blocks.1.linear1.weight");

    // The LoRA sampler ran last, so the shared device copy holds patched weights; the base model
    // must re-upload the file's values, and give the first result bit for bit.
    let base_only = bench.graph(parse(&workflow("", ZERO_NEGATIVE, 1.0, true)), &[]);
    bench.executor.clear_cache();
    bench.run(&base_only, &NoEvents);
    assert!(
        same(&base, &bench.latent("sampler")),
        "the base model after the LoRA differs from before"
    );
    let unet = handle(&bench, "unet");
    assert!(
        unet.patcher().device_bytes() > 0,
        "the sampler left the model loaded"
    );
    assert_eq!(
        unet.patcher().verify().unwrap(),
        Vec::<String>::new(),
        "device copies equal the file"
    );
}

#[test]
fn vae_decode_release_frees_the_vae_device_copy() {
    for release in [true, false] {
        let mut bench = bench();
        let graph = bench.graph(parse(&workflow("", ZERO_NEGATIVE, 1.0, release)), &[]);
        bench.run(&graph, &NoEvents);
        let vae = handle(&bench, "vae");
        let patcher = vae.patcher();
        match release {
            true => assert_eq!(
                patcher.device_bytes(),
                0,
                "release_vae left {} bytes",
                patcher.device_bytes()
            ),
            false => assert_eq!(
                patcher.device_bytes(),
                patcher.full_bytes(),
                "without release_vae the VAE stays loaded"
            ),
        }
        assert!(
            patcher.full_bytes() > 2_000_000,
            "the f32 VAE is {} bytes",
            patcher.full_bytes()
        );
    }
}

#[test]
fn ksampler_at_cfg_1_never_evaluates_the_negative() {
    // A negative Flux cannot take (context 7 wide, the model's is 48): harmless at cfg 1, an
    // error naming the shapes at cfg 2.
    let bad = r#"(type: "LoadConditioning", params: { "file": "bad.safetensors" })"#;
    let mut results = Vec::new();
    for (negative, cfg) in [(ZERO_NEGATIVE, 1.0), (bad, 1.0), (bad, 2.0)] {
        let mut bench = bench();
        write_safetensors(
            &bench.dir.path().join("workflow/bad.safetensors"),
            &[
                ("context", vec![1, 4, 7], vec![0.5; 28]),
                ("pooled", vec![1, 32], vec![0.5; 32]),
            ],
        );
        let graph = bench.graph(parse(&workflow("", negative, cfg, true)), &[]);
        match bench.executor.run(&graph, &NoEvents, &CancelToken::new()) {
            Ok(_) => results.push(bench.latent("sampler")),
            Err(e) => {
                let message = error_chain(&e);
                assert!(cfg == 2.0, "{message}");
                assert!(
                    message.contains("node \"sampler\" (KSampler)")
                        && message.contains("context [1, 4, 7], expected [1, L, 48]"),
                    "{message}"
                );
            }
        }
    }
    assert_eq!(results.len(), 2);
    assert!(
        same(&results[0], &results[1]),
        "the negative changed a cfg-1 result"
    );
}

#[test]
fn cancelling_stops_the_sampler_between_steps() {
    let mut bench = bench();
    let graph = bench.graph(parse(&workflow("", ZERO_NEGATIVE, 1.0, true)), &[]);
    let cancel = CancelToken::new();
    let steps = Mutex::new(Vec::new());
    let events = |event: &Event| {
        if let Event::Progress {
            node_id,
            step,
            total,
        } = event
        {
            assert_eq!((node_id.as_str(), *total), ("sampler", 4));
            steps.lock().unwrap().push(*step);
            if *step == 2 {
                cancel.cancel();
            }
        }
    };
    let result = bench.executor.run(&graph, &events, &cancel);
    assert!(
        matches!(&result, Err(ExecError::Cancelled { node_id: Some(id) }) if id == "sampler"),
        "{result:?}"
    );
    assert_eq!(
        *steps.lock().unwrap(),
        vec![1, 2],
        "no model call after the cancel"
    );
    assert!(
        bench.executor.outputs_of("sampler").is_none(),
        "a cancelled sampler caches nothing"
    );
    assert!(bench.pngs().is_empty());
}

#[test]
fn clip_text_encode_flux_sends_each_prompt_to_its_encoder() {
    let c = case("prompt");
    let (positive, negative) = (
        c["positive"].as_str().unwrap(),
        c["negative"].as_str().unwrap(),
    );
    let mut bench = Bench::flux("pipeline/flux_prompt.gguf");
    let source = format!(
        r#"(version: 1, nodes: {{
            "clip": (type: "DualCLIPLoader", params: {{ "clip_name1": "clip_l.gguf", "clip_name2": "t5-v1_1-xxl-encoder-Q8_0.gguf" }}),
            "split": (type: "CLIPTextEncodeFlux", inputs: {{ "clip": "clip" }}, params: {{ "clip_l": {negative:?}, "t5xxl": {positive:?}, "guidance": 2.5 }}),
            "unet": (type: "UnetLoaderGGUF", params: {{ "unet_name": "flux1-dev-Q8_0.gguf" }}),
            "latent": (type: "EmptySD3LatentImage", params: {{ "width": 16, "height": 16 }}),
            "sampler": (type: "KSampler", inputs: {{ "model": "unet", "positive": "split", "negative": "split", "latent_image": "latent" }}, params: {{ "steps": 1, "cfg": 1.0 }}),
            "offload": (type: "OffloadModel", inputs: {{ "model": "unet", "latent": "sampler" }}),
        }})"#
    );
    let graph = bench.graph(parse(&source), &[]);
    bench.run(&graph, &NoEvents);
    let Value::Conditioning(split) = bench.output("split", 0) else {
        panic!("split")
    };
    let entry = &split.entries[0];
    assert_eq!(entry.options.get("guidance"), Some(&2.5));
    let refs = references();
    // CLIP-L got the negative text (its pooled output), T5 the positive (the context).
    assert_close(
        "t5xxl prompt",
        entry.context.clone(),
        reference(&refs, "prompt.positive.context"),
        1e-4,
    );
    assert_close(
        "clip_l prompt",
        entry.pooled.clone().unwrap(),
        reference(&refs, "prompt.negative.pooled"),
        1e-4,
    );
    let Value::Object(clip) = bench.output("clip", 0) else {
        panic!("clip")
    };
    let encoders = clip.downcast_arc::<TextEncoders<B>>().unwrap();
    assert_eq!(encoders.patchers().len(), 2);
    // Issue 7: once the run's last encode node has finished, the encoders leave the device; the
    // diffusion model, still the sampler's, was loaded after them and stays until OffloadModel.
    assert!(
        encoders.patchers().iter().all(|p| p.device_bytes() == 0),
        "encoders released after their last use"
    );
    assert!(encoders.patchers().iter().all(|p| p.full_bytes() > 0));
}

#[test]
fn save_image_embeds_the_runs_text_chunks() {
    let mut bench = bench();
    let source = workflow("", ZERO_NEGATIVE, 1.0, true);
    let chunks = vec![
        ("workflow".to_owned(), source.clone()),
        ("parameters".to_owned(), "sampler.seed=42".to_owned()),
    ];
    bench
        .executor
        .env_mut()
        .services
        .insert(Arc::new(PngTextChunks(chunks)));
    let graph = bench.graph(parse(&source), &[]);
    bench.run(&graph, &NoEvents);
    let text = read_png_text(&std::fs::read(&bench.pngs()[0]).unwrap()).unwrap();
    assert_eq!(
        text,
        vec![
            ("workflow".to_owned(), source),
            ("parameters".to_owned(), "sampler.seed=42".to_owned())
        ]
    );
}

/// Runs `nodes` (RON node entries) and returns the error, as the CLI prints it.
fn failure(bench: &mut Bench, nodes: &str) -> String {
    let graph = bench.graph(parse(&format!("(version: 1, nodes: {{ {nodes} }})")), &[]);
    match bench.executor.run(&graph, &NoEvents, &CancelToken::new()) {
        Ok(_) => panic!("ran: {nodes}"),
        Err(e) => error_chain(&e),
    }
}

#[test]
fn loaders_name_the_files_they_cannot_use() {
    let mut bench = bench();
    let models = bench.dir.path().join("models");
    let as_model = |loader: &str| {
        format!(r#""x": {loader}, "y": (type: "OffloadModel", inputs: {{ "model": "x" }})"#)
    };
    let as_vae = |loader: &str| {
        format!(
            r#""x": {loader}, "latent": (type: "EmptySD3LatentImage", params: {{ "width": 16, "height": 16 }}),
               "d": (type: "VAEDecode", inputs: {{ "samples": "latent", "vae": "x" }}), "y": (type: "SaveImage", inputs: {{ "images": "d" }})"#
        )
    };
    let as_clip = |loader: &str| {
        format!(
            r#""x": {loader}, "e": (type: "CLIPTextEncode", inputs: {{ "clip": "x" }}, params: {{ "text": "a" }}),
               "unet": (type: "UnetLoaderGGUF", params: {{ "unet_name": "flux1-dev-Q8_0.gguf" }}),
               "latent": (type: "EmptySD3LatentImage", params: {{ "width": 16, "height": 16 }}),
               "s": (type: "KSampler", inputs: {{ "model": "unet", "positive": "e", "negative": "e", "latent_image": "latent" }}, params: {{ "steps": 1 }}),
               "y": (type: "OffloadModel", inputs: {{ "model": "unet", "latent": "s" }})"#
        )
    };
    let missing = failure(
        &mut bench,
        &as_model(r#"(type: "UnetLoaderGGUF", params: { "unet_name": "flux1-schnell.gguf" })"#),
    );
    for tried in [
        "diffusion_models/flux1-schnell.gguf",
        "unet/flux1-schnell.gguf",
    ] {
        assert!(
            missing.contains(&models.join(tried).display().to_string()),
            "{missing}"
        );
    }
    assert!(
        missing.starts_with("node \"x\" (UnetLoaderGGUF)"),
        "{missing}"
    );

    let vae_path = models.join("vae/ae.safetensors").display().to_string();
    let wrong = failure(
        &mut bench,
        &as_model(&format!(
            r#"(type: "UnetLoaderGGUF", params: {{ "unet_name": {vae_path:?} }})"#
        )),
    );
    assert!(
        wrong.contains(&vae_path)
            && wrong.contains("an AutoencoderKL (VAE)")
            && wrong.contains("supported: flux"),
        "{wrong}"
    );

    let unet_path = models
        .join("diffusion_models/flux1-dev-Q8_0.gguf")
        .display()
        .to_string();
    let not_vae = failure(
        &mut bench,
        &as_vae(&format!(
            r#"(type: "VAELoader", params: {{ "vae_name": {unet_path:?} }})"#
        )),
    );
    assert!(
        not_vae.contains(&unet_path) && not_vae.contains("no AutoencoderKL tensors"),
        "{not_vae}"
    );

    let two_clips = failure(
        &mut bench,
        &as_clip(
            r#"(type: "DualCLIPLoaderGGUF", params: { "clip_name1": "clip_l.gguf", "clip_name2": "clip_l.gguf" })"#,
        ),
    );
    assert!(
        two_clips.contains("clip_l.gguf") && two_clips.contains("both hold ClipL"),
        "{two_clips}"
    );

    let t5_alone = failure(
        &mut bench,
        &as_clip(
            r#"(type: "CLIPLoader", params: { "clip_name": "t5-v1_1-xxl-encoder-Q8_0.gguf" })"#,
        ),
    );
    assert!(
        t5_alone.contains("t5-v1_1-xxl-encoder-Q8_0.gguf")
            && t5_alone.contains("needs a CLIP-L file"),
        "{t5_alone}"
    );
}
