//! `CudaGemm`: matrix products of burn-cuda tensors through cuBLASLt on burn's own buffers.
//!
//! burn-cuda 0.21's matmul reaches 90-225 TFLOP/s on the H100 in bf16 where cuBLASLt reaches
//! 740-790 (torch's speed; docs/BENCHMARKS.md, `weft bench gemm`); this is the fast path. The device pointers come from `client.get_resource(handle)` (cubecl-cuda runs on
//! the primary context, which `CudaContext::new(index)` shares), the row-major ↔ column-major
//! mapping and stride checks from [`super::layout`].
//!
//! Ordering: cubecl's streams are private, so the GEMM runs on a stream of ours, ordered with
//! burn's by a [`super::fence`] taken *after* the output is allocated (so the inputs are written
//! and the output buffer, possibly recycled from a freed tensor, is no longer in use) and
//! released after the GEMM is queued (burn's later work, and any reuse of the inputs' memory,
//! waits for it on the device). Without a fence both halves are host waits, and the inputs are
//! held until the second. [`CudaGemm::enqueue`] leaves the second half to [`CudaGemm::wait`]
//! (a host wait) for back-to-back products.
//!
//! Mixed precision: an f32 left operand times a bf16/f16 right one (f32 activations through the
//! BF16 weights of a CUDA load) is rounded to the right operand's type first and multiplied on
//! its tensor cores, accumulating and writing f32 (torch's autocast does the same rounding).
//!
//! Epilogues: the bias and Flux's GELU (tanh; cuBLASLt's GELU epilogues compute that
//! approximation, as PyTorch's `_addmm_activation(use_gelu=True)` relies on) are applied by the
//! GEMM before it writes D, so `gelu_tanh(x·Wᵀ + b)` is one pass over the output instead of a
//! product and a separate GELU kernel. Burn's fallback applies the same activation in burn's ops.
//!
//! Views that are not BLAS operands (broadcast or overlapping strides), dtypes cuBLASLt is not
//! given here, or other mixes of dtypes fall back to burn's matmul.
use super::activation::Activation;
use super::fence;
use super::layout::{self, Epilogue, LayoutError, LtProblem, View2d};
use crate::backend::CudaBackend;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cudarc::cublaslt::{result as lt, sys as lts};
use cudarc::driver::{CudaContext, CudaStream, sys as drv};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Errors of the GEMM fast path. Layout problems other than a shape mismatch never surface: the
/// product falls back to burn instead.
#[derive(Debug, Error)]
pub enum GemmError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("operands of rank {0}: expected 2-D matrices")]
    Rank(usize),
    #[error("mixed dtypes: {a:?} · {b:?}")]
    DTypeMismatch { a: DType, b: DType },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("cuBLASLt: {0}")]
    Cublas(String),
    #[error("burn-cuda: {0}")]
    Burn(String),
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> GemmError + '_ {
    move |e| GemmError::Driver(format!("{what}: {e:?}"))
}

fn cublas_err(what: &str) -> impl Fn(lt::CublasError) -> GemmError + '_ {
    move |e| GemmError::Cublas(format!("{what}: {e:?}"))
}

/// cuBLASLt's data type for a burn dtype (compute and scale are always f32).
fn lt_dtype(dtype: DType) -> Option<lts::cudaDataType_t> {
    match dtype {
        DType::BF16 => Some(lts::cudaDataType_t::CUDA_R_16BF),
        DType::F16 => Some(lts::cudaDataType_t::CUDA_R_16F),
        DType::F32 => Some(lts::cudaDataType_t::CUDA_R_32F),
        _ => None,
    }
}

fn lt_epilogue(epilogue: Epilogue) -> lts::cublasLtEpilogue_t {
    use lts::cublasLtEpilogue_t as E;
    match epilogue {
        Epilogue::Plain => E::CUBLASLT_EPILOGUE_DEFAULT,
        Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::Gelu => E::CUBLASLT_EPILOGUE_GELU,
        Epilogue::GeluBias => E::CUBLASLT_EPILOGUE_GELU_BIAS,
    }
}

/// Cached per problem: descriptors and the algorithm cuBLASLt's heuristic picked.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    problem: LtProblem,
    /// Operands' type.
    dtype: i32,
    /// Output's (and bias') type.
    out: i32,
    epilogue: Epilogue,
    /// Alignments of first, second, D and bias pointers.
    align: [u32; 4],
}

