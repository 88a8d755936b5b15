//! `CudaDequant`: ggml blocks already on the device (the `U8` tensors of
//! `DeviceWeight::Blocks`) dequantized into burn-cuda float tensors by the kernels of
//! `kernels/dequant.cu`, bit for bit the CPU dequantizer's f32 values rounded to the output type.
//!
//! The CUDA C source is compiled by NVRTC for the device's compute capability the first time a
//! device of that architecture is used, and the PTX is kept for the rest of the process; each
//! `CudaDequant` loads it into burn-cuda's primary context (which `CudaContext::new(index)`
//! shares). The host-side checks and launch geometry live in [`super::dequant_plan`].
//!
//! Ordering, as in [`super::gemm`]: cubecl's streams are private, so the kernels run on a stream
//! of ours. burn's queue is synchronized *after* the output is allocated and *before* the kernel
//! is queued (the blocks are written, and the output buffer, possibly recycled from a freed
//! tensor, is no longer in use); our stream is synchronized before the output goes back to burn.
//! The input is held until that wait. [`CudaDequant::enqueue`] defers the wait to
//! [`CudaDequant::wait`], for dequantizing many weights with one wait.
//! [`CudaDequant::dequantize_ordered`] orders both sides with a stream fence instead, without
//! host waits: a quantized-resident model dequantizes each weight just before its product.
use super::dequant_plan::{self, GpuDequantError, LaunchPlan, OutDType};
use crate::backend::CudaBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg, sys};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use weft_formats::gguf::GgmlType;

fn driver_err(
    what: impl Into<String>,
) -> impl FnOnce(cudarc::driver::DriverError) -> GpuDequantError {
    let what = what.into();
    move |e| GpuDequantError::Driver {
        what,
        message: format!("{e:?}"),
    }
}

fn burn_err<E: std::fmt::Debug>(what: impl Into<String>) -> impl FnOnce(E) -> GpuDequantError {
    let what = what.into();
    move |e| GpuDequantError::Burn {
        what,
        message: format!("{e:?}"),
    }
}

/// The PTX of `kernels/dequant.cu` per GPU architecture, compiled once per process.
fn ptx_for(arch: &str) -> Result<Ptx, GpuDequantError> {
    let options = dequant_plan::nvrtc_options(arch);
    // The first option is the architecture, which `nvrtc::compile` adds itself.
    let rest: Vec<&str> = options.iter().skip(1).map(String::as_str).collect();
    super::nvrtc::compile("dequant.cu", dequant_plan::KERNEL_SOURCE, arch, &rest).map_err(
        |message| GpuDequantError::Compile {
            arch: arch.to_string(),
            message,
        },
    )
}

/// A launch whose checks passed: the input held, the output allocated.
struct Prepared {
    plan: LaunchPlan,
    input: CubeTensor<CudaRuntime>,
    in_ptr: u64,
    out: Tensor<CudaBackend, 1>,
    out_ptr: u64,
}

/// The dequantization kernels on one device. Cheap to share (`&self` everywhere).
pub struct CudaDequant {
    device: CudaDevice,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    functions: HashMap<(GgmlType, OutDType), CudaFunction>,
    /// Inputs of queued launches, kept alive until [`CudaDequant::wait`].
    pending: Mutex<Vec<CubeTensor<CudaRuntime>>>,
}

