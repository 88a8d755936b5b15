//! The load/offload cycle behind `weft bench offload`: load every weight of a file through a
//! [`ModelPatcher`], check it against the file, offload, and record memory after each cycle.
//! A library function so that the tests assert on exactly what the benchmark measures.
#![forbid(unsafe_code)]

use burn::tensor::backend::Backend;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use weft_engine::memory::proc;
use weft_engine::patcher::{
    LoadOptions, LoraKeyMap, ModelPatcher, PatchError, WeightDevice, lora_patches,
};
use weft_engine::weights::{MmapCache, WeightSource};

/// One load/offload cycle. Field names are the JSON of `weft bench offload --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OffloadCycle {
    /// From 1.
    pub cycle: usize,
    /// Wall time of the load (every weight uploaded, copies landed).
    pub load_s: f64,
    /// Wall time of the offload (copies dropped, memory given back).
    pub offload_s: f64,
    /// Bytes of device copies after the load.
    pub device_bytes_loaded: u64,
    /// After the offload: the device allocator's reserved bytes where the backend reports them
    /// (burn-cuda's pool), else the bytes of device copies the patcher still holds.
    pub device_bytes_after_offload: u64,
    /// `RssAnon` after the offload (0 where /proc is unavailable).
    pub rss_anon_after_offload: u64,
    /// `RssFile` after the offload.
    pub rss_file_after_offload: u64,
    /// Mappings of the file in this process after the offload.
    pub file_mappings: usize,
    /// Whether every device copy equaled the file (`--verify`); `null` when not checked.
    pub weights_match_file: Option<bool>,
}

/// The whole run. Field names are the JSON of `weft bench offload --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OffloadBench {
    /// The file's size.
    pub file_bytes: u64,
    /// One entry per cycle.
    pub cycles: Vec<OffloadCycle>,
}

/// Runs `cycles` load/offload cycles of `path` on `device`. Each cycle opens the file through
/// `cache` (a hit after the first), adds the patches of `lora` (a LoRA file and its strength) when
/// given, loads every weight, optionally verifies them byte for byte against the file's values
/// (with those patches), offloads, drops the patcher, and then measures.
pub fn offload_cycles<B: Backend>(
    path: &Path,
    cycles: usize,
    verify: bool,
    lora: Option<(&Path, f32)>,
    device: Arc<dyn WeightDevice<B>>,
    options: LoadOptions,
    cache: &MmapCache,
) -> Result<OffloadBench, PatchError> {
    let mut bench = OffloadBench {
        file_bytes: 0,
        cycles: Vec::with_capacity(cycles),
    };
    for cycle in 1..=cycles {
        let source = Arc::new(WeightSource::open_in(cache, path)?);
        let identity = source.mapping().identity();
        bench.file_bytes = source.mapping().len() as u64;
        let mut patcher = ModelPatcher::new(source, device.clone(), options)?;
        if let Some((lora_path, strength)) = lora {
            let lora = Arc::new(WeightSource::open_in(cache, lora_path)?);
            let found = lora_patches(patcher.source(), &lora, strength, &LoraKeyMap::new())?;
            patcher.add_patches(found.patches)?;
        }

        let started = Instant::now();
        patcher.load(None)?;
        let load_s = started.elapsed().as_secs_f64();
        let device_bytes_loaded = patcher.device_bytes();

        let weights_match_file = if verify {
            let mismatched = patcher.verify()?;
            if let Some(first) = mismatched.first() {
                tracing::warn!(
                    "cycle {cycle}: {} weights differ from the file, first {first:?}",
                    mismatched.len()
                );
            }
            Some(mismatched.is_empty())
        } else {
            None
        };

        let started = Instant::now();
        patcher.offload();
        let offload_s = started.elapsed().as_secs_f64();
        let held = patcher.device_bytes();
        drop(patcher);

        let device_bytes_after_offload = device.usage().map_or(held, |u| u.bytes_reserved);
        let rss = proc::resident_memory();
        bench.cycles.push(OffloadCycle {
            cycle,
            load_s,
            offload_s,
            device_bytes_loaded,
            device_bytes_after_offload,
            rss_anon_after_offload: rss.map_or(0, |r| r.anon),
            rss_file_after_offload: rss.map_or(0, |r| r.file),
            file_mappings: proc::file_mappings(&identity).unwrap_or(0),
            weights_match_file,
        });
    }
    Ok(bench)
}
