//! `CudaAttention`: flash attention (`softmax(q·kᵀ·scale)·v`, no mask) on burn-cuda tensors
//! through weft's own kernel, `kernels/flash_attn.cu`.
//!
//! burn-cuda 0.21's attention takes 7.3 ms (f16) / 78.5 ms (bf16) for Flux's 1×24×4608×128 on
//! the H100 where torch's SDPA takes 0.40 ms (issue 6); this is the fast path, measured by
//! `weft bench attention`. The kernel is compiled by NVRTC for the device's compute capability
//! once per process (the PTX is cached per architecture, the loaded module per device), and runs
//! on burn's buffers: device pointers from `client.get_resource(handle)` (cubecl-cuda runs on the
//! primary context, which `CudaContext::new(index)` shares), views checked by
//! [`super::attention_plan`].
//!
//! Ordering is [`super::gemm`]'s: a [`super::fence`] taken after the output is allocated and
//! before the kernel is queued on our stream (inputs written, output buffer free), released
//! after it (burn's later work waits for it on the device; host waits without a fence).
//!
//! Unsupported dtypes, head dims or views are errors ([`AttentionError::Plan`]); the caller falls
//! back to burn's attention.
use super::attention_plan::{
    self, AttentionPlanError, AttentionProblem, AttnDType, KERNELS, View4,
};
use super::fence;
use crate::patcher::cuda::CudaBackend;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg, sys as drv,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use thiserror::Error;

/// The kernel's source, compiled at run time.
pub const FLASH_ATTN_CU: &str = include_str!("kernels/flash_attn.cu");

/// Errors of the flash-attention fast path.
#[derive(Debug, Error)]
pub enum AttentionError {
    #[error(transparent)]
    Plan(#[from] AttentionPlanError),
    #[error("NVRTC ({arch}): {message}")]
    Compile { arch: String, message: String },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("burn-cuda: {0}")]
    Burn(String),
    #[error(
        "the kernel needs {need} bytes of shared memory per block; the device allows {allowed}"
    )]
    SharedMemory { need: usize, allowed: usize },
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> AttentionError + '_ {
    move |e| AttentionError::Driver(format!("{what}: {e:?}"))
}

/// PTX per NVRTC architecture, compiled once per process.
fn compiled_ptx(arch: &str) -> Result<Ptx, AttentionError> {
    super::nvrtc::compile("flash_attn.cu", FLASH_ATTN_CU, arch, &["--std=c++17"]).map_err(
        |message| AttentionError::Compile {
            arch: arch.to_string(),
            message,
        },
    )
}

/// The flash kernel on one device. Cheap to share (`&self` everywhere).
pub struct CudaAttention {
    device: CudaDevice,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Entry point name → function (the module stays loaded while these live).
    functions: HashMap<&'static str, CudaFunction>,
    /// Serializes launches on our stream with their waits.
    launch: Mutex<()>,
}