impl CudaDequant {
    /// The kernels on device `index`, in burn-cuda's primary context. Compiles them with NVRTC
    /// on the first call for this GPU architecture.
    pub fn new(index: usize) -> Result<Self, GpuDequantError> {
        let what = format!("cuda:{index}");
        let context = CudaContext::new(index).map_err(driver_err(format!("{what}: context")))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_err(format!("{what}: compute capability")))?;
        let arch = dequant_plan::gpu_arch(major, minor);
        let module = context
            .load_module(ptx_for(&arch)?)
            .map_err(driver_err(format!("{what}: loading the {arch} kernels")))?;
        let mut functions = HashMap::new();
        for (ty, out, name) in dequant_plan::all_kernels() {
            let function = module
                .load_function(&name)
                .map_err(driver_err(format!("{ty}: kernel {name}")))?;
            functions.insert((ty, out), function);
        }
        let stream = context
            .new_stream()
            .map_err(driver_err(format!("{what}: stream")))?;
        Ok(CudaDequant {
            device: CudaDevice { index },
            context,
            stream,
            arch,
            functions,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The process's `CudaDequant` for device `index`, made on first use.
    pub fn shared(index: usize) -> Result<Arc<Self>, GpuDequantError> {
        static SHARED: OnceLock<Mutex<HashMap<usize, Arc<CudaDequant>>>> = OnceLock::new();
        let mut shared = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(d) = shared.get(&index) {
            return Ok(d.clone());
        }
        let d = Arc::new(CudaDequant::new(index)?);
        shared.insert(index, d.clone());
        Ok(d)
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The architecture the kernels were compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Dequantizes `blocks` (a contiguous `U8` tensor: the raw GGUF bytes of one tensor of type
    /// `ty`, `n_elements` elements) into a new 1-D tensor of `dtype` (F32, F16 or BF16). The
    /// result is ready for burn when this returns. [`GpuDequantError::Unsupported`]: no kernel
    /// for `ty`, dequantize on the CPU instead.
    pub fn dequantize(
        &self,
        ty: GgmlType,
        blocks: &Tensor<CudaBackend, 1, Int>,
        n_elements: usize,
        dtype: DType,
    ) -> Result<Tensor<CudaBackend, 1>, GpuDequantError> {
        let out = self.enqueue(ty, blocks, n_elements, dtype)?;
        self.wait()?;
        Ok(out)
    }

    /// [`Self::dequantize`] without a host wait: the kernel is ordered after burn's queue and
    /// burn's later work after the kernel by a stream fence ([`super::fence`]; a host wait only
    /// where fences are off), so a model can dequantize a weight just before using it, on every
    /// forward, without stalling the host. The output is a plain burn tensor, ready for burn.
    pub fn dequantize_ordered(
        &self,
        ty: GgmlType,
        blocks: &Tensor<CudaBackend, 1, Int>,
        n_elements: usize,
        dtype: DType,
    ) -> Result<Tensor<CudaBackend, 1>, GpuDequantError> {
        // The output is allocated before the fence, so burn's last use of its memory is ordered
        // before the kernel (as the GEMM does).
        let prepared = self.buffers(ty, blocks, n_elements, dtype)?;
        let fence_err = |e: super::fence::FenceError| GpuDequantError::Burn {
            what: format!("{ty}: ordering"),
            message: e.to_string(),
        };
        let ticket = super::fence::before(&self.device, &self.stream).map_err(fence_err)?;
        let launched = self.launch(&prepared);
        // Released even when the launch failed, so burn's stream is never left waiting.
        super::fence::after(ticket, &self.stream).map_err(fence_err)?;
        launched?;
        // With the fence released, burn reuses the input's memory only after the kernel.
        drop(prepared.input);
        Ok(prepared.out)
    }

    /// Queues a dequantization without waiting for it. The output must not be used (by burn or
    /// anyone) nor dropped (burn would recycle its buffer) before [`CudaDequant::wait`] returns;
    /// the input is kept alive until then.
    pub fn enqueue(
        &self,
        ty: GgmlType,
        blocks: &Tensor<CudaBackend, 1, Int>,
        n_elements: usize,
        dtype: DType,
    ) -> Result<Tensor<CudaBackend, 1>, GpuDequantError> {
        let prepared = self.prepare(ty, blocks, n_elements, dtype)?;
        self.launch(&prepared)?;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(prepared.input);
        Ok(prepared.out)
    }

    /// Makes the kernels queued from now on wait, on the device, for the work queued on `stream`
    /// so far (an upload into the blocks they read), without blocking the host.
    pub fn wait_for(&self, stream: &CudaStream) -> Result<(), GpuDequantError> {
        let event = stream
            .record_event(None)
            .map_err(driver_err("recording the upload's event"))?;
        self.stream
            .wait(&event)
            .map_err(driver_err("ordering after the upload"))
    }

    /// Waits for every queued dequantization and releases the inputs held for them.
    pub fn wait(&self) -> Result<(), GpuDequantError> {
        let result = self
            .stream
            .synchronize()
            .map_err(driver_err("waiting for the dequantization kernels"));
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        result
    }

    /// For `weft bench dequant-gpu`: runs the kernel `iters` times back to back into one output
    /// (after one warm-up launch) and returns that output and the kernel time per launch in
    /// milliseconds, measured with CUDA events on our stream.
    pub fn time_launches(
        &self,
        ty: GgmlType,
        blocks: &Tensor<CudaBackend, 1, Int>,
        n_elements: usize,
        dtype: DType,
        iters: usize,
    ) -> Result<(Tensor<CudaBackend, 1>, f64), GpuDequantError> {
        let prepared = self.prepare(ty, blocks, n_elements, dtype)?;
        let what = |step: &str| format!("{ty}: timing ({step})");
        let event = || {
            self.context
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_err(what("event")))
        };
        let (start, end) = (event()?, event()?);
        let iters = iters.max(1);
        let timed = (|| {
            self.launch(&prepared)?;
            start
                .record(&self.stream)
                .map_err(driver_err(what("record")))?;
            for _ in 0..iters {
                self.launch(&prepared)?;
            }
            end.record(&self.stream)
                .map_err(driver_err(what("record")))?;
            start.elapsed_ms(&end).map_err(driver_err(what("elapsed")))
        })();
        // Whatever happened, nothing queued may outlive the buffers.
        let synced = self
            .stream
            .synchronize()
            .map_err(driver_err(what("synchronize")));
        let ms = timed?;
        synced?;
        drop(prepared.input);
        Ok((prepared.out, f64::from(ms) / iters as f64))
    }

    /// Checks the input, allocates the output and drains burn's queue.
    /// [`Self::buffers`], then burn's queue drained: the blocks are written and the output buffer
    /// (possibly recycled from a freed tensor) is no longer in use.
    fn prepare(
        &self,
        ty: GgmlType,
        blocks: &Tensor<CudaBackend, 1, Int>,
        n_elements: usize,
        dtype: DType,
    ) -> Result<Prepared, GpuDequantError> {
        let prepared = self.buffers(ty, blocks, n_elements, dtype)?;
        CudaBackend::sync(&self.device).map_err(burn_err(format!("{ty}: sync")))?;
        Ok(prepared)
    }

    /// Checks the input, allocates the output and finds both buffers' device pointers. Nothing
    /// is ordered yet: the caller orders the launch after burn's work on both.
    fn buffers(
        &self,
        ty: GgmlType,
        blocks: &Tensor<CudaBackend, 1, Int>,
        n_elements: usize,
        dtype: DType,
    ) -> Result<Prepared, GpuDequantError> {
        let out_dtype = match dtype {
            DType::F32 => OutDType::F32,
            DType::F16 => OutDType::F16,
            DType::BF16 => OutDType::BF16,
            other => {
                return Err(GpuDequantError::OutputDType {
                    ty: ty.name(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let input: CubeTensor<CudaRuntime> = blocks.clone().into_primitive();
        if input.dtype != DType::U8 || !input.is_contiguous() || input.qparams.is_some() {
            return Err(GpuDequantError::Input {
                ty: ty.name(),
                what: format!(
                    "{:?} of shape {:?}, strides {:?}",
                    input.dtype,
                    input.meta.shape(),
                    input.meta.strides()
                ),
            });
        }
        let in_bytes = input.meta.shape().iter().product::<usize>() as u64;
        let plan = dequant_plan::plan(ty, out_dtype, n_elements as u64, in_bytes)?;
        let out = Tensor::<CudaBackend, 1>::empty([n_elements], (&self.device, dtype));
        if plan.grid == 0 {
            return Ok(Prepared {
                plan,
                input,
                in_ptr: 0,
                out,
                out_ptr: 0,
            });
        }
        let output: CubeTensor<CudaRuntime> = out.clone().into_primitive().tensor();
        let ptr = |t: &CubeTensor<CudaRuntime>, what: &str, needed: u64| {
            let resource = t
                .client
                .get_resource(t.handle.clone())
                .map_err(burn_err(format!("{ty}: {what} buffer")))?;
            let resource = resource.resource();
            if resource.size < needed {
                return Err(GpuDequantError::Burn {
                    what: format!("{ty}: {what} buffer"),
                    message: format!("{} bytes, {needed} needed", resource.size),
                });
            }
            Ok(resource.ptr)
        };
        let in_ptr = ptr(&input, "input", plan.in_bytes)?;
        let out_ptr = ptr(&output, "output", plan.out_bytes)?;
        dequant_plan::check_alignment(ty, in_ptr)?;
        Ok(Prepared {
            plan,
            input,
            in_ptr,
            out,
            out_ptr,
        })
    }

    /// Queues one kernel launch of a prepared dequantization on our stream.
    fn launch(&self, p: &Prepared) -> Result<(), GpuDequantError> {
        if p.plan.grid == 0 {
            return Ok(());
        }
        let ty = p.plan.ty;
        let function =
            self.functions
                .get(&(ty, p.plan.out))
                .ok_or_else(|| GpuDequantError::Unsupported {
                    ty: ty.name(),
                    supported: dequant_plan::supported_names(),
                })?;
        let cfg = LaunchConfig {
            grid_dim: (p.plan.grid, 1, 1),
            block_dim: (p.plan.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = p.plan.n_elements;
        self.context
            .bind_to_thread()
            .map_err(driver_err(format!("{ty}: bind")))?;
        let mut args = self.stream.launch_builder(function);
        args.arg(&p.in_ptr).arg(&p.out_ptr).arg(&n);
        // SAFETY: the kernel's signature is (const u8 *in, void *out, u64 n), matching the three
        // 8-byte arguments. `in_ptr` is a live device buffer of at least `plan.in_bytes` bytes (a
        // contiguous U8 tensor of exactly the blocks of `n` elements, per `dequant_plan::plan`,
        // aligned as `check_alignment` requires) and `out_ptr` one of at least `plan.out_bytes`
        // (allocated by burn-cuda for this call); both sizes are checked against burn's
        // resources in `buffers`. The kernel reads only `[in, in + in_bytes)` and writes only
        // `[out, out + out_bytes)`. burn's work on both is finished before the kernel starts
        // (the sync in `prepare`, or the fence `dequantize_ordered` takes right before this
        // launch); the input stays alive in `pending` (or in the caller's `Prepared`) and the
        // output in the caller's tensor until our stream is synchronized or the fence released.
        unsafe { args.launch(cfg) }.map_err(driver_err(format!("{ty}: launch")))?;
        Ok(())
    }
}

impl Drop for CudaDequant {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }
}
