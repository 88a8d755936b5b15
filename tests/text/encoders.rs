//! CLIP-L and T5 encoders against transformers' CLIPTextModel / T5EncoderModel on tiny random
//! configs, from safetensors (transformers naming) and GGUF (CLIP: same names; T5: llama.cpp
//! names) with F32/F16/Q8_0 tensors. The GGUF references were computed by transformers from the
//! dequantized weights, so both sides see the same values.
//!
//! Tolerance: f32 on both sides, different summation orders (gemm blocking, softmax, norm
//! reductions) over 3 layers. Measured max |got - want| / max|want| (CPU, Flex): CLIP 1.8e-7 to
//! 3.8e-7, T5 7.8e-7 (12 tokens) and 1.6e-6 (150 tokens). The bound, 2e-5, leaves a 10x margin.
use super::fixture;
use crate::models::{assert_close, reference};
use burn::tensor::Tensor;
use weft_engine::formats::ModelFile;
use weft_models::text::t5::relative_bucket;
use weft_models::text::{ClipTextModel, T5Encoder, apply_token_weights};
use weft_tests::B;

const REL: f32 = 2e-5;

fn open(name: &str) -> ModelFile {
    ModelFile::open(fixture(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn ids(reference_file: &ModelFile, name: &str) -> Vec<Vec<u32>> {
    let t: Tensor<B, 2> = reference(reference_file, name);
    let [b, l] = t.dims();
    let v = t.into_data().to_vec::<f32>().unwrap();
    (0..b)
        .map(|i| v[i * l..(i + 1) * l].iter().map(|&x| x as u32).collect())
        .collect()
}

fn check_clip(model_file: &str, tag: &str) {
    let refs = open("reference.safetensors");
    let file = open(model_file);
    let device = Default::default();
    let model = ClipTextModel::<B>::load(&file, Some(4), &device).unwrap();
    assert_eq!(
        (
            model.config.hidden,
            model.config.layers,
            model.config.vocab_size
        ),
        (32, 3, 1000)
    );
    let ids = ids(&refs, "clip.ids");
    let out = model.forward(&ids, Some(-2)).unwrap();
    let name = |k: &str| format!("clip.{tag}.{k}");
    assert_close(
        &name("last"),
        out.last_hidden,
        reference(&refs, &name("last")),
        REL,
    );
    let penultimate = out.intermediate.unwrap();
    assert_close(
        &name("penultimate"),
        penultimate.clone(),
        reference(&refs, &name("penultimate")),
        REL,
    );
    assert_close(
        &name("penultimate_normed"),
        model.final_layer_norm(penultimate),
        reference(&refs, &name("penultimate_normed")),
        REL,
    );
    assert_close(
        &name("pooled"),
        out.pooled,
        reference(&refs, &name("pooled")),
        REL,
    );
}

#[test]
fn clip_safetensors_matches_transformers() {
    check_clip("clip_l.safetensors", "st");
}

#[test]
fn clip_gguf_matches_transformers() {
    check_clip("clip_l.gguf", "gguf");
}

fn check_t5(model_file: &str, tag: &str) {
    let refs = open("reference.safetensors");
    let file = open(model_file);
    let model = T5Encoder::<B>::load(&file, &Default::default()).unwrap();
    assert_eq!(
        (
            model.config.d_model,
            model.config.heads,
            model.config.layers,
            model.config.buckets
        ),
        (32, 4, 3, 32)
    );
    for input in ["short", "long"] {
        let got = model
            .forward(&ids(&refs, &format!("t5.ids_{input}")))
            .unwrap();
        let what = format!("t5.{tag}.{input}");
        assert_close(&what, got, reference(&refs, &what), REL);
    }
}

#[test]
fn t5_safetensors_matches_transformers() {
    check_t5("t5.safetensors", "st");
}

#[test]
fn t5_gguf_llama_cpp_names_match_transformers() {
    check_t5("t5.gguf", "gguf");
}

#[test]
fn t5_relative_buckets() {
    // transformers' T5Attention._relative_position_bucket(rp, bidirectional=True, num_buckets=32,
    // max_distance=128).tolist() (transformers 5.24) for
    // relative positions -200, -128, -20, -8, -1, 0, 1, 7, 8, 12, 64, 127, 128, 500.
    let want = [15, 15, 10, 8, 1, 0, 17, 23, 24, 25, 30, 31, 31, 31];
    let rel = [-200, -128, -20, -8, -1, 0, 1, 7, 8, 12, 64, 127, 128, 500];
    let got: Vec<usize> = rel.iter().map(|&r| relative_bucket(r, 32, 128)).collect();
    assert_eq!(got, want);
}

#[test]
fn token_weights_interpolate_from_the_empty_prompt() {
    // ComfyUI: z' = (z - z_empty) * w + z_empty for w != 1, z untouched where w == 1.
    let device = Default::default();
    let z = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &device).reshape([1, 3, 2]);
    let e = Tensor::<B, 1>::from_floats([0.5, 0.5, 1.0, 1.0, 2.0, 2.0], &device).reshape([1, 3, 2]);
    let out = apply_token_weights(z, e, &[1.0, 1.5, 0.0]).unwrap();
    assert_eq!(
        out.into_data().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 4.0, 5.5, 2.0, 2.0]
    );
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let file = open("t5.gguf");
    let doctored = crate::models::Doctored {
        hide: Some("enc.blk.1.ffn_up.weight"),
        ..crate::models::Doctored::new(&file)
    };
    let err = T5Encoder::<B>::load(&doctored, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("t5.gguf") && err.contains("enc.blk.1.ffn_up.weight"),
        "{err}"
    );
    let err = ClipTextModel::<B>::load(&file, None, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("t5.gguf") && err.contains("not a CLIP text encoder"),
        "{err}"
    );
}

#[test]
fn weighted_chunks_encode_as_comfyui() {
    // ComfyUI's encode_token_weights: an unweighted prompt is the plain forward pass; a weighted
    // one also encodes the empty prompt ([start, end, pad…]) and interpolates only weighted tokens.
    use weft_models::text::batch::{ChunkLayout, TokenChunk};
    use weft_models::text::encode::{empty_chunk_ids, encode_t5};
    let file = open("t5.gguf");
    let model = T5Encoder::<B>::load(&file, &Default::default()).unwrap();
    let layout = ChunkLayout {
        end: 1,
        pad: 0,
        ..ChunkLayout::flux_t5(8)
    };
    let ids: Vec<u32> = vec![17, 42, 99, 5, 1, 0, 0, 0];
    let plain = TokenChunk {
        ids: ids.clone(),
        weights: vec![1.0; 8],
    };
    let got = encode_t5(&model, std::slice::from_ref(&plain), &layout).unwrap();
    assert_eq!(
        got.to_data(),
        model.forward(std::slice::from_ref(&ids)).unwrap().to_data()
    );

    let weights = vec![1.0, 1.2, 1.2, 0.5, 1.0, 1.0, 1.0, 1.0];
    let weighted = TokenChunk {
        ids: ids.clone(),
        weights: weights.clone(),
    };
    let got = encode_t5(&model, &[weighted], &layout).unwrap();
    assert_eq!(empty_chunk_ids(&layout, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);
    let both = model.forward(&[ids, empty_chunk_ids(&layout, 8)]).unwrap();
    let z = both.clone().slice([0..1, 0..8, 0..32]);
    let e = both.slice([1..2, 0..8, 0..32]);
    let want = apply_token_weights(z.clone(), e, &weights).unwrap();
    assert_close("weighted T5 chunk", got.clone(), want, 0.0);
    // Tokens of weight 1.0 are the plain encoding of the batch, bit for bit.
    assert_eq!(
        got.slice([0..1, 0..1, 0..32]).to_data(),
        z.slice([0..1, 0..1, 0..32]).to_data()
    );
}
