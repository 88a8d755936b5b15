//! [`MemoryManager`]: the device budget (free device memory minus a reserve), an LRU of the
//! models it loaded, and the policy (`--gpu-only`, `--lowvram`, `--novram`) for making room.
//!
//! Nodes reach it through the run's services (`ctx.env().services.get::<MemoryManager<B>>()`)
//! and call [`MemoryManager::load_models`] with the models they are about to run; the manager
//! offloads least-recently-used models (partly, when that is enough) until the requested ones
//! fit, and loads what still does not fit only partly, to be streamed from the mapping.
//!
//! Architecture Invariant: the manager never keeps a model alive. It tracks models by weak
//! reference; a model nobody holds is dropped with its device copy, whatever the manager thinks.
// Only `host.rs` (one libc call) opts out.
#![deny(unsafe_code)]

pub(crate) mod host;
pub mod proc;
pub mod residency;

pub use residency::{Residency, ResidencyChoice, ResidencyPlan};

use crate::node::Services;
use crate::patcher::{
    LoadOptions, LoadReport, ModelCore, ModelPatcher, OffloadReport, PatchError, WeightDevice,
};
use crate::weights::cache::human_bytes;
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// How eagerly models stay on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum MemoryMode {
    /// Load fully when possible; offload least-recently-used models to make room; load partly
    /// (streaming the rest) when even that is not enough.
    #[default]
    Normal,
    /// Only the models of the running node stay on the device, and they load partly when they
    /// do not fit.
    LowVram,
    /// Nothing stays on the device: every weight streams from the mapping when used.
    NoVram,
    /// Everything stays on the device; a model that does not fit is an error, never streamed,
    /// and nothing is offloaded to make room.
    GpuOnly,
}

/// The manager's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPolicy {
    /// The mode.
    pub mode: MemoryMode,
    /// Bytes of device memory to leave free (activations, other programs): `--reserve-vram`.
    pub reserve_bytes: u64,
    /// Treat the device as having this many bytes, of which the managed models' copies are the
    /// only use (`--vram-budget`: weft behaves as on a card of that size; tests; devices that
    /// cannot report their free memory). A device that reports less free memory is believed.
    /// `None`: ask the device.
    pub capacity: Option<u64>,
    /// Dequantized- or quantized-resident models ([`residency`]).
    pub residency: ResidencyChoice,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy {
            mode: MemoryMode::Normal,
            reserve_bytes: 1 << 30,
            capacity: None,
            residency: ResidencyChoice::Auto,
        }
    }
}

/// Why the manager could not load a model.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Loading failed.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// `--gpu-only` and the model does not fit.
    #[error("{}: needs {} more on the device, {} is free after the reserve (--gpu-only streams nothing; drop it or free memory)", path.display(), human_bytes(*needed), human_bytes(*available))]
    DoesNotFit {
        /// The model file.
        path: PathBuf,
        /// Bytes it still needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
}

/// A model the manager loaded, as [`MemoryManager::loaded`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadedModel {
    /// The model file.
    pub path: PathBuf,
    /// Its device copies' bytes.
    pub device_bytes: u64,
}

struct Tracked<B: Backend> {
    model: Weak<ModelCore<B>>,
    last_used: u64,
}

struct ManagerState<B: Backend> {
    /// Models loaded through the manager, any order; `last_used` orders them.
    models: Vec<Tracked<B>>,
    tick: u64,
}

/// The device budget and the LRU of loaded models. See the [module docs](self).
pub struct MemoryManager<B: Backend> {
    device: Arc<dyn WeightDevice<B>>,
    policy: MemoryPolicy,
    state: Mutex<ManagerState<B>>,
}

impl<B: Backend> MemoryManager<B> {
    /// A manager for `device` (the one its models load to) under `policy`.
    pub fn new(device: Arc<dyn WeightDevice<B>>, policy: MemoryPolicy) -> Self {
        MemoryManager {
            device,
            policy,
            state: Mutex::new(ManagerState {
                models: Vec::new(),
                tick: 0,
            }),
        }
    }

