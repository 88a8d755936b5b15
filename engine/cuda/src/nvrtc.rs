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

/// Every kernel source compiles with the options its device code uses, for the architectures
/// weft runs on, and has its entry points. Needs libnvrtc only (no GPU, no burn-cuda):
/// `cargo test -p weft-cuda --features nvrtc nvrtc -- --ignored` (CI runs it, `.ci/run`).
#[cfg(test)]
mod tests {
    use super::compile;
    use crate::attention_plan::{FLASH_ATTN_CU, FLASH_ATTN_SM90_CU, FlashKernel, NVRTC_OPTIONS};
    use crate::{dequant_plan, fence_plan, fused_plan};

    /// The PTX text, or a panic with the compiler's log.
    fn ptx(name: &'static str, source: &'static str, arch: &str, options: &[&str]) -> String {
        compile(name, source, arch, options)
            .unwrap_or_else(|e| panic!("{name} for {arch}: {e}"))
            .to_src()
    }

    fn assert_entries<'a>(text: &str, what: &str, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "{what}: {name} missing"
            );
        }
    }

    #[test]
    #[ignore = "needs libnvrtc"]
    fn nvrtc_compiles_every_flash_attention_instantiation() {
        for (kernel, name, source, arch) in [
            (FlashKernel::Mma, "flash_attn.cu", FLASH_ATTN_CU, "sm_80"),
            (FlashKernel::Mma, "flash_attn.cu", FLASH_ATTN_CU, "sm_90"),
            (
                FlashKernel::Wgmma,
                "flash_attn_sm90.cu",
                FLASH_ATTN_SM90_CU,
                "sm_90a",
            ),
        ] {
            let text = ptx(name, source, arch, NVRTC_OPTIONS);
            assert_entries(&text, arch, kernel.kernels().iter().map(|(n, _)| *n));
            // A runtime-indexed register array would land in local memory. (Register spills
            // are ptxas's and do not show in PTX.)
            assert!(!text.contains(".local"), "{arch}: local-memory array");
        }
    }

    #[test]
    #[ignore = "needs libnvrtc"]
    fn nvrtc_compiles_the_dequant_kernels() {
        for arch in ["sm_80", "sm_90"] {
            let options = dequant_plan::nvrtc_options(arch);
            // The first option is the architecture, which `compile` adds itself.
            let rest: Vec<&str> = options.iter().skip(1).map(String::as_str).collect();
            let text = ptx("dequant.cu", dequant_plan::KERNEL_SOURCE, arch, &rest);
            assert!(text.contains(".entry "), "{arch}: no entry point");
            assert!(!text.contains(".local"), "{arch}: local-memory array");
        }
    }

    #[test]
    #[ignore = "needs libnvrtc"]
    fn nvrtc_compiles_the_fused_kernels() {
        for arch in ["sm_80", "sm_90"] {
            let text = ptx(
                "fused.cu",
                fused_plan::KERNEL_SOURCE,
                arch,
                fused_plan::NVRTC_OPTIONS,
            );
            let names: Vec<String> = fused_plan::all_kernels().collect();
            assert_entries(&text, arch, names.iter().map(String::as_str));
        }
    }

    #[test]
    #[ignore = "needs libnvrtc"]
    fn nvrtc_compiles_the_fence_kernels() {
        let text = ptx(
            "fence.cu",
            fence_plan::KERNEL_SOURCE,
            "sm_80",
            fence_plan::NVRTC_OPTIONS,
        );
        assert_entries(&text, "sm_80", fence_plan::KERNELS);
    }
}
