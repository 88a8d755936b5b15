//! Device fast paths for the model layers, chosen by backend type: on burn-cuda,
//! [`super::layers::attention`] runs weft's flash-attention kernel
//! (`weft_cuda::attention`, head dims 64 and 128) instead of burn's materialized
//! softmax, and [`super::layers::Linear`] runs large products on cuBLASLt
//! (`weft_cuda::gemm`: the BF16 weights of a CUDA load times the activations rounded to
//! bf16, accumulated and written in f32, bias in the epilogue; f32 weights run on TF32), with
//! Flux's MLP GELU in the same epilogue ([`linear_gelu`]); any other backend, shape or failure
//! keeps burn's path. The model code stays generic over `B`: the CUDA backend is recognised
//! through `Any`, without `unsafe`.
//!
//! f32 activations are rounded to bf16 for the kernel (it accumulates in f32) and the result is
//! converted back, so outputs move by bf16 rounding (issue 6 allows bf16 tolerance on the GPU).
//!
//! Linear layers with a few rows (Flux's modulation: one row per batch item) and a BF16 weight
//! of at least [`MIN_FUSED_ELEMENTS`] go to the fused kernels' GEMV, one pass over the weight.
//!
//! When: from [`MIN_FLASH_SCORES`] attention scores per head (sequences of about 1000 tokens) up.
//! Below that burn's path is as fast: each kernel call waits for burn's queue and casts its inputs,
//! and on the quickstart (272 tokens) 240 calls made its sampling 0.58 s against burn's 0.49 s,
//! while at 1000 tokens the kernel is 12x burn's attention (docs/BENCHMARKS.md).
//! `WEFT_FLASH_ATTENTION=0` turns the path off, `=1` takes it for every size; a kernel that cannot
//! be built (no NVRTC, too little shared memory) turns it off for the process with one warning.
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use weft_engine::formats::gguf::GgmlType;

/// Multiply-accumulates (rows × d_in × d_out) from which a linear layer goes to cuBLASLt: each
/// call waits for burn's queue and for its own stream, so small products stay on burn (a guess
/// from the attention measurements, not tuned; the quickstart's layers stay below it).
pub const MIN_GEMM_MACS: usize = 1 << 28;

/// Weight elements from which a linear layer whose weight is not in the activations' type (BF16
/// weights, f32 activations) goes to cuBLASLt whatever the rows: burn's path would convert the
/// whole weight on every call (Flux's modulation layers: one row, 57 M weights).
pub const MIN_MIXED_WEIGHTS: usize = 1 << 20;

/// `x · Wᵀ (+ bias)` for `W` stored [d_out, d_in], on cuBLASLt, or None for burn's path.
/// `WEFT_CUBLASLT=0` turns the path off, `=1` takes it for every size.
pub fn linear<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    {
        cuda::linear(x, weight, bias)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, weight, bias);
        None
    }
}

/// `gelu_tanh(x · Wᵀ (+ bias))` in one cuBLASLt product, the GELU in its epilogue, or None for
/// the layer's own path (`gelu_tanh` of [`linear`]). Same thresholds and setting as [`linear`];
/// few-row products return None, their path being the GEMV and then the fused GELU.
pub fn linear_gelu<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    {
        cuda::linear_gelu(x, weight, bias)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, weight, bias);
        None
    }
}

/// `blocks` (one matrix's ggml blocks, a `U8` tensor) dequantized into `n` values of `dtype` on
/// the device (weft-cuda's kernels, ordered against burn's stream by a fence, no host wait), or
/// None where the backend has no kernels for them (the caller dequantizes on the host).
pub fn dequantize<B: Backend>(
    blocks: &Tensor<B, 1, Int>,
    ty: GgmlType,
    n: usize,
    dtype: DType,
) -> Option<Tensor<B, 1>> {
    #[cfg(feature = "cuda")]
    {
        cuda::dequantize(blocks, ty, n, dtype)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (blocks, ty, n, dtype);
        None
    }
}

/// Query × key positions from which the flash kernel is used (see the module doc).
pub const MIN_FLASH_SCORES: usize = 1000 * 1000;

