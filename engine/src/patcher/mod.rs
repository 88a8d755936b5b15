//! [`ModelPatcher`]: a model's base weights (the file mapping, immutable), its patches (LoRA), and
//! the device copy made from both.
//!
//! Loading uploads each weight from the mapping into a fresh device buffer, baking in the
//! patches that target it; offloading drops the device copies and gives their memory back.
//! Nothing is ever copied from the device to the host, and unpatching is a re-upload from the
//! mapping: there are no host backups to go stale or to alias live weights.
//!
//! Clones share the base weights *and* the device copy (ComfyUI's semantics: one model, several
//! patch lists); every device copy remembers which patches are baked into it, so a clone never
//! sees another clone's patches: it re-uploads (on `load`) or streams (on `weight`) instead.
//!
//! Architecture Invariant: this module has no `unsafe` outside `cuda.rs`; the mapping reaches it
//! only as `&[u8]`, and device copies are burn tensors made from buffers it allocates.

mod device;
mod handle;
mod lora;
mod materialize;
mod stats;

pub use device::{
    BurnDevice, DeviceCapacity, DeviceError, DeviceUsage, DeviceWeight, HostData, MappedBlocks,
    WeightDevice, element_count,
};
pub use handle::ModelHandle;
pub use lora::{
    LoraFactors, LoraKeyMap, LoraMatch, LowRankUpdate, PatchKind, WeightPatch, lora_patches,
};
pub use stats::{LocationStats, ParamStats};

use crate::weights::{WeightSource, WeightsError, cache::human_bytes};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use materialize::{HostWeight, materialize};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use weft_formats::TensorInfo;
use weft_formats::gguf::GgmlType;

/// Why a model could not be loaded or patched. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The model or LoRA file could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A weight could not be uploaded.
    #[error("{}: tensor {tensor:?}: {error}", path.display())]
    Upload {
        /// The model file.
        path: PathBuf,
        /// The weight.
        tensor: String,
        /// What the device said.
        error: DeviceError,
    },
    /// The device failed outside any one weight (synchronizing after a load).
    #[error("{}: {error}", path.display())]
    Device {
        /// The model file.
        path: PathBuf,
        /// What the device said.
        error: DeviceError,
    },
    /// A patch targets a weight the model does not have.
    #[error("{}: no weight {target:?} to patch", model.display())]
    UnknownTarget {
        /// The model file.
        model: PathBuf,
        /// The weight.
        target: String,
    },
    /// A LoRA's factors do not fit the weight they target.
    #[error("{}: LoRA for {target:?}: {why}", lora.display())]
    Shape {
        /// The LoRA file.
        lora: PathBuf,
        /// The model weight.
        target: String,
        /// What does not fit.
        why: String,
    },
    /// The options ask for something no weight can be.
    #[error("compute dtype {0:?} is not F32, F16 or BF16")]
    ComputeDtype(DType),
}

/// Which form unpatched weights take on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored: F32/F16/BF16 weights keep their type, quantized weights stay quantized (their
    /// blocks, for kernels that dequantize on the fly); other types are dequantized.
    #[default]
    AsStored,
    /// Every weight dequantized to the compute dtype.
    Dequantized,
}

/// How a patcher lays weights out on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The form of unpatched weights.
    pub format: WeightFormat,
    /// The dtype of dequantized and patched weights: F32, F16 or BF16.
    pub compute_dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            format: WeightFormat::AsStored,
            compute_dtype: DType::F32,
        }
    }
}

/// What a load did.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// Weights uploaded now.
    pub uploaded: usize,
    /// Their bytes on the device.
    pub uploaded_bytes: u64,
    /// Weights already on the device with the right patches.
    pub kept: usize,
    /// Device copies dropped first (outside the budget, or patched differently).
    pub dropped: usize,
    /// Weights left in the mapping, streamed at forward time (outside the budget).
    pub streamed: usize,
    /// Device bytes the model holds now.
    pub device_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What an offload freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OffloadReport {
    /// Device copies dropped.
    pub tensors: usize,
    /// Their bytes.
    pub bytes: u64,
}

struct Resident<B: Backend> {
    weight: DeviceWeight<B>,
    /// The [`WeightPatch::key`]s baked in, combined; 0: the file's values.
    patch_key: u64,
    bytes: u64,
}

struct DeviceState<B: Backend> {
    /// One slot per tensor of the source, in file order.
    slots: Vec<Option<Resident<B>>>,
    device_bytes: u64,
    loads: u64,
    streamed: u64,
}