impl CudaAttention {
    /// Compiles (once per process) and loads the kernel on device `index`, sharing burn-cuda's
    /// primary context.
    pub fn new(index: usize) -> Result<Self, AttentionError> {
        let context = CudaContext::new(index).map_err(driver_err("context"))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_err("compute capability"))?;
        let arch = attention_plan::nvrtc_arch(major, minor)?;
        let allowed = context
            .attribute(
                drv::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver_err("shared memory limit"))? as usize;
        let module = context
            .load_module(compiled_ptx(&arch)?)
            .map_err(driver_err("loading the flash-attention PTX"))?;
        let mut functions = HashMap::new();
        for (name, head_dim) in KERNELS {
            let need = attention_plan::shared_bytes(head_dim);
            if need > allowed {
                return Err(AttentionError::SharedMemory { need, allowed });
            }
            let function = module.load_function(name).map_err(driver_err(name))?;
            function
                .set_attribute(
                    drv::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    need as i32,
                )
                .map_err(driver_err("shared memory attribute"))?;
            functions.insert(name, function);
        }
        let stream = context.new_stream().map_err(driver_err("stream"))?;
        Ok(CudaAttention {
            device: CudaDevice { index },
            context,
            stream,
            functions,
            launch: Mutex::new(()),
        })
    }

    /// The process's instance for device `index`, made on first use.
    pub fn shared(index: usize) -> Result<Arc<Self>, AttentionError> {
        static INSTANCES: OnceLock<Mutex<HashMap<usize, Arc<CudaAttention>>>> = OnceLock::new();
        let instances = INSTANCES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut instances = instances.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = instances.get(&index) {
            return Ok(found.clone());
        }
        let made = Arc::new(CudaAttention::new(index)?);
        instances.insert(index, made.clone());
        Ok(made)
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// `softmax(q·kᵀ·scale)·v` for `q [B, H, Sq, D]`, `k, v [B, H, Skv, D]` (bf16 or f16, one
    /// dtype, D = 64 or 128, head dim unit-stride). The result, `[B, H, Sq, D]` in the inputs'
    /// dtype, is ordered before burn's later work when this returns ([`super::fence`]).
    pub fn attention(
        &self,
        q: Tensor<CudaBackend, 4>,
        k: Tensor<CudaBackend, 4>,
        v: Tensor<CudaBackend, 4>,
        scale: f32,
    ) -> Result<Tensor<CudaBackend, 4>, AttentionError> {
        let call = self.prepare(&q, &k, &v, scale)?;
        let _guard = self.launch.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = fence::before(&self.device, &self.stream)
            .map_err(|e| AttentionError::Burn(e.to_string()))?;
        let launched = self.launch_kernel(&call);
        // Burn's later work (and any reuse of the inputs' memory) follows the kernel.
        let ordered =
            fence::after(ticket, &self.stream).map_err(|e| AttentionError::Burn(e.to_string()));
        launched?;
        ordered?;
        Ok(call.out)
    }

    /// Milliseconds per kernel, from CUDA events around `iters` back-to-back launches on the
    /// same inputs and output (after one warm-up launch): the kernel's own speed, without the
    /// waits [`CudaAttention::attention`] makes on both sides. For `weft bench attention`.
    pub fn time_kernel(
        &self,
        q: &Tensor<CudaBackend, 4>,
        k: &Tensor<CudaBackend, 4>,
        v: &Tensor<CudaBackend, 4>,
        scale: f32,
        iters: usize,
    ) -> Result<f64, AttentionError> {
        let call = self.prepare(q, k, v, scale)?;
        self.sync_burn()?;
        let _guard = self.launch.lock().unwrap_or_else(|p| p.into_inner());
        self.launch_kernel(&call)?;
        let timed = Some(drv::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(timed)
            .map_err(driver_err("event"))?;
        for _ in 0..iters {
            self.launch_kernel(&call)?;
        }
        let end = self
            .stream
            .record_event(timed)
            .map_err(driver_err("event"))?;
        let ms = start.elapsed_ms(&end).map_err(driver_err("event timing"))?;
        self.stream
            .synchronize()
            .map_err(driver_err("waiting for the flash kernel"))?;
        Ok(ms as f64 / iters.max(1) as f64)
    }

    fn sync_burn(&self) -> Result<(), AttentionError> {
        // Inputs written and the output buffer free: burn's queue is drained.
        CudaBackend::sync(&self.device).map_err(|e| AttentionError::Burn(format!("sync: {e:?}")))
    }

    /// Checks the views, allocates the output and resolves the device pointers.
    fn prepare(
        &self,
        q: &Tensor<CudaBackend, 4>,
        k: &Tensor<CudaBackend, 4>,
        v: &Tensor<CudaBackend, 4>,
        scale: f32,
    ) -> Result<Call, AttentionError> {
        let (tq, tk, tv) = (primitive(q), primitive(k), primitive(v));
        if tq.dtype != tk.dtype || tq.dtype != tv.dtype {
            return Err(AttentionPlanError::DTypeMismatch {
                q: tq.dtype,
                k: tk.dtype,
                v: tv.dtype,
            }
            .into());
        }
        let dtype = AttnDType::from_burn(tq.dtype)?;
        for t in [&tq, &tk, &tv] {
            if t.qparams.is_some() {
                return Err(AttentionPlanError::DType(t.dtype).into());
            }
        }
        let view = |what, t: &CubeTensor<CudaRuntime>| {
            View4::from_slices(what, t.meta.shape(), t.meta.strides())
        };
        let problem =
            attention_plan::plan(view("q", &tq)?, view("k", &tk)?, view("v", &tv)?, dtype)?;
        let scale_log2 = attention_plan::scale_log2(scale)?;

        let out = Tensor::<CudaBackend, 4>::empty(problem.out_shape(), (&self.device, tq.dtype));
        let tout = primitive(&out);
        let out_view = view("output", &tout)?;
        if out_view != View4::contiguous(problem.out_shape()) {
            return Err(AttentionPlanError::Layout {
                what: "output",
                shape: out_view.shape,
                strides: out_view.strides,
            }
            .into());
        }
        let ptr =
            |t: &CubeTensor<CudaRuntime>, what: &'static str| -> Result<u64, AttentionError> {
                let resource = t
                    .client
                    .get_resource(t.handle.clone())
                    .map_err(|e| AttentionError::Burn(format!("{what}: {e:?}")))?;
                let p = resource.resource().ptr;
                attention_plan::check_alignment(what, p)?;
                Ok(p)
            };
        let pointers = [
            ptr(&tq, "q")?,
            ptr(&tk, "k")?,
            ptr(&tv, "v")?,
            ptr(&tout, "output")?,
        ];
        Ok(Call {
            problem,
            pointers,
            scale_log2,
            out,
            _inputs: [tq, tk, tv],
        })
    }

    fn launch_kernel(&self, call: &Call) -> Result<(), AttentionError> {
        let Call {
            problem,
            pointers: [pq, pk, pv, po],
            scale_log2,
            ..
        } = call;
        let shape = problem.launch();
        let function = self
            .functions
            .get(shape.kernel)
            .ok_or_else(|| AttentionError::Driver(format!("kernel {} not loaded", shape.kernel)))?;
        let [q_sb, q_sh, q_ss] = problem.q;
        let [k_sb, k_sh, k_ss] = problem.k;
        let [v_sb, v_sh, v_ss] = problem.v;
        let [_, h, s, d] = problem.out_shape().map(|x| x as i64);
        let (o_sb, o_sh, o_ss) = (h * s * d, s * d, d);
        let heads = problem.heads as i32;
        let (seq_q, seq_kv) = (problem.seq_q as i32, problem.seq_kv as i32);
        self.context.bind_to_thread().map_err(driver_err("bind"))?;
        let mut args = self.stream.launch_builder(function);
        args.arg(pq).arg(pk).arg(pv).arg(po);
        args.arg(&q_sb).arg(&q_sh).arg(&q_ss);
        args.arg(&k_sb).arg(&k_sh).arg(&k_ss);
        args.arg(&v_sb).arg(&v_sh).arg(&v_ss);
        args.arg(&o_sb).arg(&o_sh).arg(&o_ss);
        args.arg(&heads).arg(&seq_q).arg(&seq_kv).arg(scale_log2);
        let config = LaunchConfig {
            grid_dim: shape.grid,
            block_dim: shape.block,
            shared_mem_bytes: shape.shared_bytes,
        };
        // SAFETY: the arguments match the entry point's signature in flash_attn.cu one for one
        // (four device pointers, twelve i64 strides, three i32 sizes, one f32). The pointers are
        // burn-cuda buffers of the shapes and strides `attention_plan::plan` checked (every
        // address the kernel forms is inside them: rows past the sequence are clamped and
        // zero-filled, output rows past it are not stored), 16-byte aligned (checked); burn's work
        // on them is finished (callers synchronize burn first) and `call` holds the inputs and
        // the output until our stream is synchronized. The dynamic shared memory was allowed for
        // the function in `new`.
        unsafe { args.launch(config) }.map_err(driver_err("launching the flash kernel"))?;
        Ok(())
    }
}

