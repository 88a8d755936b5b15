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
    let mut bench = Bench::flux("flux/dev.gguf");
    bench.input("pipeline/embeddings.safetensors", "embeddings.safetensors");
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
    let graph = bench.graph(super::parse(FROM_EMBEDDINGS), &[]);
    bench.run(&graph, &NoEvents);
    let image = bench
        .image("decode")
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let Value::Object(unet) = bench.output("unet", 0) else {
        panic!("unet: a MODEL")
    };
    let unet = unet
        .downcast_arc::<ModelHandle<B>>()
        .expect("a ModelHandle");
    let patcher = unet.patcher();
    (image, patcher.options().format, patcher.full_bytes())
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