/// Activation elements from which the fused block kernels replace burn's chains (each call waits
/// for burn's queue, like the other paths; the quickstart's activations stay below it).
/// `WEFT_FUSED=0` turns them off, `=1` takes them for every size.
pub const MIN_FUSED_ELEMENTS: usize = 1 << 20;

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` in one pass, or None for burn's path.
pub fn gelu_tanh<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cuda")]
    {
        cuda::fused_call(cuda::index_of(x), x.shape().num_elements(), |f| {
            cuda::back(cuda::taken("gelu", f.gelu_tanh(cuda::as_cuda(x)?))?)
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        None
    }
}

/// `LayerNorm(x)·(1 + scale) + shift` (no affine; `x` [B, L, C], the others [B, 1, C]) in one
/// pass, or None for burn's path.
pub fn ln_modulate<B: Backend>(
    x: &Tensor<B, 3>,
    shift: &Tensor<B, 3>,
    scale: &Tensor<B, 3>,
    eps: f64,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "cuda")]
    {
        cuda::fused_call(cuda::index_of(x), x.shape().num_elements(), |f| {
            let (x, shift, scale) = (
                cuda::as_cuda(x)?,
                cuda::as_cuda(shift)?,
                cuda::as_cuda(scale)?,
            );
            cuda::back(cuda::taken(
                "layer norm",
                f.ln_modulate(x, shift, scale, eps as f32),
            )?)
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, shift, scale, eps);
        None
    }
}

/// `x + gate·h` (`gate` [B, 1, C]) in one pass, or None for burn's path.
pub fn gate_residual<B: Backend>(
    x: &Tensor<B, 3>,
    gate: &Tensor<B, 3>,
    h: &Tensor<B, 3>,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "cuda")]
    {
        cuda::fused_call(cuda::index_of(x), x.shape().num_elements(), |f| {
            let (x, gate, h) = (cuda::as_cuda(x)?, cuda::as_cuda(gate)?, cuda::as_cuda(h)?);
            cuda::back(cuda::taken("gated residual", f.gate_residual(x, gate, h))?)
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, gate, h);
        None
    }
}

/// q, k, v [B, H, ΣL, D] from fused QKV projections `segments` ([B, L_i, 3·H·D] with the
/// query and key RMS-norm scales, in token order), normalized and rotated by the RoPE tables
/// `cos`/`sin` [ΣL, D] in one pass per segment, or None for burn's path.
pub fn qk_norm_rope<B: Backend>(
    segments: &[(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)],
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
    heads: usize,
    eps: f64,
) -> Option<[Tensor<B, 4>; 3]> {
    #[cfg(feature = "cuda")]
    {
        let elements = segments.iter().map(|s| s.0.shape().num_elements()).sum();
        let index = segments.first().and_then(|s| cuda::index_of(&s.0));
        cuda::fused_call(index, elements, |f| {
            use weft_cuda::fused::QkvSegment;
            let segments = segments
                .iter()
                .map(|(qkv, q, k)| {
                    let qkv = cuda::as_cuda(qkv)?.clone();
                    // The scales meet the activations in their type (bf16 rounding, as BFL's
                    // RMSNorm multiplies in the model's dtype).
                    let scale =
                        |s: &Tensor<B, 1>| Some(cuda::as_cuda(s)?.clone().cast(qkv.dtype()));
                    Some(QkvSegment {
                        q_scale: scale(q)?,
                        k_scale: scale(k)?,
                        qkv,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            let [q, k, v] = cuda::taken(
                "QK norm + RoPE",
                f.qk_norm_rope(
                    &segments,
                    cuda::as_cuda(cos)?,
                    cuda::as_cuda(sin)?,
                    heads,
                    eps as f32,
                ),
            )?;
            Some([cuda::back(q)?, cuda::back(k)?, cuda::back(v)?])
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (segments, cos, sin, heads, eps);
        None
    }
}

/// `softmax(q·kᵀ·scale)·v` through the device's fast kernel, or None for burn's path.
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f32,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cuda")]
    {
        cuda::attention(q, k, v, scale)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, scale);
        None
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, FloatDType, Int, Tensor};
    use std::any::Any;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use weft_cuda::activation::Activation;
    use weft_cuda::attention::CudaAttention;
    use weft_cuda::backend::CudaBackend;
    use weft_cuda::dequant::CudaDequant;
    use weft_cuda::fused::CudaFused;
    use weft_cuda::fused_plan::FusedError;
    use weft_cuda::gemm::CudaGemm;
    use weft_engine::formats::gguf::GgmlType;

    /// Set once the kernel is unavailable (or turned off) for this process.
    static OFF: AtomicBool = AtomicBool::new(false);
    /// Set once cuBLASLt is unavailable (or turned off) for this process.
    static GEMM_OFF: AtomicBool = AtomicBool::new(false);

    static CUBLASLT: OnceLock<Option<String>> = OnceLock::new();
    static FLASH: OnceLock<Option<String>> = OnceLock::new();

    /// The environment variable `name`, read once per process (the layers ask on every call).
    fn setting(cell: &'static OnceLock<Option<String>>, name: &str) -> Option<&'static str> {
        cell.get_or_init(|| std::env::var(name).ok()).as_deref()
    }

    pub(super) fn as_cuda<B: Backend, const D: usize>(
        t: &Tensor<B, D>,
    ) -> Option<&Tensor<CudaBackend, D>> {
        (t as &dyn Any).downcast_ref::<Tensor<CudaBackend, D>>()
    }

    pub(super) fn back<B: Backend, const D: usize>(
        t: Tensor<CudaBackend, D>,
    ) -> Option<Tensor<B, D>> {
        let t: Box<dyn Any> = Box::new(t);
        t.downcast::<Tensor<B, D>>().ok().map(|t| *t)
    }

    /// Set once the fused kernels are unavailable (or turned off) for this process.
    static FUSED_OFF: AtomicBool = AtomicBool::new(false);
    static FUSED: OnceLock<Option<String>> = OnceLock::new();

    /// Runs `call` with the fused kernels of CUDA device `index` (None: not a CUDA tensor) when
    /// the fused path applies to `elements` activation elements (threshold and `WEFT_FUSED`).
    /// `call` returns None for burn's path (an unsupported view or dtype, a launch error).
    pub(super) fn fused_call<R>(
        index: Option<usize>,
        elements: usize,
        call: impl FnOnce(&CudaFused) -> Option<R>,
    ) -> Option<R> {
        let index = index?;
        if FUSED_OFF.load(Ordering::Relaxed) {
            return None;
        }
        match setting(&FUSED, "WEFT_FUSED") {
            Some("0") => {
                FUSED_OFF.store(true, Ordering::Relaxed);
                return None;
            }
            Some("1") => {}
            _ if elements < super::MIN_FUSED_ELEMENTS => return None,
            _ => {}
        }
        let kernels = match CudaFused::shared(index) {
            Ok(kernels) => kernels,
            Err(e) => {
                tracing::warn!("fused block kernels unavailable, using burn's kernels: {e}");
                FUSED_OFF.store(true, Ordering::Relaxed);
                return None;
            }
        };
        call(&kernels)
    }

    /// The CUDA device index of `t`, if it is a burn-cuda tensor.
    pub(super) fn index_of<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<usize> {
        as_cuda(t).map(|t| t.device().index)
    }

    /// A fused kernel's error as burn's path, logged once per call site at debug level.
    pub(super) fn taken<T>(what: &str, result: Result<T, FusedError>) -> Option<T> {
        result
            .map_err(|e| tracing::debug!("fused {what} not taken ({e}); using burn's kernels"))
            .ok()
    }

    /// One cuBLASLt handle per device for the process.
    fn gemm_for(index: usize) -> Option<Arc<CudaGemm>> {
        static INSTANCES: OnceLock<Mutex<HashMap<usize, Arc<CudaGemm>>>> = OnceLock::new();
        let mut instances = INSTANCES
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(found) = instances.get(&index) {
            return Some(found.clone());
        }
        match CudaGemm::new(index) {
            Ok(gemm) => {
                let gemm = Arc::new(gemm);
                instances.insert(index, gemm.clone());
                Some(gemm)
            }
            Err(e) => {
                tracing::warn!("cuBLASLt unavailable, using burn's matmul: {e}");
                GEMM_OFF.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn linear<B: Backend>(
        x: &Tensor<B, 2>,
        weight: &Tensor<B, 2>,
        bias: Option<&Tensor<B, 1>>,
    ) -> Option<Tensor<B, 2>> {
        product(x, weight, bias, Activation::Identity)
    }

    pub fn linear_gelu<B: Backend>(
        x: &Tensor<B, 2>,
        weight: &Tensor<B, 2>,
        bias: Option<&Tensor<B, 1>>,
    ) -> Option<Tensor<B, 2>> {
        product(x, weight, bias, Activation::GeluTanh)
    }

    /// `activation(x · Wᵀ (+ bias))` on the GEMV or cuBLASLt, or None for burn's path.
    fn product<B: Backend>(
        x: &Tensor<B, 2>,
        weight: &Tensor<B, 2>,
        bias: Option<&Tensor<B, 1>>,
        activation: Activation,
    ) -> Option<Tensor<B, 2>> {
        if GEMM_OFF.load(Ordering::Relaxed) {
            return None;
        }
        let (x, weight) = (as_cuda(x)?, as_cuda(weight)?);
        let bias = match bias {
            Some(b) => Some(as_cuda(b)?.clone()),
            None => None,
        };
        let [rows, d_in] = x.dims();
        let d_out = weight.dims()[0];
        let gemv = rows <= weft_cuda::fused_plan::GEMV_MAX_ROWS && weight.dtype() == DType::BF16;
        if gemv && activation != Activation::Identity {
            // The GEMV has no epilogue: the layer's own GEMV then fused GELU is that path.
            return None;
        }
        if gemv
            && let Some(y) = fused_call(Some(x.device().index), d_in * d_out, |f| {
                let bias = bias.as_ref().map(|b| match b.dtype() == x.dtype() {
                    true => b.clone(),
                    false => b.clone().cast(x.dtype()),
                });
                taken("gemv", f.gemv(x, weight, bias.as_ref()))
            })
        {
            return back(y);
        }
        match setting(&CUBLASLT, "WEFT_CUBLASLT") {
            Some("0") => {
                GEMM_OFF.store(true, Ordering::Relaxed);
                return None;
            }
            Some("1") => {}
            _ if rows * d_in * weight.dims()[0] < super::MIN_GEMM_MACS
                && (weight.dtype() == x.dtype()
                    || d_in * weight.dims()[0] < super::MIN_MIXED_WEIGHTS) =>
            {
                return None;
            }
            _ => {}
        }
        let gemm = gemm_for(x.device().index)?;
        let out = match activation {
            Activation::Identity => gemm.linear(x.clone(), weight.clone(), bias),
            Activation::GeluTanh => gemm.linear_gelu(x.clone(), weight.clone(), bias),
        };
        match out {
            Ok(out) => back(out),
            Err(e) => {
                tracing::debug!("cuBLASLt path not taken ({e}); using burn's matmul");
                None
            }
        }
    }

    /// Set once the dequantization kernels are unavailable for this process.
    static DEQUANT_OFF: AtomicBool = AtomicBool::new(false);

    pub fn dequantize<B: Backend>(
        blocks: &Tensor<B, 1, Int>,
        ty: GgmlType,
        n: usize,
        dtype: DType,
    ) -> Option<Tensor<B, 1>> {
        let blocks = (blocks as &dyn Any).downcast_ref::<Tensor<CudaBackend, 1, Int>>()?;
        if DEQUANT_OFF.load(Ordering::Relaxed) {
            return None;
        }
        let kernels = match CudaDequant::shared(blocks.device().index) {
            Ok(kernels) => kernels,
            Err(e) => {
                tracing::warn!("dequantization kernels unavailable, dequantizing on the CPU: {e}");
                DEQUANT_OFF.store(true, Ordering::Relaxed);
                return None;
            }
        };
        match kernels.dequantize_ordered(ty, blocks, n, dtype) {
            Ok(values) => back(values),
            Err(e) => {
                tracing::debug!("device dequantization not taken ({e}); dequantizing on the CPU");
                None
            }
        }
    }

    pub fn attention<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        scale: f32,
    ) -> Option<Tensor<B, 4>> {
        if OFF.load(Ordering::Relaxed) {
            return None;
        }
        let (q, k, v) = (as_cuda(q)?, as_cuda(k)?, as_cuda(v)?);
        if !matches!(q.dims()[3], 64 | 128) {
            return None;
        }
        match setting(&FLASH, "WEFT_FLASH_ATTENTION") {
            Some("0") => {
                OFF.store(true, Ordering::Relaxed);
                return None;
            }
            Some("1") => {}
            _ if q.dims()[2] * k.dims()[2] < super::MIN_FLASH_SCORES => return None,
            _ => {}
        }
        let kernel = match CudaAttention::shared(q.device().index) {
            Ok(kernel) => kernel,
            Err(e) => {
                tracing::warn!("flash attention unavailable, using burn's attention: {e}");
                OFF.store(true, Ordering::Relaxed);
                return None;
            }
        };
        let dtype = q.dtype();
        let narrow = |t: &Tensor<CudaBackend, 4>| match dtype {
            DType::F32 => t.clone().cast(FloatDType::BF16),
            _ => t.clone(),
        };
        let out = match kernel.attention(narrow(q), narrow(k), narrow(v), scale) {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!("flash attention not taken ({e}); using burn's attention");
                return None;
            }
        };
        back(match dtype {
            DType::F32 => out.cast(FloatDType::F32),
            _ => out,
        })
    }
}