struct Plan {
    desc: lts::cublasLtMatmulDesc_t,
    first: lts::cublasLtMatrixLayout_t,
    second: lts::cublasLtMatrixLayout_t,
    out: lts::cublasLtMatrixLayout_t,
    algo: lts::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by `CudaGemm::plan` and is destroyed once, here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.first);
            let _ = lt::destroy_matrix_layout(self.second);
            let _ = lt::destroy_matrix_layout(self.out);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A product queued on our stream: its output, its ordering against burn (to be released) and
/// its inputs (to be held until then).
struct Launched {
    out: Tensor<CudaBackend, 2>,
    ticket: fence::Ticket,
    inputs: Vec<CubeTensor<CudaRuntime>>,
}

struct State {
    plans: HashMap<PlanKey, Plan>,
    /// Inputs of queued products, kept alive until their ordering is released.
    pending: Vec<CubeTensor<CudaRuntime>>,
    /// The ordering of the last queued product, until released.
    ticket: Option<fence::Ticket>,
}

// SAFETY: cuBLASLt descriptors are plain heap objects not tied to a thread; they are only used
// under the mutex.
unsafe impl Send for State {}

/// The cuBLASLt path for one device. Cheap to share (`&self` everywhere, one lock).
pub struct CudaGemm {
    device: CudaDevice,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    handle: lts::cublasLtHandle_t,
    workspace: drv::CUdeviceptr,
    workspace_size: usize,
    state: Mutex<State>,
}

// SAFETY: the cuBLASLt handle is thread-safe for use on one stream at a time; every launch is
// made under `state`'s lock.
unsafe impl Send for CudaGemm {}
unsafe impl Sync for CudaGemm {}

/// Per NVIDIA's recommendation for Hopper (and enough elsewhere).
const WORKSPACE_BYTES: usize = 32 << 20;

