//! Linear layers whose weight is held in another float type than the activations (the BF16
//! device copies of a CUDA load): on burn's path (burn-flex) an f32 input is multiplied by the
//! bf16 weight's values exactly, and a BF16 patcher hands linear layers its copies uncast.
use crate::memory::{cpu, values};
use burn::tensor::{DType, Tensor, TensorData};
use std::sync::Arc;
use weft_engine::formats::ModelFile;
use weft_engine::formats::gguf::{GgmlType, GgufWriter};
use weft_engine::patcher::{LoadOptions, ModelPatcher, WeightFormat};
use weft_engine::weights::{CachePolicy, MmapCache, WeightSource};
use weft_models::layers::Linear;
use weft_models::patcher_source::PatcherSource;
use weft_models::{TensorSource, Weights};
use weft_tests::B;

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn bf16_rounded(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect()
}

/// `x·Wᵀ + b` in f64, `x` [rows, d_in], `W` [d_out, d_in].
fn product(x: &[f32], w: &[f32], b: &[f32], d_in: usize) -> Vec<f64> {
    let (rows, d_out) = (x.len() / d_in, b.len());
    (0..rows * d_out)
        .map(|i| {
            let (r, o) = (i / d_out, i % d_out);
            let dot: f64 = (0..d_in)
                .map(|k| f64::from(x[r * d_in + k]) * f64::from(w[o * d_in + k]))
                .sum();
            dot + f64::from(b[o])
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn a_bf16_weight_multiplies_f32_inputs_by_its_rounded_values_in_f32() {
    let (d_in, d_out) = (16, 8);
    let w = values(21, d_out * d_in);
    let b = values(22, d_out);
    let x = values(23, 2 * 3 * d_in);
    let rounded = bf16_rounded(&w);
    assert!(
        rounded.iter().zip(&w).filter(|(r, w)| r != w).count() > w.len() / 2,
        "the fixture's weights are not bf16 values already"
    );

    let mixed = Linear::new(
        tensor(w.clone(), [d_out, d_in]).cast(DType::BF16),
        Some(tensor(b.clone(), [d_out])),
    );
    assert_eq!(mixed.dtype(), DType::BF16);
    let y = mixed.forward(tensor(x.clone(), [2, 3, d_in]));
    assert_eq!((y.dims(), y.dtype()), ([2, 3, d_out], DType::F32));
    let got = y.into_data().to_vec::<f32>().unwrap();

    // The same product as an all-f32 layer holding the rounded weights, bit for bit: the
    // weight's cast to f32 is exact.
    let f32_layer = Linear::new(
        tensor(rounded.clone(), [d_out, d_in]),
        Some(tensor(b.clone(), [d_out])),
    );
    let want = f32_layer
        .forward(tensor(x.clone(), [2, 3, d_in]))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(got, want);
    assert_close(
        "bf16 weight, f32 input",
        &got,
        &product(&x, &rounded, &b, d_in),
    );
    // And not the product of the unrounded weights: the rounding is visible at this size.
    let unrounded = product(&x, &w, &b, d_in);
    assert!(
        got.iter()
            .zip(&unrounded)
            .any(|(&g, &u)| (f64::from(g) - u).abs() > 1e-4),
        "the layer used f32 weights"
    );
}

#[test]
fn a_bf16_patcher_gives_linear_layers_its_bf16_copies_and_other_tensors_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut writer = GgufWriter::new();
    writer
        .add_tensor("lin.weight", GgmlType::Q8_0, &[8, 64], &values(31, 8 * 64))
        .unwrap();
    writer
        .add_tensor("lin.bias", GgmlType::F32, &[8], &values(32, 8))
        .unwrap();
    writer.write_file(&path).unwrap();
    let reference = ModelFile::open(&path).unwrap();
    let file_values = |name: &str| {
        reference
            .dequantize(reference.require(name).unwrap())
            .unwrap()
    };
    let cache = MmapCache::new(CachePolicy::default());
    let p = ModelPatcher::<B>::new(
        Arc::new(WeightSource::open_in(&cache, &path).unwrap()),
        cpu(),
        LoadOptions {
            format: WeightFormat::Dequantized,
            compute_dtype: DType::BF16,
        },
    )
    .unwrap();
    p.load(None).unwrap();

    let source = PatcherSource::new(&p);
    let device = Default::default();
    // `load` casts to f32; `load_matrix` hands out the resident bf16 copy as it is.
    let bias = source.load("lin.bias", &device).unwrap();
    assert_eq!(bias.dtype(), DType::F32);
    assert_eq!(
        bias.into_data().to_vec::<f32>().unwrap(),
        bf16_rounded(&file_values("lin.bias"))
    );
    let matrix = source.load_matrix("lin.weight", &device).unwrap();
    assert_eq!(matrix.dtype(), DType::BF16);
    assert_eq!(p.streamed(), 0, "resident copies, not streamed ones");

    let layer = Weights::new(&source, "", &device)
        .linear("lin", 64, 8)
        .unwrap();
    assert_eq!(layer.dtype(), DType::BF16);
    let x = values(33, 3 * 64);
    let got = layer
        .forward(tensor(x.clone(), [3, 64]))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let want = product(
        &x,
        &bf16_rounded(&file_values("lin.weight")),
        &bf16_rounded(&file_values("lin.bias")),
        64,
    );
    assert_close("Q8_0 loaded as bf16", &got, &want);
}
