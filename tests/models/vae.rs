//! The AutoencoderKL against diffusers (fixtures: tests/fixtures/vae, made by
//! tools/gen_flux_fixtures.py): a Flux-style VAE from f32 safetensors and an SD-style one (quant
//! convs, `first_stage_model.` prefix) from a GGUF of F16 and F32 tensors.
use super::{Doctored, assert_close, open, reference};
use burn::tensor::Tensor;
use weft_models::LatentFormat;
use weft_models::vae::{Vae, VaeConfig};
use weft_tests::B;

/// Relative tolerance (see `assert_close`); measured 1.2e-6 to 1.9e-6 for all four directions.
const REL: f32 = 1e-4;

fn load(rel: &str) -> Vae<B> {
    Vae::load(&open(rel), &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn flux_vae_decode_matches_diffusers() {
    let vae = load("vae/flux_vae.safetensors");
    let r = open("vae/reference.safetensors");
    let out = vae.decode(reference(&r, "flux.latent")).unwrap();
    assert_close("flux vae decode", out, reference(&r, "flux.decoded"), REL);
}

#[test]
fn flux_vae_encode_matches_diffusers() {
    let vae = load("vae/flux_vae.safetensors");
    let r = open("vae/reference.safetensors");
    let out = vae.encode(reference(&r, "image")).unwrap();
    assert_close("flux vae encode", out, reference(&r, "flux.mean"), REL);
}

#[test]
fn sd_vae_gguf_decode_matches_diffusers() {
    let vae = load("vae/sd_vae.gguf");
    let r = open("vae/reference.safetensors");
    let out = vae.decode(reference(&r, "sd.latent")).unwrap();
    assert_close("sd vae decode", out, reference(&r, "sd.decoded"), REL);
}

#[test]
fn sd_vae_gguf_encode_matches_diffusers() {
    let vae = load("vae/sd_vae.gguf");
    let r = open("vae/reference.safetensors");
    let out = vae.encode(reference(&r, "image")).unwrap();
    assert_close("sd vae encode", out, reference(&r, "sd.mean"), REL);
}

#[test]
fn vae_config_comes_from_the_weights() {
    let flux = load("vae/flux_vae.safetensors");
    let want = VaeConfig {
        image_channels: 3,
        z_channels: 16,
        channels: vec![32, 64],
        encoder_stem: 32,
        encoder_blocks: 1,
        decoder_blocks: 2,
        quant_conv: false,
    };
    assert_eq!(flux.config(), &want);
    assert_eq!(flux.latent_format(), Some(LatentFormat::FLUX));
    let sd = load("vae/sd_vae.gguf");
    assert_eq!(
        sd.config(),
        &VaeConfig {
            z_channels: 4,
            quant_conv: true,
            ..want
        }
    );
    assert_eq!(sd.latent_format(), Some(LatentFormat::SD15));
}

#[test]
fn latent_format_scales_and_shifts() {
    let x = Tensor::<B, 1>::from_floats([0.1159, 1.0], &Default::default());
    let inside = LatentFormat::FLUX
        .process_in(x.clone())
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(
        (inside[0]).abs() < 1e-7 && (inside[1] - (1.0 - 0.1159) * 0.3611).abs() < 1e-6,
        "{inside:?}"
    );
    let back = LatentFormat::FLUX
        .process_out(LatentFormat::FLUX.process_in(x))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!((back[1] - 1.0).abs() < 1e-6);
}

#[test]
fn a_dit_file_is_not_a_vae() {
    let err = Vae::<B>::load(&open("flux/dev.gguf"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dev.gguf") && err.contains("AutoencoderKL"),
        "{err}"
    );
}

#[test]
fn vae_wrong_shape_names_file_and_tensor() {
    let file = open("vae/flux_vae.safetensors");
    let name = "decoder.up.1.block.0.conv1.weight";
    let source = Doctored {
        reshape: Some((name, vec![64, 64, 1, 1])),
        ..Doctored::new(&file)
    };
    let err = Vae::<B>::load(&source, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("flux_vae.safetensors")
            && err.contains(name)
            && err.contains("[64, 64, 3, 3]"),
        "{err}"
    );
}

#[test]
fn vae_bad_latent_is_an_error() {
    let vae = load("vae/flux_vae.safetensors");
    let z = Tensor::<B, 4>::zeros([1, 4, 8, 8], &Default::default());
    assert!(vae.decode(z).is_err());
}
