//! The Flux DiT against diffusers' FluxTransformer2DModel (fixtures: tests/fixtures/flux, made by
//! tools/gen_flux_fixtures.py): dev from a GGUF of mixed Q8_0/Q4_0/Q5_1/BF16/F16/F32 tensors,
//! schnell from a GGUF whose names carry `model.diffusion_model.`.
use super::{Doctored, assert_close, open, reference, values};
use weft_engine::formats::ModelFile;
use weft_models::ModelError;
use weft_models::flux::{Flux, FluxConditioning, FluxConfig, ids_from_tensor, image_ids};
use weft_tests::B;

/// Relative tolerance (see `assert_close`). Measured on the tiny configs: dev 5.8e-6 (its
/// guidance angles reach 3500 rad, where one f32 ulp is 2.4e-4 rad), schnell 1.5e-6. A wrong
/// mapping is O(1): swapping the final layer's shift and scale gives 0.70.
const REL: f32 = 1e-4;

fn load(file: &ModelFile) -> Flux<B> {
    Flux::load(file, &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn run_against_reference(variant: &str, guidance: bool) -> f32 {
    let model = load(&open(&format!("flux/{variant}.gguf")));
    let r = open("flux/reference.safetensors");
    let cond = FluxConditioning {
        context: reference(&r, "context"),
        y: reference(&r, "y"),
        guidance: guidance.then(|| values(&r, "guidance")),
    };
    let out = model
        .forward_latent(reference(&r, "x"), &values(&r, "timesteps"), &cond)
        .unwrap();
    assert_close(
        &format!("flux {variant}"),
        out,
        reference(&r, &format!("{variant}.out")),
        REL,
    )
}

#[test]
fn flux_dev_gguf_matches_diffusers() {
    run_against_reference("dev", true);
}

#[test]
fn flux_schnell_prefixed_gguf_matches_diffusers() {
    run_against_reference("schnell", false);
}

#[test]
fn flux_config_comes_from_the_weights() {
    let dev = load(&open("flux/dev.gguf"));
    let want = FluxConfig {
        in_channels: 64,
        out_channels: 64,
        hidden: 64,
        heads: 2,
        head_dim: 32,
        mlp_hidden: 256,
        context_dim: 48,
        vec_dim: 32,
        depth: 2,
        depth_single: 2,
        guidance_embed: true,
        qkv_bias: true,
        axes_dim: [4, 14, 14],
        theta: 10_000.0,
    };
    assert_eq!(dev.config(), &want);
    let schnell = load(&open("flux/schnell.gguf"));
    assert_eq!(
        schnell.config(),
        &FluxConfig {
            guidance_embed: false,
            ..want
        }
    );
}

#[test]
fn flux_image_ids_match_flux_pipeline() {
    let r = open("flux/reference.safetensors");
    assert_eq!(
        image_ids(4, 6),
        ids_from_tensor::<B>(reference(&r, "img_ids")).unwrap()
    );
}

#[test]
fn flux_key_set_detection_without_declared_architecture() {
    let file = open("flux/schnell.gguf");
    let source = Doctored {
        architecture: Some(None),
        ..Doctored::new(&file)
    };
    Flux::<B>::load(&source, &Default::default()).unwrap();
}

#[test]
fn flux_odd_latent_is_padded_and_cropped() {
    let model = load(&open("flux/schnell.gguf"));
    let r = open("flux/reference.safetensors");
    let x = reference::<4>(&r, "x").slice([0..1, 0..16, 0..7, 0..5]);
    let cond = FluxConditioning {
        context: reference::<3>(&r, "context").slice([0..1, 0..8, 0..48]),
        y: reference::<2>(&r, "y").slice([0..1, 0..32]),
        guidance: None,
    };
    let out = model.forward_latent(x, &[0.5], &cond).unwrap();
    assert_eq!(out.dims(), [1, 16, 7, 5]);
}

fn load_error(source: &Doctored) -> String {
    match Flux::<B>::load(source, &Default::default()) {
        Ok(_) => panic!("a doctored file loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn flux_other_architecture_is_an_error_listing_supported() {
    let file = open("flux/dev.gguf");
    let err = load_error(&Doctored {
        architecture: Some(Some("sdxl")),
        ..Doctored::new(&file)
    });
    assert!(
        err.contains("dev.gguf") && err.contains("\"sdxl\"") && err.contains("supported: flux"),
        "{err}"
    );
}

#[test]
fn flux_missing_tensor_names_file_and_tensor() {
    let file = open("flux/schnell.gguf");
    let hidden = "model.diffusion_model.single_blocks.1.linear2.weight";
    let err = load_error(&Doctored {
        hide: Some(hidden),
        ..Doctored::new(&file)
    });
    assert!(
        err.contains("schnell.gguf") && err.contains(hidden),
        "{err}"
    );
}

#[test]
fn flux_wrong_shape_names_file_tensor_and_both_shapes() {
    let file = open("flux/dev.gguf");
    let name = "double_blocks.1.txt_mlp.2.weight";
    let err = load_error(&Doctored {
        reshape: Some((name, vec![64, 128])),
        ..Doctored::new(&file)
    });
    assert!(
        err.contains("dev.gguf")
            && err.contains(name)
            && err.contains("[64, 128]")
            && err.contains("[64, 256]"),
        "{err}"
    );
}

#[test]
fn flux_bad_inputs_are_errors() {
    let model = load(&open("flux/dev.gguf"));
    let r = open("flux/reference.safetensors");
    let cond = FluxConditioning {
        context: reference(&r, "context"),
        y: reference(&r, "y"),
        guidance: None,
    };
    let x = reference::<4>(&r, "x");
    let err = model
        .forward_latent(x.clone(), &[0.5, 0.5], &cond)
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Input { .. }) && err.to_string().contains("guidance"),
        "{err}"
    );
    let cond = FluxConditioning {
        guidance: Some(vec![3.5, 3.5]),
        ..cond
    };
    assert!(
        model.forward_latent(x.clone(), &[0.5], &cond).is_err(),
        "one timestep for a batch of two"
    );
    assert!(
        model
            .forward_latent(x.slice([0..2, 0..4, 0..8, 0..12]), &[0.5, 0.5], &cond)
            .is_err(),
        "4 channels"
    );
}

#[test]
fn a_vae_file_is_not_a_dit() {
    let err = match Flux::<B>::load(&open("vae/flux_vae.safetensors"), &Default::default()) {
        Ok(_) => panic!("a VAE loaded as Flux"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("flux_vae.safetensors")
            && err.contains("AutoencoderKL")
            && err.contains("supported: flux"),
        "{err}"
    );
}
