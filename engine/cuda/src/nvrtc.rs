//! NVRTC compilation shared by weft's kernels: one PTX per (source, architecture) per process,
//! and a missing libnvrtc reported as an error (cudarc panics when it cannot load the library;
//! the fast paths then keep burn's kernels) rather than a crash.
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The PTX of `source` (named `name` in compiler messages) for `--gpu-architecture=arch` plus
/// `options`, compiled on first use; the error is the compiler's log or why it could not run.
pub fn compile(
    name: &'static str,
    source: &'static str,
    arch: &str,
    options: &[&str],
) -> Result<Ptx, String> {
    type Key = (&'static str, String);
    static CACHE: OnceLock<Mutex<HashMap<Key, Ptx>>> = OnceLock::new();
    let key = (name, arch.to_string());
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(ptx) = cache.get(&key) {
        return Ok(ptx.clone());
    }
    let mut all = vec![format!("--gpu-architecture={arch}")];
    all.extend(options.iter().map(|o| o.to_string()));
    let opts = CompileOptions {
        options: all,
        name: Some(name.into()),
        ..Default::default()
    };
    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compile_ptx_with_opts(source, opts)
    }))
    .map_err(|_| "the NVRTC library (libnvrtc) could not be loaded".to_string())?;
    let ptx = compiled.map_err(|e| match &e {
        CompileError::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}: {}", log.to_string_lossy().trim())
        }
        other => format!("{other:?}"),
    })?;
    tracing::debug!("compiled {name} for {arch}");
    cache.insert(key, ptx.clone());
    Ok(ptx)
}
