//! The built-in nodes that need no model, and the registry's own checks (plugin conflicts,
//! unregistered port types, schemas that disagree with their `Params`).
use burn::tensor::{Tensor, TensorData};
use weft_engine::exec::error_chain;
use weft_engine::node::{
    Inputs, NoParams, Node, NodeContext, NodeError, NodeSchema, Outputs, PortType, RunEnv, Value,
};
use weft_engine::registry::{NodeRegistry, Plugin};
use weft_nodes::image::{ImageBlend, ImageBlendParams};
use weft_tests::{B, Harness, TestPlugin, registry, workflow};

#[test]
fn every_schema_agrees_with_its_params_struct_and_defaults_fit() {
    let problems = registry(&TestPlugin::default()).self_check();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn two_plugins_registering_one_name_is_an_error_naming_both() {
    let err = NodeRegistry::<B>::from_plugins(&(weft_nodes::Builtin, weft_nodes::Builtin))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("node type \"EmptyImage\" is registered by both plugin \"weft-nodes\" and plugin \"weft-nodes\""),
        "{err}"
    );
}

#[test]
fn a_node_using_an_unregistered_port_type_is_an_error() {
    struct Stray;
    impl<Bk: burn::tensor::backend::Backend> Node<Bk> for Stray {
        type Params = NoParams;
        fn schema(&self) -> NodeSchema {
            NodeSchema::new("Stray").output("X", PortType::custom("NOBODY_REGISTERED_ME"))
        }
        fn run(
            &self,
            _: NoParams,
            _: Inputs<Bk>,
            _: &NodeContext<'_, Bk>,
        ) -> Result<Outputs<Bk>, NodeError> {
            Ok(Outputs::none())
        }
    }
    struct StrayPlugin;
    impl Plugin for StrayPlugin {
        fn name(&self) -> &str {
            "stray"
        }
        fn build<Bk: burn::tensor::backend::Backend>(&self, registry: &mut NodeRegistry<Bk>) {
            registry.register(Stray);
        }
    }
    let err = NodeRegistry::<B>::from_plugins(&StrayPlugin).err().unwrap();
    assert_eq!(
        err.to_string(),
        "node type \"Stray\" (plugin \"stray\") uses port type NOBODY_REGISTERED_ME, which no plugin registered"
    );
}

#[test]
fn empty_latents_have_comfyui_shapes() {
    let device = Default::default();
    let env = RunEnv::default();
    let ctx = NodeContext::<B>::new("latent", &device, &env);
    let params = weft_nodes::latent::EmptyLatentParams {
        width: 768,
        height: 512,
        batch_size: 2,
    };
    let out = weft_nodes::latent::EmptyLatentImage
        .run(params, Inputs::new(), &ctx)
        .unwrap();
    let Value::Latent(latent) = &out.values()[0] else {
        panic!("a latent")
    };
    assert_eq!(latent.samples.dims(), [2, 4, 64, 96]);
    assert_eq!(latent.samples.clone().abs().sum().into_scalar(), 0.0);
    let params = weft_nodes::latent::EmptyLatentParams {
        width: 100,
        height: 64,
        batch_size: 1,
    };
    let out = weft_nodes::latent::EmptySD3LatentImage
        .run(params, Inputs::new(), &ctx)
        .unwrap();
    let Value::Latent(latent) = &out.values()[0] else {
        panic!("a latent")
    };
    assert_eq!(
        latent.samples.dims(),
        [1, 16, 8, 12],
        "sizes floor to multiples of 8, as ComfyUI's // 8"
    );
}

fn pixel(value: f32) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(vec![value; 3], [1, 1, 1, 3]),
        &Default::default(),
    )
}