impl<B: Backend> DeviceState<B> {
    fn take(&mut self, index: usize) -> Option<Resident<B>> {
        let resident = self.slots[index].take()?;
        self.device_bytes -= resident.bytes;
        Some(resident)
    }

    fn put(&mut self, index: usize, resident: Resident<B>) {
        self.device_bytes += resident.bytes;
        if let Some(old) = self.slots[index].replace(resident) {
            self.device_bytes -= old.bytes;
        }
    }
}

/// What clones share: the base weights, the device, and the device copy.
pub(crate) struct ModelCore<B: Backend> {
    id: u64,
    source: Arc<WeightSource>,
    index: HashMap<String, usize>,
    device: Arc<dyn WeightDevice<B>>,
    options: LoadOptions,
    state: Mutex<DeviceState<B>>,
}

impl<B: Backend> ModelCore<B> {
    fn lock(&self) -> MutexGuard<'_, DeviceState<B>> {
        // Every update of the state is a slot swap with its byte count; a panic between the two
        // would only skew the count, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn path(&self) -> &Path {
        self.source.path()
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn device_bytes(&self) -> u64 {
        self.lock().device_bytes
    }

    /// Tensor `index` materialized with `patches` in `options`' format and uploaded, inside one
    /// load bracket of the device; the caller decides whether it is kept.
    fn load_one(
        &self,
        index: usize,
        patches: &[&WeightPatch],
        options: LoadOptions,
    ) -> Result<DeviceWeight<B>, PatchError> {
        let device_err = |error| PatchError::Device {
            path: self.path().to_owned(),
            error,
        };
        let info = &self.source.tensors()[index];
        self.device.begin_load(&self.source).map_err(device_err)?;
        let weight = self
            .materialize(info, patches, options)
            .and_then(|host| self.upload(host, index));
        let landed = self.device.end_load().map_err(device_err);
        let weight = weight?;
        landed?;
        Ok(weight)
    }

    /// [`materialize`] with this core's source, asking the device which types it dequantizes.
    fn materialize(
        &self,
        info: &TensorInfo,
        patches: &[&WeightPatch],
        options: LoadOptions,
    ) -> Result<HostWeight<'_>, PatchError> {
        materialize(&self.source, info, patches, options, &|ty, dtype| {
            self.device.dequantizes(ty, dtype)
        })
    }

    /// Tensor `index`'s device copy made from `host` (blocks stay in the mapping where the device
    /// reads it: [`WeightDevice::reads_mapping`]).
    fn upload(&self, host: HostWeight<'_>, index: usize) -> Result<DeviceWeight<B>, PatchError> {
        let info = &self.source.tensors()[index];
        let name = info.name.as_str();
        let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
        let fail = |error| PatchError::Upload {
            path: self.path().to_owned(),
            tensor: name.to_owned(),
            error,
        };
        Ok(match host {
            HostWeight::Float(data, dtype) => DeviceWeight::Float {
                tensor: self.device.upload_float(data, dtype, name).map_err(fail)?,
                shape,
            },
            HostWeight::Blocks(bytes, ty) => match self
                .device
                .reads_mapping()
                .then(|| MappedBlocks::new(self.source.clone(), index))
                .flatten()
            {
                Some(mapped) => DeviceWeight::Mapped(mapped),
                None => DeviceWeight::Blocks {
                    tensor: self.device.upload_blocks(bytes, name).map_err(fail)?,
                    ty,
                    shape,
                },
            },
            HostWeight::OnDevice(bytes, ty, dtype) => {
                let elements = shape.iter().product();
                DeviceWeight::Float {
                    tensor: self
                        .device
                        .upload_dequantized(bytes, ty, elements, dtype, name)
                        .map_err(fail)?,
                    shape,
                }
            }
        })
    }

    /// Drops device copies, last weights first, until `at_least` bytes are freed (`u64::MAX`: all).
    pub(crate) fn offload(&self, at_least: u64) -> OffloadReport {
        let mut report = OffloadReport::default();
        {
            let mut state = self.lock();
            for index in (0..state.slots.len()).rev() {
                if report.bytes >= at_least {
                    break;
                }
                if let Some(resident) = state.take(index) {
                    report.tensors += 1;
                    report.bytes += resident.bytes;
                }
            }
        }
        if report.tensors > 0 {
            self.device.release();
            tracing::info!(
                "{}: offloaded {} weights ({}); {}",
                self.path().display(),
                report.tensors,
                human_bytes(report.bytes),
                self.stats()
            );
        }
        report
    }

    fn stats(&self) -> ParamStats {
        let state = self.lock();
        let mut stats = ParamStats::default();
        for (slot, info) in state.slots.iter().zip(self.source.tensors()) {
            match slot {
                Some(resident) => stats.device.add(resident.bytes),
                None => stats.mmap.add(info.nbytes),
            }
        }
        stats
    }
}

