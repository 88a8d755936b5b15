//! `CudaAttention`: flash attention (`softmax(q·kᵀ·scale)·v`, no mask) on burn-cuda tensors
//! through weft's own kernels: `kernels/flash_attn.cu` (mma.sync, any sm_80+ GPU) and, on
//! Hopper, `kernels/flash_attn_sm90.cu` (wgmma), both with `kernels/flash_common.cuh` prepended.
//!
//! Which runs: [`FlashKernel::for_device`] (wgmma on sm_90 unless `WEFT_FLASH_KERNEL=mma`). The
//! wgmma kernel must first match an f32 reference computed on the host on small problems off its
//! tile sizes, both dtypes and head dims ([`attention_plan::self_test_problems`], run by
//! [`CudaAttention::new`]); if it cannot be built, the mma kernel runs, and if it is off for a
//! dtype, the mma kernel runs for that dtype; a warning says why.
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
    self, AttentionPlanError, AttentionProblem, AttnDType, FLASH_ATTN_CU, FLASH_ATTN_SM90_CU,
    FlashKernel, View4,
};
use super::fence;
use crate::backend::CudaBackend;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    sys as drv,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use thiserror::Error;

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

/// PTX of one kernel per NVRTC architecture, compiled once per process.
fn compiled_ptx(kernel: FlashKernel, arch: &str) -> Result<Ptx, AttentionError> {
    let (name, source) = match kernel {
        FlashKernel::Mma => ("flash_attn.cu", FLASH_ATTN_CU),
        FlashKernel::Wgmma => ("flash_attn_sm90.cu", FLASH_ATTN_SM90_CU),
    };
    super::nvrtc::compile(name, source, arch, attention_plan::NVRTC_OPTIONS).map_err(|message| {
        AttentionError::Compile {
            arch: arch.to_string(),
            message,
        }
    })
}

/// The largest difference the wgmma kernel may show against the f32 reference in the self-test:
/// it rounds P to 16 bits and the output (|o| < 2 there) once, so it is off by a few steps of
/// bf16 (2⁻⁸ relative) at most; a wrong layout is off by O(1).
const SELF_TEST_TOLERANCE: f32 = 2.0 / 64.0;

/// The flash kernel on one device. Cheap to share (`&self` everywhere).
pub struct CudaAttention {
    device: CudaDevice,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The kernel this instance runs for bf16 and for f16 inputs (each dtype's wgmma
    /// instantiations are used only if they passed the self-test).
    kernels: [FlashKernel; 2],
    /// Entry point name → function, for every loaded kernel (the modules stay loaded while these
    /// live).
    functions: HashMap<&'static str, CudaFunction>,
    /// Serializes launches on our stream with their waits.
    launch: Mutex<()>,
}

impl CudaAttention {
    /// Compiles (once per process) and loads the kernels on device `index`, sharing burn-cuda's
    /// primary context, and picks the one to run (see the module doc).
    pub fn new(index: usize) -> Result<Self, AttentionError> {
        let context = CudaContext::new(index).map_err(driver_err("context"))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_err("compute capability"))?;
        let allowed = context
            .attribute(
                drv::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver_err("shared memory limit"))? as usize;
        let mut functions = HashMap::new();
        load_kernel(
            &context,
            FlashKernel::Mma,
            major,
            minor,
            allowed,
            &mut functions,
        )?;
        let stream = context.new_stream().map_err(driver_err("stream"))?;
        let mut attention = CudaAttention {
            device: CudaDevice { index },
            context,
            stream,
            kernels: [FlashKernel::Mma; 2],
            functions,
            launch: Mutex::new(()),
        };
        let requested = std::env::var("WEFT_FLASH_KERNEL").ok();
        if let Some(other) = requested
            .as_deref()
            .filter(|r| !matches!(*r, "mma" | "wgmma"))
        {
            tracing::warn!("WEFT_FLASH_KERNEL={other} is neither `mma` nor `wgmma`; ignored");
        }
        if FlashKernel::for_device(major, minor, requested.as_deref()) == FlashKernel::Wgmma {
            let checked = load_kernel(
                &attention.context,
                FlashKernel::Wgmma,
                major,
                minor,
                allowed,
                &mut attention.functions,
            )
            .and_then(|()| attention.wgmma_differences());
            match checked {
                Ok(worst) => {
                    for (slot, (dtype, diff)) in attention.kernels.iter_mut().zip(worst) {
                        if diff <= SELF_TEST_TOLERANCE {
                            *slot = FlashKernel::Wgmma;
                        } else {
                            tracing::warn!(
                                "the wgmma flash kernel is off the reference by {diff} for {} \
                                 (tolerance {SELF_TEST_TOLERANCE}); using the mma kernel for it",
                                dtype.name()
                            );
                        }
                    }
                }
                Err(e) => {
                    // A fault in the kernel would poison the context burn shares: then there is
                    // no kernel to fall back to, and the error is the device's.
                    attention
                        .stream
                        .synchronize()
                        .map_err(driver_err("the device after the wgmma self-test"))?;
                    tracing::warn!("wgmma flash kernel unavailable ({e}); using the mma kernel")
                }
            }
        }
        tracing::debug!(
            "flash attention on cuda:{index}: {} kernel for bf16, {} for f16",
            attention.kernels[0].name(),
            attention.kernels[1].name()
        );
        Ok(attention)
    }