fn blend(a: f32, b: f32, mode: &str, factor: f64) -> f32 {
    let device = Default::default();
    let env = RunEnv::default();
    let ctx = NodeContext::<B>::new("blend", &device, &env);
    let inputs = Inputs::new()
        .with("image1", Value::Image(pixel(a)))
        .with("image2", Value::Image(pixel(b)));
    let params = ImageBlendParams {
        blend_factor: factor,
        blend_mode: mode.to_owned(),
    };
    let out = ImageBlend.run(params, inputs, &ctx).unwrap();
    let Value::Image(image) = &out.values()[0] else {
        panic!("an image")
    };
    image.to_data().to_vec::<f32>().unwrap()[0]
}

#[test]
fn image_blend_modes_follow_comfyui_formulas() {
    let close = |x: f32, y: f32| assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    let (a, b) = (0.3f32, 0.8f32);
    close(blend(a, b, "normal", 1.0), b);
    close(blend(a, b, "multiply", 1.0), a * b);
    close(blend(a, b, "screen", 1.0), 1.0 - (1.0 - a) * (1.0 - b));
    close(blend(a, b, "overlay", 1.0), 2.0 * a * b);
    close(blend(0.7, b, "overlay", 1.0), 1.0 - 2.0 * 0.3 * (1.0 - b));
    // soft_light, b > 0.5, a > 0.25: a + (2b - 1)(sqrt(a) - a)
    close(
        blend(a, b, "soft_light", 1.0),
        a + (2.0 * b - 1.0) * (a.sqrt() - a),
    );
    // soft_light, b <= 0.5: a - (1 - 2b) a (1 - a)
    close(
        blend(a, 0.2, "soft_light", 1.0),
        a - (1.0 - 0.4) * a * (1.0 - a),
    );
    // difference is img1 - img2 (not absolute), clamped at 0.
    close(blend(a, b, "difference", 1.0), 0.0);
    close(blend(b, a, "difference", 1.0), b - a);
    close(blend(a, b, "multiply", 0.25), 0.75 * a + 0.25 * a * b);
}

#[test]
fn image_blend_refuses_images_of_different_sizes() {
    let device = Default::default();
    let env = RunEnv::default();
    let ctx = NodeContext::<B>::new("blend", &device, &env);
    let big = Tensor::<B, 4>::zeros([1, 2, 2, 3], &device);
    let inputs = Inputs::new()
        .with("image1", Value::Image(big))
        .with("image2", Value::Image(pixel(0.5)));
    let params = ImageBlendParams {
        blend_factor: 0.5,
        blend_mode: "normal".to_owned(),
    };
    let err = ImageBlend.run(params, inputs, &ctx).err().unwrap();
    assert!(
        err.to_string()
            .starts_with("input \"image2\": size [1, 1, 1, 3] differs"),
        "{err}"
    );
}

#[test]
fn saved_images_load_back_with_their_colour_and_numbering_continues() {
    let mut h = Harness::new();
    let save = workflow(
        r#"
        "img": (type: "EmptyImage", params: { "width": 5, "height": 3, "batch_size": 2, "color": 0x336699 }),
        "save": (type: "SaveImage", inputs: { "images": "img" }, params: { "filename_prefix": "sub/test" }),
        "#,
    );
    h.run(&save);
    h.run(&save);
    let dir = h.dir.path().join("output/sub");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "test_00001_.png",
            "test_00002_.png",
            "test_00003_.png",
            "test_00004_.png"
        ],
        "SaveImage always runs; no partial files left"
    );

    let load = workflow(
        r#"
        "load": (type: "LoadImage", params: { "image": "output/sub/test_00003_.png" }),
        "save": (type: "SaveImage", inputs: { "images": "load.IMAGE" }, params: { "filename_prefix": "again" }),
        "#,
    );
    h.run(&load);
    let outputs = h.executor.outputs_of("load").unwrap();
    let (Value::Image(image), Value::Mask(mask)) = (&outputs[0], &outputs[1]) else {
        panic!("IMAGE and MASK")
    };
    assert_eq!(image.dims(), [1, 3, 5, 3]);
    assert_eq!(mask.dims(), [1, 3, 5]);
    let rgb = image.to_data().to_vec::<f32>().unwrap();
    assert_eq!(
        &rgb[..3],
        &[
            0x33 as f32 / 255.0,
            0x66 as f32 / 255.0,
            0x99 as f32 / 255.0
        ]
    );
    assert!(
        mask.to_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|&m| m == 0.0)
    );
    // The loader's fingerprint is the file: rewriting it reruns the loader, leaving it alone does not.
    assert_eq!(h.run(&load).cached, ["load"]);
    std::fs::copy(dir.join("test_00001_.png"), dir.join("test_00003_.png")).unwrap();
    let bigger = std::fs::read(dir.join("test_00003_.png")).unwrap();
    std::fs::write(
        dir.join("test_00003_.png"),
        [bigger.as_slice(), b"trailing bytes change the size"].concat(),
    )
    .unwrap();
    assert_eq!(h.run(&load).executed_ids(), ["load", "save"]);
}

