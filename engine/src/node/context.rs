//! What the executor lends a running node: the device, the run's folders and services, progress
//! reporting and cancellation; and [`Fingerprint`], what a node adds to its cache key.
use super::error::NodeError;
use crate::exec::cancel::CancelToken;
use crate::exec::events::{Event, EventSink, NoEvents};
use burn::tensor::backend::Backend;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// The folders and shared services of a run; the same for every node of it.
#[derive(Clone, Default)]
pub struct RunEnv {
    /// Where sinks write their files (`weft run --output-dir`).
    pub output_dir: PathBuf,
    /// What relative paths in parameters are resolved against: the workflow file's folder.
    pub base_dir: PathBuf,
    /// Model folders, searched in order (ComfyUI layout: `diffusion_models/`, `vae/` …).
    pub models_dirs: Vec<PathBuf>,
    /// Shared services by type (a memory manager, a model cache …).
    pub services: Services,
}

impl RunEnv {
    /// An environment that writes to `output_dir` and resolves relative paths against the current folder.
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        RunEnv {
            output_dir: output_dir.into(),
            ..RunEnv::default()
        }
    }
}

/// A type map of shared services: how later layers (the memory manager) reach nodes without the
/// engine's node API naming them.
#[derive(Clone, Default)]
pub struct Services {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Services {
    /// Adds (or replaces) the service of type `T`.
    pub fn insert<T: Any + Send + Sync>(&mut self, service: Arc<T>) {
        self.by_type.insert(TypeId::of::<T>(), service);
    }

    /// The service of type `T`, if one was added.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|s| s.clone().downcast().ok())
    }
}

/// Text that describes a run, for outputs that record where they came from: `SaveImage` embeds
/// each pair as a PNG text chunk (ComfyUI writes `prompt` and `workflow`). `weft run` puts the
/// workflow file's text and the command line that reproduces the run here, in the run's services.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMetadata(pub Vec<(String, String)>);

static NO_EVENTS: NoEvents = NoEvents;

/// What a node may use while it runs.
pub struct NodeContext<'a, B: Backend> {
    node_id: &'a str,
    device: &'a B::Device,
    env: &'a RunEnv,
    events: &'a dyn EventSink,
    cancel: CancelToken,
}

impl<'a, B: Backend> NodeContext<'a, B> {
    /// A context for node `node_id` with no event sink and a token nobody cancels: what the executor
    /// refines, and what node crates use to unit-test a node.
    pub fn new(node_id: &'a str, device: &'a B::Device, env: &'a RunEnv) -> Self {
        NodeContext {
            node_id,
            device,
            env,
            events: &NO_EVENTS,
            cancel: CancelToken::new(),
        }
    }

    /// Sends this node's progress events to `events`.
    pub fn with_events(mut self, events: &'a dyn EventSink) -> Self {
        self.events = events;
        self
    }

    /// Watches `cancel`.
    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The id of the running node in its workflow.
    pub fn node_id(&self) -> &str {
        self.node_id
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &B::Device {
        self.device
    }

    /// The run's folders and services.
    pub fn env(&self) -> &RunEnv {
        self.env
    }

    /// Where sinks write their files.
    pub fn output_dir(&self) -> &Path {
        &self.env.output_dir
    }

    /// `path` resolved against the workflow's folder when relative.
    pub fn resolve_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.env.base_dir.join(path)
        }
    }

    /// Finds a model file the way ComfyUI does: `name` as a path (absolute, or relative to the
    /// workflow's folder) if it exists, else `<models dir>/<folder>/<name>` for each models folder and
    /// each of `folders` (e.g. `["diffusion_models", "unet"]`), in order. The error lists every place tried.
    pub fn find_model(&self, folders: &[&str], name: &str) -> Result<PathBuf, NodeError> {
        let direct = self.resolve_path(name);
        let mut tried = vec![direct.clone()];
        if direct.is_file() {
            return Ok(direct);
        }
        for root in &self.env.models_dirs {
            for folder in folders {
                let candidate = root.join(folder).join(name);
                if candidate.is_file() {
                    return Ok(candidate);
                }
                tried.push(candidate);
            }
        }
        let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        let hint = if self.env.models_dirs.is_empty() {
            " (no models folder set: use --models-dir DIR or WEFT_MODELS_DIR)"
        } else {
            ""
        };
        Err(NodeError::msg(format!(
            "model file {name:?} not found; looked for {}{hint}",
            tried.join(", ")
        )))
    }

    /// `relative` inside the output folder; refuses absolute paths and `..` so that a workflow can
    /// write nowhere else.
    pub fn output_path(&self, relative: &str) -> Result<PathBuf, NodeError> {
        let path = Path::new(relative);
        let escapes = path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes || relative.is_empty() {
            return Err(NodeError::msg(format!(
                "output path {relative:?} must be relative and stay inside the output folder"
            )));
        }
        Ok(self.env.output_dir.join(path))
    }

    /// Reports progress: `step` of `total` done (shown as a progress bar).
    pub fn progress(&self, step: u64, total: u64) {
        self.events.event(&Event::Progress {
            node_id: self.node_id.to_owned(),
            step,
            total,
        });
    }

    /// Tells the user a file was written (the CLI lists them after the run).
    pub fn report_file(&self, path: &Path) {
        self.events.event(&Event::FileWritten {
            node_id: self.node_id.to_owned(),
            path: path.to_owned(),
        });
    }

    /// Whether the user asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(NodeError::Cancelled)` when the user asked to stop: call it between steps, before
    /// anything is half-written.
    pub fn check_cancelled(&self) -> Result<(), NodeError> {
        if self.cancel.is_cancelled() {
            Err(NodeError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// What a node adds to its cache key beyond its type, parameters and inputs: the state of the
/// world it reads (a file's size and modification time). Equal fingerprints mean "nothing changed".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint(Vec<u64>);

impl Fingerprint {
    /// Nothing outside the node's inputs matters.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds any hashable value.
    pub fn with(mut self, value: impl Hash) -> Self {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        self.0.push(hasher.finish());
        self
    }

    /// Adds a file's identity: path, size and modification time (what ComfyUI's loaders compare).
    pub fn file(self, path: &Path) -> Result<Self, NodeError> {
        let meta = std::fs::metadata(path).map_err(|e| NodeError::io(path, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos());
        Ok(self.with(path).with(meta.len()).with(mtime))
    }
}