    /// The kernel this instance runs for inputs of `dtype`.
    pub fn kernel(&self, dtype: AttnDType) -> FlashKernel {
        self.kernels[dtype_slot(dtype)]
    }

    /// Runs the wgmma kernel on [`attention_plan::self_test_problems`] (fixed pseudo-random
    /// inputs) and returns, for bf16 and for f16, its largest difference to the f32 reference
    /// computed here on the host (infinite for a NaN).
    fn wgmma_differences(&self) -> Result<[(AttnDType, f32); 2], AttentionError> {
        let heads = 2usize;
        let mut worst = [(AttnDType::Bf16, 0.0f32), (AttnDType::F16, 0.0f32)];
        for (dtype, head_dim, seq_q, seq_kv) in attention_plan::self_test_problems() {
            let (n_q, n_kv) = (heads * seq_q * head_dim, heads * seq_kv * head_dim);
            let seed = (head_dim * 1_000_003 + seq_q * 1009 + seq_kv) as u64;
            let host = [
                attention_plan::test_values(dtype, n_q, seed),
                attention_plan::test_values(dtype, n_kv, seed + 1),
                attention_plan::test_values(dtype, n_kv, seed + 2),
            ];
            let scale = 1.0 / (head_dim as f32).sqrt();
            let as_f32 = |bits: &[u16]| -> Vec<f32> {
                bits.iter()
                    .map(|&b| attention_plan::bits_to_f32(dtype, b))
                    .collect()
            };
            let reference = attention_plan::reference_attention(
                &as_f32(&host[0]),
                &as_f32(&host[1]),
                &as_f32(&host[2]),
                [1, heads, seq_q, seq_kv, head_dim],
                scale,
            )
            .ok_or_else(|| AttentionError::Driver("self-test sizes".into()))?;
            let upload = |bits: &[u16]| {
                self.stream
                    .clone_htod(bits)
                    .map_err(driver_err("self-test upload"))
            };
            let (q, k, v) = (upload(&host[0])?, upload(&host[1])?, upload(&host[2])?);
            let mut out = self
                .stream
                .alloc_zeros::<u16>(n_q)
                .map_err(driver_err("self-test output"))?;
            let problem = attention_plan::plan(
                View4::contiguous([1, heads, seq_q, head_dim]),
                View4::contiguous([1, heads, seq_kv, head_dim]),
                View4::contiguous([1, heads, seq_kv, head_dim]),
                dtype,
            )?;
            let contiguous = [n_q as i64, (seq_q * head_dim) as i64, head_dim as i64];
            {
                let (pq, _rq) = q.device_ptr(&self.stream);
                let (pk, _rk) = k.device_ptr(&self.stream);
                let (pv, _rv) = v.device_ptr(&self.stream);
                let (po, _ro) = out.device_ptr_mut(&self.stream);
                let scale_log2 = attention_plan::scale_log2(scale)?;
                self.launch_raw(
                    FlashKernel::Wgmma,
                    &problem,
                    [pq, pk, pv, po],
                    contiguous,
                    scale_log2,
                )?;
            }
            let result = self
                .stream
                .clone_dtoh(&out)
                .map_err(driver_err("self-test download"))?;
            let slot = &mut worst[dtype_slot(dtype)].1;
            *slot = slot.max(attention_plan::max_difference(dtype, &result, &reference));
        }
        Ok(worst)
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
    /// dtype (a view of `[B, Sq, H, D]` memory, so that merging the heads costs no copy), is
    /// ordered before burn's later work when this returns ([`super::fence`]).
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

        // The output is written heads-interleaved, `[B, Sq, H, D]` in memory, and handed out as
        // its `[B, H, Sq, D]` view: merging the heads afterwards (`swap_dims(1, 2)` and a
        // reshape to `[B, Sq, H·D]`, what every transformer does next) is then free.
        let [b, h, sq, d] = problem.out_shape();
        let merged = Tensor::<CudaBackend, 4>::empty([b, sq, h, d], (&self.device, tq.dtype));
        let tout = primitive(&merged);
        let out_view = view("output", &tout)?;
        if out_view != View4::contiguous([b, sq, h, d]) {
            return Err(AttentionPlanError::Layout {
                what: "output",
                shape: out_view.shape,
                strides: out_view.strides,
            }
            .into());
        }
        let out_strides = [(sq * h * d) as i64, d as i64, (h * d) as i64];
        let out = merged.swap_dims(1, 2);
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
            out_strides,
            scale_log2,
            out,
            _inputs: [tq, tk, tv],
        })
    }

    fn launch_kernel(&self, call: &Call) -> Result<(), AttentionError> {
        let Call {
            problem,
            pointers,
            out_strides,
            scale_log2,
            ..
        } = call;
        let kernel = self.kernel(problem.dtype);
        self.launch_raw(kernel, problem, *pointers, *out_strides, *scale_log2)
    }

    /// Queues `kernel` on `problem` with the device pointers of q, k, v and the output, whose
    /// `[B, H, Sq, D]` batch, head and sequence strides are `out_strides` (unit-stride rows).
    fn launch_raw(
        &self,
        kernel: FlashKernel,
        problem: &AttentionProblem,
        [pq, pk, pv, po]: [u64; 4],
        [o_sb, o_sh, o_ss]: [i64; 3],
        scale_log2: f32,
    ) -> Result<(), AttentionError> {
        let shape = problem.launch(kernel);
        let function = self
            .functions
            .get(shape.kernel)
            .ok_or_else(|| AttentionError::Driver(format!("kernel {} not loaded", shape.kernel)))?;
        let [q_sb, q_sh, q_ss] = problem.q;
        let [k_sb, k_sh, k_ss] = problem.k;
        let [v_sb, v_sh, v_ss] = problem.v;
        let heads = problem.heads as i32;
        let (seq_q, seq_kv) = (problem.seq_q as i32, problem.seq_kv as i32);
        self.context.bind_to_thread().map_err(driver_err("bind"))?;
        let mut args = self.stream.launch_builder(function);
        args.arg(&pq).arg(&pk).arg(&pv).arg(&po);
        args.arg(&q_sb).arg(&q_sh).arg(&q_ss);
        args.arg(&k_sb).arg(&k_sh).arg(&k_ss);
        args.arg(&v_sb).arg(&v_sh).arg(&v_ss);
        args.arg(&o_sb).arg(&o_sh).arg(&o_ss);
        args.arg(&heads).arg(&seq_q).arg(&seq_kv).arg(&scale_log2);
        let config = LaunchConfig {
            grid_dim: shape.grid,
            block_dim: shape.block,
            shared_mem_bytes: shape.shared_bytes,
        };
        // SAFETY: the arguments match the entry points' signature in flash_attn.cu and
        // flash_attn_sm90.cu one for one (four device pointers, twelve i64 strides, three i32
        // sizes, one f32). The pointers are device buffers of the shapes and strides
        // `attention_plan::plan` checked (every address the kernels form is inside them: rows
        // past the sequence are clamped and zero-filled, output rows past it are not stored),
        // 16-byte aligned (checked for burn's buffers; cudarc's allocations are 256-byte
        // aligned). The work writing the inputs comes first on the device: burn's, through the
        // fence taken before the launch (`fence::before`: a device-side wait, or a host sync
        // without fences), the self-test's, on this same stream. The buffers outlive the kernel's
        // use: burn reuses freed memory only after the fence released behind the kernel
        // (`fence::after`, or a host sync of this stream), and the self-test's cudarc buffers are
        // freed in this stream's order. The dynamic shared memory was allowed for the function
        // in `load_kernel`.
        unsafe { args.launch(config) }.map_err(driver_err("launching the flash kernel"))?;
        Ok(())
    }
}