#[test]
fn save_image_refuses_to_write_outside_the_output_folder() {
    let mut h = Harness::new();
    let graph = h.graph(&workflow(
        r#"
        "img": (type: "EmptyImage", params: { "width": 2, "height": 2 }),
        "save": (type: "SaveImage", inputs: { "images": "img" }, params: { "filename_prefix": "../escape" }),
        "#,
    ));
    let err = h.run_graph(&graph).unwrap_err();
    assert_eq!(
        error_chain(&err),
        "node \"save\" (SaveImage): output path \"../escape\" must be relative and stay inside the output folder"
    );
    assert!(!h.dir.path().join("escape_00001_.png").exists());
}

#[test]
fn load_image_of_a_missing_file_names_the_node_and_the_path() {
    let mut h = Harness::new();
    let graph = h.graph(&workflow(
        r#"
        "load": (type: "LoadImage", params: { "image": "missing.png" }),
        "save": (type: "SaveImage", inputs: { "images": "load.IMAGE" }),
        "#,
    ));
    let err = error_chain(&h.run_graph(&graph).unwrap_err());
    let expected = format!(
        "node \"load\" (LoadImage): {}: ",
        h.dir.path().join("missing.png").display()
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn primitives_feed_parameters() {
    let mut h = Harness::new();
    h.run(&workflow(
        r#"
        "w": (type: "PrimitiveInt", params: { "value": 4 }),
        "img": (type: "EmptyImage", inputs: { "width": "w", "height": "w" }),
        "save": (type: "SaveImage", inputs: { "images": "img" }),
        "#,
    ));
    let bitmap = weft_nodes::image_io::decode_png(
        &std::fs::read(h.dir.path().join("output/weft_00001_.png")).unwrap(),
    )
    .unwrap();
    assert_eq!((bitmap.width, bitmap.height), (4, 4));
}

#[test]
fn model_files_are_found_in_comfyui_folders_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(first.join("unet")).unwrap();
    std::fs::create_dir_all(second.join("diffusion_models")).unwrap();
    std::fs::write(second.join("diffusion_models/flux.gguf"), b"").unwrap();
    std::fs::write(first.join("unet/flux.gguf"), b"").unwrap();
    let env = RunEnv {
        models_dirs: vec![first.clone(), second.clone()],
        base_dir: dir.path().to_owned(),
        ..RunEnv::default()
    };
    let device = Default::default();
    let ctx = NodeContext::<B>::new("loader", &device, &env);
    assert_eq!(
        ctx.find_model(&["diffusion_models", "unet"], "flux.gguf")
            .unwrap(),
        first.join("unet/flux.gguf")
    );
    std::fs::write(dir.path().join("local.gguf"), b"").unwrap();
    assert_eq!(
        ctx.find_model(&["unet"], "local.gguf").unwrap(),
        dir.path().join("local.gguf")
    );
    let err = ctx
        .find_model(&["vae"], "missing.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model file \"missing.safetensors\" not found; looked for "),
        "{err}"
    );
    assert!(
        err.contains(&second.join("vae/missing.safetensors").display().to_string()),
        "{err}"
    );
}