impl CudaGemm {
    /// cuBLASLt on device `index`, sharing burn-cuda's primary context.
    pub fn new(index: usize) -> Result<Self, GemmError> {
        let context = CudaContext::new(index).map_err(driver_err("context"))?;
        let stream = context.new_stream().map_err(driver_err("stream"))?;
        let handle = lt::create_handle().map_err(cublas_err("create handle"))?;
        let mut workspace: drv::CUdeviceptr = 0;
        // SAFETY: a valid out-pointer; the context is bound by `new_stream`.
        let alloc = unsafe { drv::cuMemAlloc_v2(&mut workspace, WORKSPACE_BYTES) };
        if let Err(e) = alloc.result() {
            // SAFETY: created just above, not used elsewhere.
            unsafe {
                let _ = lt::destroy_handle(handle);
            }
            return Err(GemmError::Driver(format!("workspace: {e:?}")));
        }
        Ok(CudaGemm {
            device: CudaDevice { index },
            context,
            stream,
            handle,
            workspace,
            workspace_size: WORKSPACE_BYTES,
            state: Mutex::new(State {
                plans: HashMap::new(),
                pending: Vec::new(),
                ticket: None,
            }),
        })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// `a · b` for 2-D `a [M, K]`, `b [K, N]` (any strides), on cuBLASLt when the views allow it,
    /// else on burn. The result is ready for burn when this returns.
    pub fn matmul(
        &self,
        a: Tensor<CudaBackend, 2>,
        b: Tensor<CudaBackend, 2>,
    ) -> Result<Tensor<CudaBackend, 2>, GemmError> {
        self.gemm(a, b, None, Activation::Identity)
    }

    /// `x · Wᵀ (+ bias)` for a weight stored `[N, K]` (PyTorch/GGUF `[out, in]`), without copying
    /// the transpose: cuBLASLt reads `W` with its transpose flag. `bias` has `N` elements.
    pub fn linear(
        &self,
        x: Tensor<CudaBackend, 2>,
        weight: Tensor<CudaBackend, 2>,
        bias: Option<Tensor<CudaBackend, 1>>,
    ) -> Result<Tensor<CudaBackend, 2>, GemmError> {
        self.gemm(x, weight.transpose(), bias, Activation::Identity)
    }

    /// `gelu_tanh(x · Wᵀ (+ bias))`, as [`CudaGemm::linear`] with the GELU in the epilogue.
    pub fn linear_gelu(
        &self,
        x: Tensor<CudaBackend, 2>,
        weight: Tensor<CudaBackend, 2>,
        bias: Option<Tensor<CudaBackend, 1>>,
    ) -> Result<Tensor<CudaBackend, 2>, GemmError> {
        self.gemm(x, weight.transpose(), bias, Activation::GeluTanh)
    }

    /// `activation(a · b (+ bias))`: the fast path or burn's matmul.
    pub fn gemm(
        &self,
        a: Tensor<CudaBackend, 2>,
        b: Tensor<CudaBackend, 2>,
        bias: Option<Tensor<CudaBackend, 1>>,
        activation: Activation,
    ) -> Result<Tensor<CudaBackend, 2>, GemmError> {
        layout::product_dims(a.dims(), b.dims())?;
        if let Some(bias) = &bias {
            layout::check_bias(bias.dims()[0], 1, b.dims()[1])?;
        }
        let (a, bias, out_dtype) = mixed(a, b.dtype(), bias)?;
        match self.launch(&a, &b, bias.as_ref(), out_dtype, activation)? {
            Ok(launched) => {
                // Burn's later work (and any reuse of the inputs' memory) follows the product;
                // without a fence this waits on the host, and the inputs are held until then.
                fence::after(launched.ticket, &self.stream)
                    .map_err(|e| GemmError::Burn(e.to_string()))?;
                drop(launched.inputs);
                Ok(launched.out)
            }
            Err(reason) => {
                tracing::debug!("cuBLASLt path not taken ({reason}); using burn's matmul");
                let out = a.matmul(b).cast(out_dtype);
                let out = match bias {
                    Some(bias) => out + bias.unsqueeze_dim(0),
                    None => out,
                };
                // The epilogue's activation too: a caller that asked for it never gets the bare
                // product.
                Ok(activation.apply(out))
            }
        }
    }

    /// Queues `activation(a · b (+ bias))` on cuBLASLt without waiting for it: `Ok(Err(reason))`
    /// when the views need burn's matmul instead. The output must not be used (by burn or anyone) before
    /// [`CudaGemm::wait`] returns; the inputs are kept alive until then.
    pub fn enqueue(
        &self,
        a: &Tensor<CudaBackend, 2>,
        b: &Tensor<CudaBackend, 2>,
        bias: Option<&Tensor<CudaBackend, 1>>,
        activation: Activation,
    ) -> Result<Result<Tensor<CudaBackend, 2>, LayoutError>, GemmError> {
        let (a, bias, out_dtype) = mixed(a.clone(), b.dtype(), bias.cloned())?;
        let launched = match self.launch(&a, b, bias.as_ref(), out_dtype, activation)? {
            Ok(launched) => launched,
            Err(reason) => return Ok(Err(reason)),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // An earlier enqueued product's ticket is superseded: releasing this one orders burn
        // after both (same stream).
        state.ticket = Some(launched.ticket);
        state.pending.extend(launched.inputs);
        Ok(Ok(launched.out))
    }

    /// Waits on the host for every queued product and releases the inputs held for them.
    pub fn wait(&self) -> Result<(), GemmError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let released = match state.ticket.take() {
            Some(fence::Ticket::Fence(f, n)) => f
                .release(&self.stream, n)
                .map_err(|e| GemmError::Burn(e.to_string())),
            _ => Ok(()),
        };
        let result = self
            .stream
            .synchronize()
            .map_err(driver_err("waiting for cuBLASLt"));
        state.pending.clear();
        released.and(result)
    }

    fn launch(
        &self,
        a: &Tensor<CudaBackend, 2>,
        b: &Tensor<CudaBackend, 2>,
        bias: Option<&Tensor<CudaBackend, 1>>,
        out_dtype: DType,
        activation: Activation,
    ) -> Result<Result<Launched, LayoutError>, GemmError> {
        let (ta, tb) = (primitive(a), primitive(b));
        if ta.dtype != tb.dtype {
            return Err(GemmError::DTypeMismatch {
                a: ta.dtype,
                b: tb.dtype,
            });
        }
        let not_blas = |what| {
            Ok(Err(LayoutError::NotBlasOperand {
                what,
                shape: [0, 0],
                strides: [0, 0],
            }))
        };
        let Some(dtype) = lt_dtype(ta.dtype) else {
            return not_blas("dtype");
        };
        if ta.qparams.is_some() || tb.qparams.is_some() {
            return not_blas("quantized tensor");
        }
        let (Some(va), Some(vb)) = (view(&ta), view(&tb)) else {
            return Err(GemmError::Rank(ta.meta.shape().len()));
        };
        let mut problem = match layout::plan(va, vb) {
            Ok(p) => p,
            Err(e @ LayoutError::ShapeMismatch { .. }) => return Err(e.into()),
            Err(e) => return Ok(Err(e)),
        };
        let bias = match bias {
            Some(bias) => {
                let tbias = primitive_1d(bias);
                if tbias.dtype != out_dtype {
                    return Err(GemmError::DTypeMismatch {
                        a: ta.dtype,
                        b: tbias.dtype,
                    });
                }
                let stride = tbias.meta.strides().first().copied().unwrap_or(1);
                if let Err(e) =
                    layout::check_bias(tbias.meta.shape()[0], stride, problem.m as usize)
                {
                    return Ok(Err(e));
                }
                Some(tbias)
            }
            None => None,
        };

        let (m, n) = (va.shape[0], vb.shape[1]);
        let out = Tensor::<CudaBackend, 2>::empty([m, n], (&self.device, out_dtype));
        let tout = primitive(&out);
        match view(&tout).and_then(layout::access) {
            Some(layout::Access::RowMajor { ld }) => {
                problem.ldc = i64::try_from(ld).map_err(|_| LayoutError::TooLarge(ld))?
            }
            _ => return not_blas("output"),
        }

        let ptr = |t: &CubeTensor<CudaRuntime>, what: &str| -> Result<u64, GemmError> {
            let resource = t
                .client
                .get_resource(t.handle.clone())
                .map_err(|e| GemmError::Burn(format!("{what}: {e:?}")))?;
            Ok(resource.resource().ptr)
        };
        let (pa, pb, pc) = (ptr(&ta, "A")?, ptr(&tb, "B")?, ptr(&tout, "output")?);
        let pbias = bias.as_ref().map(|t| ptr(t, "bias")).transpose()?;
        let out_lt = lt_dtype(out_dtype).unwrap_or(dtype);
        let key = PlanKey {
            problem,
            dtype: dtype as i32,
            out: out_lt as i32,
            epilogue: Epilogue::new(pbias.is_some(), activation),
            align: [pb, pa, pc, pbias.unwrap_or(0)].map(layout::pointer_alignment),
        };

        self.context.bind_to_thread().map_err(driver_err("bind"))?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Inputs written and the output buffer free: after burn's queue, on the device (or on
        // the host without a fence).
        let ticket = fence::before(&self.device, &self.stream)
            .map_err(|e| GemmError::Burn(e.to_string()))?;
        let plan = match state.plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.plan(&key, dtype, out_lt)?),
        };
        if let Some(pbias) = pbias {
            // SAFETY: the attribute is a device pointer, passed by address with its size.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (&pbias as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            }
            .map_err(cublas_err("bias pointer"))?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the descriptors describe exactly these buffers (shapes and leading dimensions
        // checked by `layout::plan` against the tensors' own shapes and strides; the output was
        // allocated for [M, N] with row stride ldc); burn's work on them is ordered before this
        // product (`fence::before` above); the inputs are returned to the caller, who holds them
        // until burn's later work is ordered after the product (`fence::after`), and the output
        // lives in the caller's tensor. The workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                pb as *const c_void,
                plan.first,
                pa as *const c_void,
                plan.second,
                pc as *const c_void,
                plan.out,
                pc as *mut c_void,
                plan.out,
                &plan.algo,
                self.workspace as *mut c_void,
                self.workspace_size,
                self.stream.cu_stream() as lts::cudaStream_t,
            )
        }
        .map_err(cublas_err("matmul"))?;
        let mut inputs = vec![ta, tb];
        inputs.extend(bias);
        Ok(Ok(Launched {
            out,
            ticket,
            inputs,
        }))
    }

    /// Descriptors and the heuristic's algorithm for one problem.
    fn plan(
        &self,
        key: &PlanKey,
        dtype: lts::cudaDataType_t,
        out_dtype: lts::cudaDataType_t,
    ) -> Result<Plan, GemmError> {
        let p = key.problem;
        let layout_of = |dtype, rows, cols, ld, what| {
            lt::create_matrix_layout(dtype, rows, cols, ld).map_err(cublas_err(what))
        };
        // f32 operands run on TF32 tensor cores (torch's `allow_tf32`); bf16/f16 accumulate in f32.
        let compute = if dtype == lts::cudaDataType_t::CUDA_R_32F {
            lts::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            lts::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let desc = lt::create_matmul_desc(compute, lts::cudaDataType_t::CUDA_R_32F)
            .map_err(cublas_err("matmul desc"))?;
        // From here on `plan` owns the handles created so far (Drop destroys them on error).
        // SAFETY: `cublasLtMatmulAlgo_t` is plain data (an array of u64); it starts zeroed and is
        // overwritten by the heuristic's pick before the plan is used.
        let algo = unsafe { std::mem::zeroed() };
        let mut plan = Plan {
            desc,
            first: std::ptr::null_mut(),
            second: std::ptr::null_mut(),
            out: std::ptr::null_mut(),
            algo,
        };
        plan.first = layout_of(dtype, p.first.rows, p.first.cols, p.first.ld, "layout A")?;
        plan.second = layout_of(dtype, p.second.rows, p.second.cols, p.second.ld, "layout B")?;
        plan.out = layout_of(out_dtype, p.m, p.n, p.ldc, "layout D")?;
        let set_desc = |attr, value: i32| {
            // SAFETY: a 4-byte enum attribute passed by address.
            unsafe {
                lt::set_matmul_desc_attribute(plan.desc, attr, (&value as *const i32).cast(), 4)
            }
            .map_err(cublas_err("desc attribute"))
        };
        use lts::cublasLtMatmulDescAttributes_t as D;
        set_desc(D::CUBLASLT_MATMUL_DESC_TRANSA, p.first.transpose as i32)?;
        set_desc(D::CUBLASLT_MATMUL_DESC_TRANSB, p.second.transpose as i32)?;
        // DEFAULT for a plain product is the attribute's own default.
        set_desc(
            D::CUBLASLT_MATMUL_DESC_EPILOGUE,
            lt_epilogue(key.epilogue) as i32,
        )?;
        if key.epilogue.has_bias() {
            set_desc(D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, out_dtype as i32)?;
        }
        let pref = lt::create_matmul_pref().map_err(cublas_err("preference"))?;
        let result = (|| {
            use lts::cublasLtMatmulPreferenceAttributes_t as P;
            // SAFETY: attributes passed by address with their sizes (u64 workspace, u32 alignments).
            unsafe {
                let ws = self.workspace_size as u64;
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&ws as *const u64).cast(),
                    8,
                )?;
                let [a, b, d, _bias] = key.align;
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    (&a as *const u32).cast(),
                    4,
                )?;
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    (&b as *const u32).cast(),
                    4,
                )?;
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    (&d as *const u32).cast(),
                    4,
                )?;
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    (&d as *const u32).cast(),
                    4,
                )?;
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.first,
                    plan.second,
                    plan.out,
                    plan.out,
                    pref,
                )
            }
        })();
        // SAFETY: created above, used only by the heuristic call.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        plan.algo = result
            .map_err(cublas_err("no algorithm for this problem"))?
            .algo;
        Ok(plan)
    }
}

