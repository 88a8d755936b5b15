//! `CudaFused`: the fused block kernels of `kernels/fused.cu` on burn-cuda tensors — GELU (tanh),
//! LayerNorm + modulation, gated residual, and the QKV split with QK RMS-norm and RoPE — each one
//! pass over the activations where burn runs a chain of kernels that each read and write them all.
//!
//! Compiled by NVRTC once per architecture and process, loaded once per device, run on burn's
//! buffers: outputs allocated, then the kernels queued on our stream between the two halves of a
//! [`super::fence`] (burn's earlier work before them, burn's later work after them, on the
//! device; host waits where there is no fence). Shapes and geometry are checked by [`super::fused_plan`]; any
//! error there means the caller keeps burn's path.
use super::fence;
use super::fused_plan::{self, FusedDType, FusedError};
use crate::backend::CudaBackend;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

fn driver_err(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> FusedError {
    let what = what.into();
    move |e| FusedError::Driver {
        what,
        message: format!("{e:?}"),
    }
}

fn burn_err<E: std::fmt::Debug>(what: impl Into<String>) -> impl FnOnce(E) -> FusedError {
    let what = what.into();
    move |e| FusedError::Burn {
        what,
        message: format!("{e:?}"),
    }
}

/// The PTX of `kernels/fused.cu` per architecture, compiled once per process.
fn ptx_for(arch: &str) -> Result<Ptx, FusedError> {
    super::nvrtc::compile(
        "fused.cu",
        fused_plan::KERNEL_SOURCE,
        arch,
        fused_plan::NVRTC_OPTIONS,
    )
    .map_err(|message| FusedError::Compile {
        arch: arch.to_string(),
        message,
    })
}

/// One segment of a `qk_norm_rope` call: a fused projection [B, L, 3·H·D] and the RMS-norm
/// scales [D] of its queries and keys.
pub struct QkvSegment {
    pub qkv: Tensor<CudaBackend, 3>,
    pub q_scale: Tensor<CudaBackend, 1>,
    pub k_scale: Tensor<CudaBackend, 1>,
}

/// The fused kernels on one device. Cheap to share (`&self` everywhere).
pub struct CudaFused {
    device: CudaDevice,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    /// One launch sequence at a time (the inputs held and the stream waited for per call).
    launching: Mutex<()>,
}

/// A contiguous operand: its primitive (held until the kernels finish) and device address.
struct Operand {
    _tensor: CubeTensor<CudaRuntime>,
    ptr: u64,
}

impl CudaFused {
    /// The kernels on device `index`, in burn-cuda's primary context.
    pub fn new(index: usize) -> Result<Self, FusedError> {
        let what = format!("cuda:{index}");
        let context = CudaContext::new(index).map_err(driver_err(format!("{what}: context")))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_err(format!("{what}: compute capability")))?;
        let arch = super::dequant_plan::gpu_arch(major, minor);
        let module = context
            .load_module(ptx_for(&arch)?)
            .map_err(driver_err(format!("{what}: loading the {arch} kernels")))?;
        let mut functions = HashMap::new();
        for name in fused_plan::all_kernels() {
            let function = module
                .load_function(&name)
                .map_err(driver_err(format!("kernel {name}")))?;
            functions.insert(name, function);
        }
        let stream = context
            .new_stream()
            .map_err(driver_err(format!("{what}: stream")))?;
        Ok(CudaFused {
            device: CudaDevice { index },
            context,
            stream,
            functions,
            launching: Mutex::new(()),
        })
    }

    /// The process's `CudaFused` for device `index`, made on first use.
    pub fn shared(index: usize) -> Result<Arc<Self>, FusedError> {
        static SHARED: OnceLock<Mutex<HashMap<usize, Arc<CudaFused>>>> = OnceLock::new();
        let mut shared = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = shared.get(&index) {
            return Ok(f.clone());
        }
        let f = Arc::new(CudaFused::new(index)?);
        shared.insert(index, f.clone());
        Ok(f)
    }

    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    pub fn gelu_tanh<const D: usize>(
        &self,
        x: &Tensor<CudaBackend, D>,
    ) -> Result<Tensor<CudaBackend, D>, FusedError> {
        let dtype = fused_dtype(x.dtype(), "gelu_tanh")?;
        let n = x.shape().num_elements() as u64;
        let out = Tensor::<CudaBackend, D>::empty(x.shape(), (&self.device, x.dtype()));
        let (input, output) = (operand(x, "gelu_tanh")?, operand(&out, "gelu_tanh")?);
        let (grid, block) = fused_plan::elementwise(n);
        self.run(|s| {
            if grid == 0 {
                return Ok(());
            }
            let f = self.function("gelu_tanh", dtype)?;
            let mut args = s.launch_builder(f);
            args.arg(&input.ptr).arg(&output.ptr).arg(&n);
            // SAFETY: (const T *x, T *y, u64 n): both buffers hold n contiguous elements of the
            // kernel's type (checked by `operand` and `fused_dtype`); the kernel reads x[0..n)
            // and writes y[0..n) only.
            unsafe { args.launch(config(grid, block)) }
                .map(drop)
                .map_err(driver_err("gelu_tanh"))
        })?;
        Ok(out)
    }

    /// `LayerNorm(x)·(1 + scale) + shift` for `x` [B, L, C], `shift` and `scale` [B, 1, C]
    /// (no affine; f32 statistics).
    pub fn ln_modulate(
        &self,
        x: &Tensor<CudaBackend, 3>,
        shift: &Tensor<CudaBackend, 3>,
        scale: &Tensor<CudaBackend, 3>,
        eps: f32,
    ) -> Result<Tensor<CudaBackend, 3>, FusedError> {
        self.rows_kernel("ln_modulate", x, shift, scale, false, Some(eps))
    }

    /// `x + gate·h` for `x`, `h` [B, L, C] and `gate` [B, 1, C].
    pub fn gate_residual(
        &self,
        x: &Tensor<CudaBackend, 3>,
        gate: &Tensor<CudaBackend, 3>,
        h: &Tensor<CudaBackend, 3>,
    ) -> Result<Tensor<CudaBackend, 3>, FusedError> {
        self.rows_kernel("gate_residual", x, gate, h, true, None)
    }

    /// A one-block-per-row kernel `family(x, a, b, y, u32 cols, u32 rows_per_batch[, f32 eps])`
    /// over `x` [B, L, C]: `a` is [B, 1, C], `b` too or, when `b_per_row`, [B, L, C].
    fn rows_kernel(
        &self,
        family: &'static str,
        x: &Tensor<CudaBackend, 3>,
        a: &Tensor<CudaBackend, 3>,
        b: &Tensor<CudaBackend, 3>,
        b_per_row: bool,
        eps: Option<f32>,
    ) -> Result<Tensor<CudaBackend, 3>, FusedError> {
        let dtype = same_dtype(&[x.dtype(), a.dtype(), b.dtype()], family)?;
        let [batch, l, c] = x.dims();
        fused_plan::check_modulation(&[batch, l, c], &a.dims(), family)?;
        if b_per_row && b.dims() != [batch, l, c] {
            return Err(FusedError::Shape {
                what: family,
                shape: b.dims().to_vec(),
                why: format!("differs from {:?}", [batch, l, c]),
            });
        }
        if !b_per_row {
            fused_plan::check_modulation(&[batch, l, c], &b.dims(), family)?;
        }
        let (grid, block) = fused_plan::rows((batch * l) as u64, c as u64, family)?;
        let (cols, rows_per_batch) = (u32_of(c, family)?, u32_of(l, family)?);
        let out = Tensor::<CudaBackend, 3>::empty([batch, l, c], (&self.device, x.dtype()));
        let ops = [
            operand(x, family)?,
            operand(a, family)?,
            operand(b, family)?,
            operand(&out, family)?,
        ];
        self.run(|s| {
            if grid == 0 {
                return Ok(());
            }
            let f = self.function(family, dtype)?;
            let mut args = s.launch_builder(f);
            args.arg(&ops[0].ptr)
                .arg(&ops[1].ptr)
                .arg(&ops[2].ptr)
                .arg(&ops[3].ptr)
                .arg(&cols)
                .arg(&rows_per_batch);
            if let Some(eps) = &eps {
                args.arg(eps);
            }
            // SAFETY: (x, a, b, y, u32 cols, u32 rows_per_batch[, f32 eps]), the signature of
            // both families (eps for ln_modulate only): x and y hold B·L dense rows of `cols`
            // values of the kernel's type, a B rows, b B rows or B·L (shapes checked above,
            // density and dtype by `operand` and `same_dtype`); block r reads row r of x (and of
            // b when per row), row r / L of a (and of b otherwise), and writes row r of y only.
            unsafe { args.launch(config(grid, block)) }
                .map(drop)
                .map_err(driver_err(family))
        })?;
        Ok(out)
    }

    /// `x · Wᵀ (+ bias)` for a few rows of `x` [rows, K] (f32 or bf16; `bias` [N] and the
    /// result in its type) and a dense bf16 `w` [N, K]: one pass over W at memory speed, where a
    /// GEMM library tiles for many rows. [`FusedError::Shape`] when `gemv_fits` says no.
    pub fn gemv(
        &self,
        x: &Tensor<CudaBackend, 2>,
        w: &Tensor<CudaBackend, 2>,
        bias: Option<&Tensor<CudaBackend, 1>>,
    ) -> Result<Tensor<CudaBackend, 2>, FusedError> {
        const WHAT: &str = "gemv";
        let dtype = fused_dtype(x.dtype(), WHAT)?;
        if w.dtype() != DType::BF16 {
            return Err(FusedError::DType {
                what: WHAT,
                dtype: format!("weight {:?} (BF16 only)", w.dtype()),
            });
        }
        let ([rows, k], [n, wk]) = (x.dims(), w.dims());
        if let Some(bias) = bias {
            same_dtype(&[x.dtype(), bias.dtype()], WHAT)?;
            if bias.dims() != [n] {
                return Err(FusedError::Shape {
                    what: WHAT,
                    shape: bias.dims().to_vec(),
                    why: format!("is not a bias for {n} outputs"),
                });
            }
        }
        let w_op = operand(w, WHAT)?;
        if wk != k || !fused_plan::gemv_fits(rows, k, w_op.ptr) {
            return Err(FusedError::Shape {
                what: WHAT,
                shape: vec![rows, k, n, wk],
                why: "is not a few rows against an aligned [N, K] weight with K % 8 = 0".into(),
            });
        }
        let out = Tensor::<CudaBackend, 2>::empty([rows, n], (&self.device, x.dtype()));
        let (x_op, out_op) = (operand(x, WHAT)?, operand(&out, WHAT)?);
        let bias_op = bias.map(|b| operand(b, WHAT)).transpose()?;
        let bias_ptr = bias_op.as_ref().map_or(0u64, |b| b.ptr);
        let (grid, block) = fused_plan::warps(n as u64, WHAT)?;
        let dims = [u32_of(rows, WHAT)?, u32_of(k, WHAT)?, u32_of(n, WHAT)?];
        self.run(|s| {
            if grid == 0 {
                return Ok(());
            }
            let f = self.function(WHAT, dtype)?;
            let mut args = s.launch_builder(f);
            args.arg(&x_op.ptr)
                .arg(&w_op.ptr)
                .arg(&bias_ptr)
                .arg(&out_op.ptr)
                .arg(&dims[0])
                .arg(&dims[1])
                .arg(&dims[2]);
            // SAFETY: (x, w, bias or null, y, u32 rows, u32 k, u32 n): x holds rows·k dense
            // values of the kernel's type, w n·k dense bf16 (16-byte aligned, k % 8 = 0: the
            // kernel's 16-byte loads stay inside each row), bias n values or null, y rows·n
            // (all checked above); warp c reads row c of w, all of x and bias[c], and writes
            // column c of y only.
            unsafe { args.launch(config(grid, block)) }
                .map(drop)
                .map_err(driver_err(WHAT))
        })?;
        Ok(out)
    }

    /// q, k, v [B, H, ΣL, D] from fused projections `segments` (token order; each [B, L_i,
    /// 3·H·D]): q and k RMS-normalized with their scales and rotated by `cos`/`sin` [ΣL, D]
    /// (f32), v split out unchanged.
    pub fn qk_norm_rope(
        &self,
        segments: &[QkvSegment],
        cos: &Tensor<CudaBackend, 2>,
        sin: &Tensor<CudaBackend, 2>,
        heads: usize,
        eps: f32,
    ) -> Result<[Tensor<CudaBackend, 4>; 3], FusedError> {
        const WHAT: &str = "qk_norm_rope";
        let shapes: Vec<[usize; 3]> = segments.iter().map(|s| s.qkv.dims()).collect();
        let scales: Vec<usize> = segments
            .iter()
            .flat_map(|s| [s.q_scale.dims()[0], s.k_scale.dims()[0]])
            .collect();
        if cos.dims() != sin.dims() {
            return Err(FusedError::Shape {
                what: WHAT,
                shape: sin.dims().to_vec(),
                why: format!("sine table differs from the cosine table {:?}", cos.dims()),
            });
        }
        let (batch, tokens, d) = fused_plan::check_qkv(&shapes, &scales, cos.dims(), heads)?;
        let mut dtypes: Vec<DType> = segments
            .iter()
            .flat_map(|s| [s.qkv.dtype(), s.q_scale.dtype(), s.k_scale.dtype()])
            .collect();
        let dtype = same_dtype(&dtypes, WHAT)?;
        dtypes = vec![cos.dtype(), sin.dtype()];
        if dtypes.iter().any(|&t| t != DType::F32) {
            return Err(FusedError::DType {
                what: WHAT,
                dtype: format!("RoPE tables {dtypes:?} (must be F32)"),
            });
        }
        let out_shape = [batch, heads, tokens, d];
        let empty =
            || Tensor::<CudaBackend, 4>::empty(out_shape, (&self.device, segments[0].qkv.dtype()));
        let outs = [empty(), empty(), empty()];
        let out_ops = [
            operand(&outs[0], WHAT)?,
            operand(&outs[1], WHAT)?,
            operand(&outs[2], WHAT)?,
        ];
        let (cos_op, sin_op) = (operand(cos, WHAT)?, operand(sin, WHAT)?);
        let mut launches = Vec::with_capacity(segments.len());
        let mut offset = 0usize;
        for s in segments {
            let l_in = s.qkv.dims()[1];
            let (grid, block) = fused_plan::warps((batch * l_in * heads) as u64, WHAT)?;
            launches.push((
                [
                    operand(&s.qkv, WHAT)?,
                    operand(&s.q_scale, WHAT)?,
                    operand(&s.k_scale, WHAT)?,
                ],
                [u32_of(l_in, WHAT)?, u32_of(offset, WHAT)?],
                (grid, block),
            ));
            offset += l_in;
        }
        let dims = [
            u32_of(batch, WHAT)?,
            u32_of(heads, WHAT)?,
            u32_of(d, WHAT)?,
            u32_of(tokens, WHAT)?,
        ];
        self.run(|s| {
            let f = self.function(WHAT, dtype)?;
            for (ins, [l_in, l_offset], (grid, block)) in &launches {
                if *grid == 0 {
                    continue;
                }
                let mut args = s.launch_builder(f);
                args.arg(&ins[0].ptr)
                    .arg(&ins[1].ptr)
                    .arg(&ins[2].ptr)
                    .arg(&cos_op.ptr)
                    .arg(&sin_op.ptr)
                    .arg(&out_ops[0].ptr)
                    .arg(&out_ops[1].ptr)
                    .arg(&out_ops[2].ptr)
                    .arg(&dims[0])
                    .arg(l_in)
                    .arg(&dims[1])
                    .arg(&dims[2])
                    .arg(&dims[3])
                    .arg(l_offset)
                    .arg(&eps);
                // SAFETY: (qkv, q_scale, k_scale, cos, sin, q, k, v, u32 batch, u32 l_in, u32
                // heads, u32 d, u32 l_out, u32 l_offset, f32 eps): qkv holds [B, l_in, 3, H, D]
                // contiguous, the scales D values, the tables [l_out, D] f32, the outputs [B, H,
                // l_out, D] (all checked by `check_qkv`, `operand`, `same_dtype`); warp w reads
                // one token's q, k, v head and table row l_offset + l < l_out, and writes that
                // head's row at l_offset + l of q, k and v only. Segments write disjoint rows.
                unsafe { args.launch(config(*grid, *block)) }.map_err(driver_err(WHAT))?;
            }
            Ok(())
        })?;
        Ok(outs)
    }

    fn function(&self, family: &str, dtype: FusedDType) -> Result<&CudaFunction, FusedError> {
        let name = fused_plan::kernel_name(family, dtype);
        self.functions.get(&name).ok_or_else(|| FusedError::Driver {
            what: name,
            message: "kernel not in the module".into(),
        })
    }

    /// Queues `launch` on our stream after burn's queue (inputs written, outputs' buffers
    /// free) and orders burn's later work after it ([`super::fence`]: on the device, or by host
    /// waits without a fence); the caller's operands live until then.
    fn run(
        &self,
        launch: impl FnOnce(&Arc<CudaStream>) -> Result<(), FusedError>,
    ) -> Result<(), FusedError> {
        let _one = self.launching.lock().unwrap_or_else(|p| p.into_inner());
        self.context.bind_to_thread().map_err(driver_err("bind"))?;
        let ticket = fence::before(&self.device, &self.stream).map_err(burn_err("ordering"))?;
        let launched = launch(&self.stream);
        // Whatever was queued is ordered before burn's later work (and the operands' reuse).
        let ordered = fence::after(ticket, &self.stream).map_err(burn_err("ordering"));
        launched?;
        ordered
    }
}