/// The index of `dtype` in [`CudaAttention`]'s per-dtype kernel choice.
fn dtype_slot(dtype: AttnDType) -> usize {
    match dtype {
        AttnDType::Bf16 => 0,
        AttnDType::F16 => 1,
    }
}

/// Compiles `kernel` for the device, loads its module and enters its functions (with their
/// shared-memory allowance) into `functions`.
fn load_kernel(
    context: &Arc<CudaContext>,
    kernel: FlashKernel,
    major: i32,
    minor: i32,
    allowed: usize,
    functions: &mut HashMap<&'static str, CudaFunction>,
) -> Result<(), AttentionError> {
    let arch = kernel.nvrtc_arch(major, minor)?;
    let module = context
        .load_module(compiled_ptx(kernel, &arch)?)
        .map_err(driver_err("loading the flash-attention PTX"))?;
    for (name, head_dim) in kernel.kernels() {
        let need = kernel.shared_bytes(head_dim);
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
    Ok(())
}

impl Drop for CudaAttention {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
    }
}

/// One checked launch: the problem, its device pointers, and the tensors behind them (held until
/// the kernel is queued and fenced: burn's later work, reuse of their memory included, waits for
/// the fence).
struct Call {
    problem: AttentionProblem,
    pointers: [u64; 4],
    /// Batch, head and sequence strides of the output, in elements.
    out_strides: [i64; 3],
    scale_log2: f32,
    out: Tensor<CudaBackend, 4>,
    _inputs: [CubeTensor<CudaRuntime>; 3],
}

fn primitive(t: &Tensor<CudaBackend, 4>) -> CubeTensor<CudaRuntime> {
    t.clone().into_primitive().tensor()
}