static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);
static LOADS: AtomicU64 = AtomicU64::new(0);

/// Loads of any model in this process so far. A node that must run whenever some model may have
/// become resident since its last run (`OffloadModel`) puts this in its fingerprint: if no load
/// happened, nothing became resident, and its cached result is still true.
pub fn loads_in_process() -> u64 {
    LOADS.load(Ordering::Relaxed)
}

/// A model's weights: the mapping (base), this handle's patches, and the device copy it shares
/// with its clones. See the [module docs](self).
pub struct ModelPatcher<B: Backend> {
    core: Arc<ModelCore<B>>,
    patches: Vec<Arc<WeightPatch>>,
}

impl<B: Backend> Clone for ModelPatcher<B> {
    /// A new patcher on the same base weights and device copy, with its own copy of the patch
    /// list: patches added to the clone do not reach the original, and the reverse.
    fn clone(&self) -> Self {
        ModelPatcher {
            core: self.core.clone(),
            patches: self.patches.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for ModelPatcher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPatcher")
            .field("file", &self.core.path())
            .field("patches", &self.patches.len())
            .finish()
    }
}

impl<B: Backend> ModelPatcher<B> {
    /// A patcher over `source`'s weights, loading to `device`. Nothing is uploaded yet.
    pub fn new(
        source: Arc<WeightSource>,
        device: Arc<dyn WeightDevice<B>>,
        options: LoadOptions,
    ) -> Result<Self, PatchError> {
        if !matches!(options.compute_dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(PatchError::ComputeDtype(options.compute_dtype));
        }
        let index = source
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let state = DeviceState {
            slots: (0..source.tensors().len()).map(|_| None).collect(),
            device_bytes: 0,
            loads: 0,
            streamed: 0,
        };
        let id = NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed);
        Ok(ModelPatcher {
            core: Arc::new(ModelCore {
                id,
                source,
                index,
                device,
                options,
                state: Mutex::new(state),
            }),
            patches: Vec::new(),
        })
    }

    /// Opens `path` through the process's mmap cache and makes a patcher over it.
    pub fn open(
        path: impl AsRef<Path>,
        device: Arc<dyn WeightDevice<B>>,
        options: LoadOptions,
    ) -> Result<Self, PatchError> {
        Self::new(Arc::new(WeightSource::open(path)?), device, options)
    }

    /// The base weights.
    pub fn source(&self) -> &Arc<WeightSource> {
        &self.core.source
    }

    /// Where weights go.
    pub fn device(&self) -> &Arc<dyn WeightDevice<B>> {
        &self.core.device
    }

    /// The layout options.
    pub fn options(&self) -> LoadOptions {
        self.core.options
    }

    /// Identifies the shared model: equal for a patcher and its clones.
    pub fn model_id(&self) -> u64 {
        self.core.id
    }

    /// The shared model, for the memory manager's bookkeeping (which must not keep it alive).
    pub(crate) fn core(&self) -> &Arc<ModelCore<B>> {
        &self.core
    }