impl Drop for CudaFused {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
    }
}

fn config(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn fused_dtype(dtype: DType, what: &'static str) -> Result<FusedDType, FusedError> {
    match dtype {
        DType::F32 => Ok(FusedDType::F32),
        DType::BF16 => Ok(FusedDType::BF16),
        other => Err(FusedError::DType {
            what,
            dtype: format!("{other:?}"),
        }),
    }
}

fn same_dtype(dtypes: &[DType], what: &'static str) -> Result<FusedDType, FusedError> {
    let first = dtypes[0];
    if let Some(other) = dtypes.iter().find(|&&d| d != first) {
        return Err(FusedError::DType {
            what,
            dtype: format!("{first:?} with {other:?}"),
        });
    }
    fused_dtype(first, what)
}

fn u32_of(v: usize, what: &'static str) -> Result<u32, FusedError> {
    u32::try_from(v).map_err(|_| FusedError::TooLarge {
        what,
        count: v as u64,
    })
}

/// The primitive of a dense float tensor ([`fused_plan::dense`]) and its device address (the
/// view's offset included).
fn operand<const D: usize>(
    t: &Tensor<CudaBackend, D>,
    what: &'static str,
) -> Result<Operand, FusedError> {
    let tensor: CubeTensor<CudaRuntime> = t.clone().into_primitive().tensor();
    if !fused_plan::dense(tensor.meta.shape(), tensor.meta.strides()) || tensor.qparams.is_some() {
        return Err(FusedError::Shape {
            what,
            shape: tensor.meta.shape().to_vec(),
            why: format!("is not contiguous (strides {:?})", tensor.meta.strides()),
        });
    }
    let resource = tensor
        .client
        .get_resource(tensor.handle.clone())
        .map_err(burn_err(what))?;
    let ptr = resource.resource().ptr;
    Ok(Operand {
        _tensor: tensor,
        ptr,
    })
}