    /// The run's manager, if the CLI (or a test) put one in the services.
    pub fn from_services(services: &Services) -> Option<Arc<Self>> {
        services.get::<Self>()
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn WeightDevice<B>> {
        &self.device
    }

    /// The policy.
    pub fn policy(&self) -> MemoryPolicy {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, ManagerState<B>> {
        // The state is a list of weak references and counters; no update leaves it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Free device bytes: the configured capacity less what the managed models hold, or what the
    /// device reports plus what its allocator holds unused (a pool keeps freed buffers for reuse;
    /// they are free for our purposes). `None`: unknown (every load is full).
    fn free_bytes(&self, state: &ManagerState<B>) -> Option<u64> {
        let reported = || {
            let pooled = self
                .device
                .usage()
                .map_or(0, |u| u.bytes_reserved.saturating_sub(u.bytes_in_use));
            self.device.capacity().map(|c| c.free + pooled)
        };
        match self.policy.capacity {
            Some(capacity) => {
                let budget = capacity.saturating_sub(self.held_bytes(state));
                Some(reported().map_or(budget, |free| free.min(budget)))
            }
            None => reported(),
        }
    }

    /// Device bytes the managed models hold.
    fn held_bytes(&self, state: &ManagerState<B>) -> u64 {
        state
            .models
            .iter()
            .filter_map(|t| t.model.upgrade())
            .map(|m| m.device_bytes())
            .sum()
    }

    /// The most device bytes one model could hold now: free memory after the reserve plus what
    /// the other managed models hold (offloaded to make room; not under `--gpu-only`); 0 under
    /// `--novram`; `None` when the device cannot say. What [`residency::plan`] weighs a model
    /// against.
    pub fn room(&self) -> Option<u64> {
        let mut state = self.lock();
        state.models.retain(|t| t.model.strong_count() > 0);
        if self.policy.mode == MemoryMode::NoVram {
            return Some(0);
        }
        let free = self.free_bytes(&state)?;
        let evictable = match self.policy.mode {
            MemoryMode::GpuOnly => 0,
            _ => self.held_bytes(&state),
        };
        Some((free + evictable).saturating_sub(self.policy.reserve_bytes))
    }

    /// Opens the model file `path` on the manager's device in the form [`Self::plan_residency`]
    /// picks for it: `dense` are the options of the dequantized form, whose compute dtype the
    /// quantized form keeps. Nothing is uploaded yet.
    pub fn open_model(
        &self,
        path: &Path,
        dense: LoadOptions,
    ) -> Result<(ModelPatcher<B>, ResidencyPlan), PatchError> {
        let patcher = ModelPatcher::open(path, self.device.clone(), dense)?;
        let quantized = Residency::Quantized.options(dense.compute_dtype);
        let plan = self.plan_residency(patcher.full_bytes(), patcher.full_bytes_with(quantized));
        let patcher = match plan.residency {
            Residency::Dequantized => patcher,
            Residency::Quantized => ModelPatcher::open(path, self.device.clone(), quantized)?,
        };
        tracing::info!("{}: {} ({})", path.display(), plan.residency, plan.reason);
        Ok((patcher, plan))
    }

    /// The form `model`'s weights should take, from the policy's choice and [`Self::room`]:
    /// `dense_bytes` and `quantized_bytes` are its full load dequantized and with blocks kept.
    pub fn plan_residency(&self, dense_bytes: u64, quantized_bytes: u64) -> ResidencyPlan {
        residency::plan(
            self.policy.residency,
            dense_bytes,
            quantized_bytes,
            self.room(),
        )
    }

    /// Loads `models` (those a node is about to run) in order, making room first: offloads the
    /// least recently used other models, partly when that is enough, and loads a model only
    /// partly when it still does not fit (the rest streams from the mapping).
    pub fn load_models(&self, models: &[&ModelPatcher<B>]) -> Result<Vec<LoadReport>, MemoryError> {
        let mut state = self.lock();
        state.models.retain(|t| t.model.strong_count() > 0);
        let requested: Vec<u64> = models.iter().map(|m| m.model_id()).collect();
        let mut reports = Vec::with_capacity(models.len());
        for model in models {
            if self.policy.mode == MemoryMode::LowVram {
                self.evict(&state, &requested, u64::MAX);
            }
            let budget = match self.policy.mode {
                MemoryMode::NoVram => Some(0),
                _ => self.make_room(&state, model, &requested)?,
            };
            reports.push(model.load(budget)?);
            state.tick += 1;
            let tick = state.tick;
            match state.models.iter_mut().find(|t| {
                t.model
                    .upgrade()
                    .is_some_and(|m| m.id() == model.model_id())
            }) {
                Some(tracked) => tracked.last_used = tick,
                None => state.models.push(Tracked {
                    model: Arc::downgrade(model.core()),
                    last_used: tick,
                }),
            }
        }
        Ok(reports)
    }

    /// The budget for loading `model`: `None` (all of it) when it fits after offloading others,
    /// else what is left.
    fn make_room(
        &self,
        state: &ManagerState<B>,
        model: &ModelPatcher<B>,
        requested: &[u64],
    ) -> Result<Option<u64>, MemoryError> {
        let have = model.device_bytes();
        let extra = model.full_bytes().saturating_sub(have);
        loop {
            let Some(free) = self.free_bytes(state) else {
                return Ok(None);
            };
            let available = free.saturating_sub(self.policy.reserve_bytes);
            if available >= extra {
                return Ok(None);
            }
            if self.policy.mode == MemoryMode::GpuOnly {
                return Err(MemoryError::DoesNotFit {
                    path: model.source().path().to_owned(),
                    needed: extra,
                    available,
                });
            }
            if self.evict(state, requested, extra - available) == 0 {
                tracing::info!(
                    "{}: {} does not fit ({} free after the reserve); loading part of it, the rest streams",
                    model.source().path().display(),
                    human_bytes(extra),
                    human_bytes(available)
                );
                return Ok(Some(have + available));
            }
        }
    }

    /// Offloads at least `bytes` from the least recently used model that is not `requested` and
    /// has device copies; returns the bytes freed (0: nothing left to evict).
    fn evict(&self, state: &ManagerState<B>, requested: &[u64], bytes: u64) -> u64 {
        let mut candidates: Vec<(u64, Arc<ModelCore<B>>)> = state
            .models
            .iter()
            .filter_map(|t| t.model.upgrade().map(|m| (t.last_used, m)))
            .filter(|(_, m)| !requested.contains(&m.id()) && m.device_bytes() > 0)
            .collect();
        candidates.sort_by_key(|(last_used, _)| *last_used);
        let mut freed = 0;
        for (_, victim) in candidates {
            if freed >= bytes {
                break;
            }
            let report = victim.offload(bytes - freed);
            tracing::info!(
                "memory: offloaded {} of {} to make room",
                human_bytes(report.bytes),
                victim.path().display()
            );
            freed += report.bytes;
        }
        freed
    }

    /// Drops `model`'s device copies (shared with its clones) and gives the memory back.
    pub fn offload(&self, model: &ModelPatcher<B>) -> OffloadReport {
        model.offload()
    }

    /// [`offload`](Self::offload), for a model whose node is done with it (`VAEDecode`'s
    /// `release_vae`): the device copy goes now rather than when the LRU gets to it.
    pub fn release(&self, model: &ModelPatcher<B>) -> OffloadReport {
        let report = model.offload();
        self.lock().models.retain(|t| {
            t.model
                .upgrade()
                .is_some_and(|m| m.id() != model.model_id())
        });
        report
    }

    /// Offloads every model the manager loaded.
    pub fn offload_all(&self) -> OffloadReport {
        let state = self.lock();
        let mut total = OffloadReport::default();
        for model in state.models.iter().filter_map(|t| t.model.upgrade()) {
            let report = model.offload(u64::MAX);
            total.tensors += report.tensors;
            total.bytes += report.bytes;
        }
        total
    }

    /// The models the manager loaded that still exist, least recently used first.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let state = self.lock();
        let mut models: Vec<(u64, LoadedModel)> = state
            .models
            .iter()
            .filter_map(|t| {
                t.model.upgrade().map(|m| {
                    (
                        t.last_used,
                        LoadedModel {
                            path: m.path().to_owned(),
                            device_bytes: m.device_bytes(),
                        },
                    )
                })
            })
            .collect();
        models.sort_by_key(|(last_used, _)| *last_used);
        models.into_iter().map(|(_, m)| m).collect()
    }
}