    /// Whether `other` is this patcher or a clone of it (same base, same device copy).
    pub fn shares_model_with(&self, other: &ModelPatcher<B>) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }

    /// This patcher's patches, in the order they apply.
    pub fn patches(&self) -> &[Arc<WeightPatch>] {
        &self.patches
    }

    /// Adds patches; each must target a weight of the model. They take effect at the next load
    /// (or `weight` call).
    pub fn add_patches(
        &mut self,
        patches: impl IntoIterator<Item = WeightPatch>,
    ) -> Result<(), PatchError> {
        let mut added = Vec::new();
        for patch in patches {
            if !self.core.index.contains_key(&patch.target) {
                return Err(PatchError::UnknownTarget {
                    model: self.core.path().to_owned(),
                    target: patch.target,
                });
            }
            added.push(Arc::new(patch));
        }
        self.patches.extend(added);
        Ok(())
    }

    /// Removes every patch from this patcher (clones keep theirs). Device copies with patches
    /// baked in are replaced by file weights at the next load, or at once by [`unpatch`](Self::unpatch).
    pub fn clear_patches(&mut self) {
        self.patches.clear();
    }

    /// The combined key of this patcher's patches for each weight that has any.
    fn patch_keys(&self) -> HashMap<usize, (u64, Vec<&WeightPatch>)> {
        self.patch_keys_of(true)
    }

    /// Whether weight `index`'s patches stay beside it instead of being baked in: a quantized
    /// matrix kept as its blocks (`WeightFormat::AsStored`), whose LoRAs the model computes as
    /// side products ([`side_updates`](Self::side_updates)), so that adding, removing or
    /// re-weighting a LoRA never dequantizes or copies the weight.
    fn patches_on_the_side(&self, index: usize) -> bool {
        let info = &self.core.source.tensors()[index];
        self.core.options.format == WeightFormat::AsStored
            && info.shape.len() == 2
            && info.dtype.ggml().is_some_and(GgmlType::is_quantized)
    }

    /// The patches to bake into each weight (`baked_only`), or all of them, with their keys.
    fn patch_keys_of(&self, baked_only: bool) -> HashMap<usize, (u64, Vec<&WeightPatch>)> {
        let mut by_index: HashMap<usize, (u64, Vec<&WeightPatch>)> = HashMap::new();
        for patch in &self.patches {
            if let Some(&index) = self.core.index.get(&patch.target)
                && !(baked_only && self.patches_on_the_side(index))
            {
                by_index
                    .entry(index)
                    .or_insert_with(|| (0, Vec::new()))
                    .1
                    .push(patch);
            }
        }
        for (key, list) in by_index.values_mut() {
            let mut h = DefaultHasher::new();
            list.iter().for_each(|p| p.key().hash(&mut h));
            // 0 is reserved for "the file's values".
            *key = h.finish().max(1);
        }
        by_index
    }

    /// Bytes weight `index` takes on the device under `options`, with or without patches.
    fn device_size(&self, index: usize, patched: bool, options: LoadOptions) -> u64 {
        let info = &self.core.source.tensors()[index];
        match materialize::stays_as_stored(info, patched, options) {
            true => info.nbytes,
            false => info.n_elements() * options.compute_dtype.size() as u64,
        }
    }

    /// Bytes a full load takes on the device, with this patcher's patches.
    pub fn full_bytes(&self) -> u64 {
        self.full_bytes_with(self.core.options)
    }

    /// Bytes a full load would take under `options` instead (to choose a layout before loading).
    pub fn full_bytes_with(&self, options: LoadOptions) -> u64 {
        let keys = self.patch_keys();
        (0..self.core.source.tensors().len())
            .map(|i| self.device_size(i, keys.contains_key(&i), options))
            .sum()
    }

    /// Bytes of device copies the model holds now (shared with clones).
    pub fn device_bytes(&self) -> u64 {
        self.core.lock().device_bytes
    }

    /// How many loads the model has had (shared with clones): a load epoch for cache keys.
    pub fn loads(&self) -> u64 {
        self.core.lock().loads
    }

    /// Weights uploaded on demand by [`weight`](Self::weight) because they were not resident.
    pub fn streamed(&self) -> u64 {
        self.core.lock().streamed
    }

    /// Where every weight is now.
    pub fn stats(&self) -> ParamStats {
        self.core.stats()
    }

    /// Uploads what the device copy lacks for this patcher: every weight, in file order, until
    /// `budget` bytes are resident (`None`: all). Weights past the budget stay in the mapping and
    /// are streamed by [`weight`](Self::weight) at forward time (ComfyUI's lowvram). Device
    /// copies that do not match this patcher's patches, or lie past the budget, are dropped first.
    pub fn load(&self, budget: Option<u64>) -> Result<LoadReport, PatchError> {
        let started = Instant::now();
        let keys = self.patch_keys();
        let n = self.core.source.tensors().len();
        let mut wanted = vec![false; n];
        let mut planned = 0u64;
        for (index, want) in wanted.iter_mut().enumerate() {
            let size = self.device_size(index, keys.contains_key(&index), self.core.options);
            if budget.is_some_and(|b| planned + size > b) {
                break; // a resident prefix, the rest streams: forward passes run front to back
            }
            planned += size;
            *want = true;
        }

        let mut report = LoadReport::default();
        let mut state = self.core.lock();
        for (index, &want) in wanted.iter().enumerate() {
            let key = keys.get(&index).map_or(0, |k| k.0);
            if let Some(resident) = &state.slots[index] {
                if want && resident.patch_key == key {
                    report.kept += 1;
                } else {
                    state.take(index);
                    report.dropped += 1;
                }
            }
        }

        let core = &self.core;
        core.device
            .begin_load(&core.source)
            .map_err(|error| PatchError::Device {
                path: core.path().to_owned(),
                error,
            })?;
        let uploads = (|| {
            let missing: Vec<usize> = (0..n)
                .filter(|&i| wanted[i] && state.slots[i].is_none())
                .collect();
            for index in missing {
                let info = &core.source.tensors()[index];
                let (key, patches) = keys
                    .get(&index)
                    .map_or((0, &[][..]), |(k, list)| (*k, list.as_slice()));
                let host = core.materialize(info, patches, core.options)?;
                let weight = core.upload(host, index)?;
                let bytes = weight.device_bytes();
                state.put(
                    index,
                    Resident {
                        weight,
                        patch_key: key,
                        bytes,
                    },
                );
                report.uploaded += 1;
                report.uploaded_bytes += bytes;
            }
            Ok::<(), PatchError>(())
        })();
        // Wait for the copies even when one failed, so that none is in flight afterwards.
        let landed = core.device.end_load().map_err(|error| PatchError::Device {
            path: core.path().to_owned(),
            error,
        });
        LOADS.fetch_add(1, Ordering::Relaxed);
        uploads?;
        landed?;
        state.loads += 1;
        report.streamed = wanted.iter().filter(|w| !**w).count();
        report.device_bytes = state.device_bytes;
        drop(state);
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            "{}: loaded {} weights ({}, kept {}, dropped {}) in {:.3}s on {}; {}",
            core.path().display(),
            report.uploaded,
            human_bytes(report.uploaded_bytes),
            report.kept,
            report.dropped,
            report.seconds,
            core.device.describe(),
            self.stats()
        );
        Ok(report)
    }

    /// Replaces every device copy that has patches baked in with the file's weights, uploaded
    /// again from the mapping (the only host copy): the result equals the file bit for bit.
    /// Returns how many were restored. This patcher keeps its patch list.
    pub fn unpatch(&self) -> Result<usize, PatchError> {
        let core = &self.core;
        let mut state = core.lock();
        let patched: Vec<usize> = (0..state.slots.len())
            .filter(|&i| state.slots[i].as_ref().is_some_and(|r| r.patch_key != 0))
            .collect();
        if patched.is_empty() {
            return Ok(0);
        }
        core.device
            .begin_load(&core.source)
            .map_err(|error| PatchError::Device {
                path: core.path().to_owned(),
                error,
            })?;
        let restored = (|| {
            for &index in &patched {
                // Drop first: the patched copy's memory is free for the file's.
                state.take(index);
                let info = &core.source.tensors()[index];
                let host = core.materialize(info, &[], core.options)?;
                let weight = core.upload(host, index)?;
                let bytes = weight.device_bytes();
                state.put(
                    index,
                    Resident {
                        weight,
                        patch_key: 0,
                        bytes,
                    },
                );
            }
            Ok::<(), PatchError>(())
        })();
        let landed = core.device.end_load().map_err(|error| PatchError::Device {
            path: core.path().to_owned(),
            error,
        });
        restored?;
        landed?;
        Ok(patched.len())
    }

    /// Drops every device copy and gives the memory back to the device's allocator. Never reads
    /// device memory back: the mapping already holds the weights.
    pub fn offload(&self) -> OffloadReport {
        self.core.offload(u64::MAX)
    }

    /// Drops device copies, last weights first, until at least `bytes` are freed: what the memory
    /// manager does to make room without unloading a model entirely. The dropped weights stream.
    pub fn offload_bytes(&self, bytes: u64) -> OffloadReport {
        self.core.offload(bytes)
    }

    /// The weight called `name` on the device with this patcher's patches: the resident copy
    /// when there is one that matches, else a fresh upload from the mapping that is not kept
    /// (streamed; dropped when the caller drops it).
    pub fn weight(&self, name: &str) -> Result<DeviceWeight<B>, PatchError> {
        let core = &self.core;
        let index = self.index_of(name)?;
        let keys = self.patch_keys();
        let (key, patches) = keys
            .get(&index)
            .map_or((0, &[][..]), |(k, list)| (*k, list.as_slice()));
        let mut state = core.lock();
        if let Some(resident) = &state.slots[index]
            && resident.patch_key == key
        {
            return Ok(resident.weight.clone());
        }
        let weight = core.load_one(index, patches, core.options)?;
        state.streamed += 1;
        Ok(weight)
    }

    /// The weight called `name` as floats with this patcher's patches, for compute paths that
    /// cannot read quantized blocks (the CPU models): the resident copy when it is a float one,
    /// else the file's values in the compute dtype, not kept: dequantized by the device where it
    /// can (`WeightDevice::dequantizes`, no patches), else on the host.
    pub fn float_weight(&self, name: &str) -> Result<burn::tensor::Tensor<B, 1>, PatchError> {
        let index = self.index_of(name)?;
        if let Some(DeviceWeight::Float { tensor, .. }) = self.resident(name) {
            return Ok(tensor);
        }
        let core = &self.core;
        let keys = self.patch_keys_of(false);
        let patches = keys
            .get(&index)
            .map_or(&[][..], |(_, list)| list.as_slice());
        let dense = LoadOptions {
            format: WeightFormat::Dequantized,
            ..core.options
        };
        let weight = core.load_one(index, patches, dense)?;
        core.lock().streamed += 1;
        let ty = match weight {
            DeviceWeight::Float { tensor, .. } => return Ok(tensor),
            DeviceWeight::Blocks { ty, .. } => ty,
            DeviceWeight::Mapped(blocks) => blocks.ggml_type(),
        };
        Err(PatchError::Device {
            path: core.path().to_owned(),
            error: DeviceError::Backend(format!(
                "tensor {name:?}: dequantizing {ty} gave blocks, not floats"
            )),
        })
    }

    fn index_of(&self, name: &str) -> Result<usize, PatchError> {
        let core = &self.core;
        Ok(*core
            .index
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                path: core.path().to_owned(),
                name: name.to_owned(),
            })?)
    }

    /// Compares every resident device copy with what this patcher would upload (the file's
    /// values with its patches, dequantized on the host), byte for byte, reading the device copies
    /// back. Returns the names that differ (a copy another clone patched differently counts as
    /// different).
    pub fn verify(&self) -> Result<Vec<String>, PatchError> {
        let core = &self.core;
        let keys = self.patch_keys();
        let state = core.lock();
        let mut mismatched = Vec::new();
        for (index, slot) in state.slots.iter().enumerate() {
            let Some(resident) = slot else { continue };
            let info = &core.source.tensors()[index];
            let (key, patches) = keys
                .get(&index)
                .map_or((0, &[][..]), |(k, list)| (*k, list.as_slice()));
            // Always the host's values: a copy the device dequantized must equal them bit for bit.
            let expected = materialize(&core.source, info, patches, core.options, &|_, _| false)?;
            let actual = resident
                .weight
                .read_back()
                .map_err(|error| PatchError::Upload {
                    path: core.path().to_owned(),
                    tensor: info.name.clone(),
                    error,
                })?;
            if resident.patch_key != key
                || actual != expected.as_bytes()
                || resident.weight.dtype() != expected.dtype()
            {
                mismatched.push(info.name.clone());
            }
        }
        Ok(mismatched)
    }

    /// The low-rank updates of this patcher's patches that weight `name` does not have baked in
    /// (a quantized matrix kept as its blocks): the model adds `scale · (x·downᵀ)·upᵀ` to the
    /// layer's output rows for each. Empty for every other weight.
    pub fn side_updates(&self, name: &str) -> Result<Vec<LowRankUpdate>, PatchError> {
        let index = self.index_of(name)?;
        if !self.patches_on_the_side(index) {
            return Ok(Vec::new());
        }
        let shape = &self.core.source.tensors()[index].shape;
        self.patches
            .iter()
            .filter(|p| p.target == name)
            .map(|p| p.low_rank(shape))
            .collect()
    }

    /// The resident device copy of `name`, if there is one with this patcher's patches.
    pub fn resident(&self, name: &str) -> Option<DeviceWeight<B>> {
        let index = *self.core.index.get(name)?;
        let key = self.patch_keys().get(&index).map_or(0, |k| k.0);
        let state = self.core.lock();
        state.slots[index]
            .as_ref()
            .filter(|r| r.patch_key == key)
            .map(|r| r.weight.clone())
    }
}