impl Drop for CudaAttention {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
    }
}

/// One checked launch: the problem, its device pointers, and the tensors behind them (held until
/// the kernel is waited for).
struct Call {
    problem: AttentionProblem,
    pointers: [u64; 4],
    scale_log2: f32,
    out: Tensor<CudaBackend, 4>,
    _inputs: [CubeTensor<CudaRuntime>; 3],
}

fn primitive(t: &Tensor<CudaBackend, 4>) -> CubeTensor<CudaRuntime> {
    t.clone().into_primitive().tensor()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles the kernel for sm_80 and sm_90 with the options `CudaAttention::new` uses and
    /// checks that every entry point is there. Needs libnvrtc (no GPU):
    /// `cargo test -p weft-engine --features cuda nvrtc -- --ignored`.
    #[test]
    #[ignore = "needs libnvrtc"]
    fn nvrtc_compiles_every_instantiation() {
        for arch in ["sm_80", "sm_90"] {
            let ptx = compiled_ptx(arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for (name, _) in KERNELS {
                assert!(
                    text.contains(&format!(".entry {name}(")),
                    "{arch}: {name} missing"
                );
            }
            // A runtime-indexed register array would land in local memory.
            assert!(!text.contains(".local"), "{arch}: local-memory array");
        }
    }
}