impl Drop for CudaGemm {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        if let Ok(mut state) = self.state.lock() {
            state.plans.clear();
            state.pending.clear();
        }
        // SAFETY: the workspace and handle are ours; no product is in flight (synchronized).
        unsafe {
            if self.context.bind_to_thread().is_ok() {
                let _ = drv::cuMemFree_v2(self.workspace);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// A product's operands made one type, its bias put in the output's type, and that type: `a`'s.
/// An f32 `a` against a half-precision right operand is rounded to it (the product accumulates
/// and is written in f32); any other mix of types is an error, for the caller's fallback.
#[allow(clippy::type_complexity)]
fn mixed(
    a: Tensor<CudaBackend, 2>,
    b_dtype: DType,
    bias: Option<Tensor<CudaBackend, 1>>,
) -> Result<
    (
        Tensor<CudaBackend, 2>,
        Option<Tensor<CudaBackend, 1>>,
        DType,
    ),
    GemmError,
> {
    let a_dtype = a.dtype();
    let bias = bias.map(|b| match b.dtype() == a_dtype {
        true => b,
        false => b.cast(a_dtype),
    });
    if a_dtype == b_dtype {
        return Ok((a, bias, a_dtype));
    }
    if a_dtype != DType::F32 || !matches!(b_dtype, DType::BF16 | DType::F16) {
        return Err(GemmError::DTypeMismatch {
            a: a_dtype,
            b: b_dtype,
        });
    }
    Ok((a.cast(b_dtype), bias, DType::F32))
}

fn primitive(t: &Tensor<CudaBackend, 2>) -> CubeTensor<CudaRuntime> {
    t.clone().into_primitive().tensor()
}

fn primitive_1d(t: &Tensor<CudaBackend, 1>) -> CubeTensor<CudaRuntime> {
    t.clone().into_primitive().tensor()
}

fn view(t: &CubeTensor<CudaRuntime>) -> Option<View2d> {
    View2d::from_slices(t.meta.shape(), t.meta.strides())
}
