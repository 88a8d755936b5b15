//! The same Flux run with its DiT dequantized-resident and quantized-resident, through a memory
//! manager as `weft run` has one. On the CPU both forms compute with the CPU dequantizer's values,
//! so the decoded image is identical bit for bit; the quantized-resident DiT holds its blocks as
//! stored (Q8_0, Q4_0, Q5_1 in this fixture), not f32 copies.
use super::Bench;
use super::txt2img::FROM_EMBEDDINGS;
use burn::tensor::DType;
use std::sync::Arc;
use weft_engine::exec::NoEvents;
use weft_engine::memory::{MemoryManager, MemoryPolicy, ResidencyChoice};
use weft_engine::node::Value;
use weft_engine::patcher::{BurnDevice, ModelHandle, WeightFormat};
use weft_tests::B;

/// The decoded image, and the form and full-load bytes of the DiT's patcher.
fn run(residency: ResidencyChoice, capacity: Option<u64>) -> (Vec<f32>, WeightFormat, u64) {
    let (image, patcher) = run_with(residency, capacity, None);
    (image, patcher.options().format, patcher.full_bytes())
}

/// [`FROM_EMBEDDINGS`] with the DiT in `residency` under `capacity`, through
/// `LoraLoaderModelOnly` with the fixture LoRA at `lora` strength when given: the decoded image
/// and the sampled model's patcher.
fn run_with(
    residency: ResidencyChoice,
    capacity: Option<u64>,
    lora: Option<f64>,
) -> (Vec<f32>, weft_engine::patcher::ModelPatcher<B>) {
    let mut bench = Bench::flux("flux/dev.gguf");
    bench.input("pipeline/embeddings.safetensors", "embeddings.safetensors");
    let mut workflow = FROM_EMBEDDINGS.to_owned();
    let mut sampled = "unet";
    if let Some(strength) = lora {
        super::nodes::write_detail_lora(&bench.dir.path().join("models/loras/detail.safetensors"));
        let unet = r#""model": (type: "ModelSamplingFlux", inputs: { "model": "unet" }"#;
        assert!(workflow.contains(unet));
        workflow = workflow.replace(
            unet,
            &format!(
                r#""lora": (type: "LoraLoaderModelOnly", inputs: {{ "model": "unet" }}, params: {{ "lora_name": "detail.safetensors", "strength_model": {strength:?} }}),
        "model": (type: "ModelSamplingFlux", inputs: {{ "model": "lora" }}"#
            ),
        );
        sampled = "lora";
    }
    let manager = Arc::new(MemoryManager::<B>::new(
        Arc::new(BurnDevice::host(Default::default())),
        MemoryPolicy {
            residency,
            capacity,
            reserve_bytes: 0,
            ..Default::default()
        },
    ));
    bench.executor.env_mut().services.insert(manager);
    let graph = bench.graph(super::parse(&workflow), &[]);
    bench.run(&graph, &NoEvents);
    let image = bench
        .image("decode")
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let Value::Object(model) = bench.output(sampled, 0) else {
        panic!("{sampled}: a MODEL")
    };
    let model = model
        .downcast_arc::<ModelHandle<B>>()
        .expect("a ModelHandle");
    (image, model.patcher().clone())
}

#[test]
fn a_quantized_resident_dit_draws_the_same_image_from_its_blocks() {
    let (dense_image, dense_format, dense_bytes) = run(ResidencyChoice::Dequantized, None);
    let (quant_image, quant_format, quant_bytes) = run(ResidencyChoice::Quantized, None);
    assert_eq!(dense_format, WeightFormat::Dequantized);
    assert_eq!(quant_format, WeightFormat::AsStored);
    assert_eq!(quant_image, dense_image);
    // 490,688 parameters: 1.96 MB as f32; the file's tensors are 487.62 KiB.
    assert_eq!(dense_bytes, 490_688 * 4);
    assert_eq!(quant_bytes, 499_328, "the file's tensor bytes, as stored");
}

#[test]
fn auto_keeps_the_dit_quantized_when_its_f32_copy_does_not_fit_the_budget() {
    // 2.2 MB of room: the blocks (0.5 MB) fit, the 1.96 MB f32 copy with its activations
    // (a sixth more) does not.
    let (image, format, _) = run(ResidencyChoice::Auto, Some(2_200_000));
    assert_eq!(format, WeightFormat::AsStored);
    let (roomy_image, roomy_format, _) = run(ResidencyChoice::Auto, Some(1 << 30));
    assert_eq!(roomy_format, WeightFormat::Dequantized);
    assert_eq!(image, roomy_image);
}

/// A LoRA on a quantized-resident DiT runs beside the blocks (y = W·x + s·B(A·x)): no weight is
/// dequantized or copied for it, and the image matches the LoRA merged into the dequantized
/// weights within f32 rounding.
#[test]
fn a_lora_on_a_quantized_resident_dit_is_a_side_product_equal_to_merging() {
    let (merged, dense) = run_with(ResidencyChoice::Dequantized, None, Some(0.8));
    let (side, quantized) = run_with(ResidencyChoice::Quantized, None, Some(0.8));
    let (plain, _) = run_with(ResidencyChoice::Quantized, None, None);
    assert_eq!(dense.options().format, WeightFormat::Dequantized);
    assert_eq!(quantized.options().format, WeightFormat::AsStored);
    assert_eq!(quantized.patches().len(), 2, "both LoRA modules matched");
    // The LoRA costs no device copy: the full load is the file's tensor bytes, as without it.
    assert_eq!(quantized.full_bytes(), 499_328);
    let qkv = quantized
        .side_updates("double_blocks.0.img_attn.qkv.weight")
        .unwrap();
    assert_eq!(qkv.len(), 1);
    assert_eq!((qkv[0].rank, qkv[0].rows.clone()), (4, 0..192));
    // 0.8 · alpha 2 / rank 4.
    assert!((qkv[0].scale - 0.4).abs() < 1e-6, "{}", qkv[0].scale);
    let k = quantized
        .side_updates("single_blocks.1.linear1.weight")
        .unwrap();
    assert_eq!(
        (k.len(), k[0].rows.clone()),
        (1, 64..128),
        "the to_k slice of linear1"
    );
    // Merged (dense) LoRAs stay baked in: nothing on the side.
    assert!(
        dense
            .side_updates("double_blocks.0.img_attn.qkv.weight")
            .unwrap()
            .is_empty()
    );

    let diff = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    // Measured: the LoRA moves the image by 3.4e-4; the two forms differ by 7e-7.
    assert!(diff(&side, &plain) > 1e-4, "the LoRA changed nothing");
    let off = diff(&side, &merged);
    assert!(off < 2e-5, "side product vs merged LoRA: max |diff| {off}");
}
