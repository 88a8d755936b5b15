//! Model memory: the mmap cache (one mapping per file), the model patcher (loads equal to the
//! file, offload that frees, clones, LoRA patch/unpatch, a device copy that cannot write to the
//! base), the memory manager's policies, the offload and release nodes, the route of weights a
//! device dequantizes itself, and `weft bench offload` on a ~200 MB model for 20 cycles. Models
//! are generated into temporary folders at test time.
mod bench;
mod cpu_quantized;
mod lora;
mod manager;
mod mapping;
mod nodes;
mod on_device;
mod patcher;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use weft_engine::formats::gguf::{GgmlType, GgufWriter};
use weft_engine::patcher::{BurnDevice, LoadOptions, ModelPatcher, WeightDevice};
use weft_engine::weights::{CachePolicy, MmapCache, WeightSource};
use weft_tests::B;

/// The CPU device with every weight copied (the patcher's plain semantics; the CLI leaves quantized
/// blocks in the mapping: `BurnDevice::host_mapped`).
pub fn cpu() -> Arc<dyn WeightDevice<B>> {
    Arc::new(BurnDevice::host(Default::default()))
}

/// Deterministic values in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The small model every patcher test uses: Flux-like names, one tensor of each stored type the
/// patcher treats differently, and a 4-D (conv) weight.
pub const MODEL_TENSORS: [(&str, GgmlType, &[u64]); 8] = [
    (
        "double_blocks.0.img_attn.qkv.weight",
        GgmlType::Q8_0,
        &[96, 64],
    ),
    ("double_blocks.0.img_attn.qkv.bias", GgmlType::F32, &[96]),
    (
        "double_blocks.0.img_attn.proj.weight",
        GgmlType::F16,
        &[64, 64],
    ),
    (
        "double_blocks.0.img_mod.lin.weight",
        GgmlType::BF16,
        &[32, 64],
    ),
    ("single_blocks.0.linear1.weight", GgmlType::Q5_1, &[16, 256]),
    (
        "single_blocks.0.norm.query_norm.scale",
        GgmlType::F32,
        &[64],
    ),
    ("final_layer.linear.weight", GgmlType::Q4_0, &[16, 64]),
    ("img_in.conv.weight", GgmlType::F16, &[8, 4, 3, 3]),
];

/// Writes the small model to `dir/name`.
pub fn small_model(dir: &Path, name: &str) -> PathBuf {
    let mut writer = GgufWriter::new();
    for (i, (tensor, ty, shape)) in MODEL_TENSORS.iter().enumerate() {
        let n = shape.iter().product::<u64>() as usize;
        writer
            .add_tensor(*tensor, *ty, shape, &values(i as u64 + 1, n))
            .unwrap();
    }
    let path = dir.join(name);
    writer.write_file(&path).unwrap();
    path
}

/// A patcher over `path` through a cache of its own (so that tests do not share mappings).
pub fn patcher(cache: &MmapCache, path: &Path, options: LoadOptions) -> ModelPatcher<B> {
    ModelPatcher::new(
        Arc::new(WeightSource::open_in(cache, path).unwrap()),
        cpu(),
        options,
    )
    .unwrap()
}

/// A cache with the default policy, for one test.
pub fn cache() -> MmapCache {
    MmapCache::new(CachePolicy::default())
}
