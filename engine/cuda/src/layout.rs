//! The host-side logic of the GEMM fast path (no GPU needed, unit-tested on the CPU): shape
//! checks, how a strided 2-D tensor view maps onto a BLAS operand, the row-major →
//! column-major mapping cuBLASLt needs, and the epilogue a product's bias and activation ask for.
//!
//! burn tensors are row-major; cuBLAS(Lt) is column-major. A row-major `[r, c]` matrix with row
//! stride `ld` *is* the column-major `[c, r]` matrix with leading dimension `ld`, i.e. its
//! transpose. So `C = A·B` (row-major) is computed as the column-major `Cᵀ = Bᵀ·Aᵀ`: cuBLASLt's
//! first operand is our `B`, its second our `A`, its `m` our `N`, its `n` our `M`, and the output
//! needs no transpose at all.
//!
//! A view whose *rows* are unit-stride (a transposed view, e.g. `w.transpose()` of a `[N, K]`
//! weight) is a plain column-major matrix; it is handed to cuBLASLt with the transpose flag
//! instead of being copied. Padded ("pitched") rows are fine: the real row stride becomes the
//! leading dimension. Anything else (broadcast zero strides, both strides non-unit) is not a BLAS
//! operand, and the caller falls back to burn's matmul.
use super::activation::Activation;
use thiserror::Error;

/// Why the fast path cannot run a product (the caller falls back to burn, or reports the error
/// for a real shape mismatch).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LayoutError {
    #[error("matmul shapes do not agree: [{m}, {k_a}] · [{k_b}, {n}]")]
    ShapeMismatch {
        m: usize,
        k_a: usize,
        k_b: usize,
        n: usize,
    },
    #[error("bias has {got} elements, the product has {n} columns")]
    BiasLength { got: usize, n: usize },
    #[error("{what} is not a BLAS operand (shape {shape:?}, strides {strides:?})")]
    NotBlasOperand {
        what: &'static str,
        shape: [usize; 2],
        strides: [usize; 2],
    },
    #[error("empty product ([{m}, {k}] · [{k}, {n}])")]
    Empty { m: usize, k: usize, n: usize },
    #[error("dimension {0} does not fit cuBLASLt's 64-bit signed sizes")]
    TooLarge(usize),
}

/// A 2-D view of a buffer: `shape = [rows, cols]`, `strides` in elements, row-major indexing
/// (`element(r, c) = base + r * strides[0] + c * strides[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View2d {
    pub shape: [usize; 2],
    pub strides: [usize; 2],
}

impl View2d {
    /// A dense row-major `[rows, cols]` matrix.
    pub fn contiguous(rows: usize, cols: usize) -> Self {
        View2d {
            shape: [rows, cols],
            strides: [cols, 1],
        }
    }

    /// From burn/cubecl shape and strides; `None` unless both have exactly two entries.
    pub fn from_slices(shape: &[usize], strides: &[usize]) -> Option<Self> {
        match (shape, strides) {
            ([r, c], [sr, sc]) => Some(View2d {
                shape: [*r, *c],
                strides: [*sr, *sc],
            }),
            _ => None,
        }
    }
}

/// How a view is read as a BLAS operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Unit-stride columns: row-major with this row stride (≥ cols).
    RowMajor { ld: usize },
    /// Unit-stride rows: a transposed view, column-major with this column stride (≥ rows).
    ColMajor { ld: usize },
}

/// How `view` can be handed to BLAS, if at all. The stride of an extent-1 dimension never matters
/// (burn may put anything there); row-major wins when both readings are valid.
pub fn access(view: View2d) -> Option<Access> {
    let [rows, cols] = view.shape;
    let [sr, sc] = view.strides;
    let cols_unit = cols <= 1 || sc == 1;
    let rows_unit = rows <= 1 || sr == 1;
    if cols_unit && (rows <= 1 || sr >= cols.max(1)) {
        let ld = if rows <= 1 { cols.max(1) } else { sr };
        return Some(Access::RowMajor { ld });
    }
    if rows_unit && (cols <= 1 || sc >= rows.max(1)) {
        let ld = if cols <= 1 { rows.max(1) } else { sc };
        return Some(Access::ColMajor { ld });
    }
    None
}

/// One column-major matrix operand of `cublasLtMatmul`: the layout (`rows × cols`, `ld`) of the
/// matrix as stored, and whether the op transposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LtOperand {
    pub transpose: bool,
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
}

/// A row-major product `C[M, N] = A[M, K] · B[K, N]` (+ bias[N]) as the column-major cuBLASLt
/// problem `D(m × n) = op(first)(m × k) · op(second)(k × n)` with `m = N`, `n = M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LtProblem {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// cuBLASLt's A: our B.
    pub first: LtOperand,
    /// cuBLASLt's B: our A.
    pub second: LtOperand,
    /// Layout of C/D: `m × n`, leading dimension `ldc` (our dense row-major `[M, N]`: `ldc = N`).
    pub ldc: i64,
}

fn to_i64(v: usize) -> Result<i64, LayoutError> {
    i64::try_from(v).map_err(|_| LayoutError::TooLarge(v))
}

fn to_u64(v: usize) -> Result<u64, LayoutError> {
    u64::try_from(v).map_err(|_| LayoutError::TooLarge(v))
}

/// The shapes of `A·B`: `(M, K, N)`, or the mismatch.
pub fn product_dims(a: [usize; 2], b: [usize; 2]) -> Result<(usize, usize, usize), LayoutError> {
    let ([m, k_a], [k_b, n]) = (a, b);
    if k_a != k_b {
        return Err(LayoutError::ShapeMismatch { m, k_a, k_b, n });
    }
    Ok((m, k_a, n))
}

/// The cuBLASLt problem for `a · b` written densely into a row-major `[M, N]` output.
pub fn plan(a: View2d, b: View2d) -> Result<LtProblem, LayoutError> {
    let (m, k, n) = product_dims(a.shape, b.shape)?;
    if m == 0 || k == 0 || n == 0 {
        return Err(LayoutError::Empty { m, k, n });
    }
    let not_blas = |what, v: View2d| LayoutError::NotBlasOperand {
        what,
        shape: v.shape,
        strides: v.strides,
    };
    // Our B ([K, N]) is cuBLASLt's A (m × k = N × K).
    let first = match access(b).ok_or_else(|| not_blas("B", b))? {
        // Row-major B is the column-major N × K matrix Bᵀ: no transpose.
        Access::RowMajor { ld } => LtOperand {
            transpose: false,
            rows: to_u64(n)?,
            cols: to_u64(k)?,
            ld: to_i64(ld)?,
        },
        // A column-major B is stored K × N: transpose it.
        Access::ColMajor { ld } => LtOperand {
            transpose: true,
            rows: to_u64(k)?,
            cols: to_u64(n)?,
            ld: to_i64(ld)?,
        },
    };
    // Our A ([M, K]) is cuBLASLt's B (k × n = K × M).
    let second = match access(a).ok_or_else(|| not_blas("A", a))? {
        Access::RowMajor { ld } => LtOperand {
            transpose: false,
            rows: to_u64(k)?,
            cols: to_u64(m)?,
            ld: to_i64(ld)?,
        },
        Access::ColMajor { ld } => LtOperand {
            transpose: true,
            rows: to_u64(m)?,
            cols: to_u64(k)?,
            ld: to_i64(ld)?,
        },
    };
    Ok(LtProblem {
        m: to_u64(n)?,
        n: to_u64(m)?,
        k: to_u64(k)?,
        first,
        second,
        ldc: to_i64(n)?,
    })
}

/// The view of `Wᵀ` for a weight stored `[N, K]` (PyTorch / GGUF `[out, in]`), so that
/// `x · Wᵀ` is `plan(x, transposed(w))`.
pub fn transposed(w: View2d) -> View2d {
    View2d {
        shape: [w.shape[1], w.shape[0]],
        strides: [w.strides[1], w.strides[0]],
    }
}

/// A bias of `len` elements with stride `stride` added to every row of an `[M, N]` product: it
/// must have `N` unit-stride elements (cuBLASLt's bias epilogue reads a dense vector).
pub fn check_bias(len: usize, stride: usize, n: usize) -> Result<(), LayoutError> {
    if len != n {
        return Err(LayoutError::BiasLength { got: len, n });
    }
    if len > 1 && stride != 1 {
        return Err(LayoutError::NotBlasOperand {
            what: "bias",
            shape: [1, len],
            strides: [len, stride],
        });
    }
    Ok(())
}

/// What cuBLASLt does to the product before writing it: one of its epilogues, chosen by the
/// bias and the activation. Part of a plan's identity (the descriptor carries it), so a cached
/// plan of one epilogue never serves another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// `D = A·B`.
    Plain,
    /// `D = A·B + bias`.
    Bias,
    /// `D = gelu_tanh(A·B)`.
    Gelu,
    /// `D = gelu_tanh(A·B + bias)`.
    GeluBias,
}

impl Epilogue {
    pub fn new(bias: bool, activation: Activation) -> Self {
        match (bias, activation) {
            (false, Activation::Identity) => Epilogue::Plain,
            (true, Activation::Identity) => Epilogue::Bias,
            (false, Activation::GeluTanh) => Epilogue::Gelu,
            (true, Activation::GeluTanh) => Epilogue::GeluBias,
        }
    }

    /// Whether the epilogue reads a bias vector (its pointer and data type must be set).
    pub fn has_bias(self) -> bool {
        matches!(self, Epilogue::Bias | Epilogue::GeluBias)
    }
}

/// The alignment (bytes, a power of two up to 256) a device address guarantees, for cuBLASLt's
/// `MIN_ALIGNMENT_*` preferences: kernels that need more are then never picked.
pub fn pointer_alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        1u32 << ptr.trailing_zeros().min(8)
    }
}

/// Floating-point operations of an `[M, K] · [K, N]` product.
pub fn gemm_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: column-major op(X)(i, j) read from a buffer with the operand's layout.
    fn lt_elem(buf: &[f32], op: LtOperand, i: usize, j: usize) -> f32 {
        let (r, c) = if op.transpose { (j, i) } else { (i, j) };
        assert!((r as u64) < op.rows && (c as u64) < op.cols);
        buf[r + c * op.ld as usize]
    }

    /// Runs the column-major problem naively on host buffers and returns row-major C.
    fn run_lt(p: LtProblem, first: &[f32], second: &[f32]) -> Vec<f32> {
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let mut d = vec![0f32; p.ldc as usize * n];
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0.0;
                for l in 0..k {
                    acc += lt_elem(first, p.first, i, l) * lt_elem(second, p.second, l, j);
                }
                d[i + j * p.ldc as usize] = acc;
            }
        }
        d
    }

    fn read(buf: &[f32], v: View2d, r: usize, c: usize) -> f32 {
        buf[r * v.strides[0] + c * v.strides[1]]
    }

    fn naive(a: &[f32], av: View2d, b: &[f32], bv: View2d) -> Vec<f32> {
        let (m, k, n) = product_dims(av.shape, bv.shape).unwrap();
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| read(a, av, i, l) * read(b, bv, l, j)).sum();
            }
        }
        c
    }

    fn buffer(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 17) as f32 - 8.0)
            .collect()
    }

    fn check(av: View2d, bv: View2d, a_len: usize, b_len: usize) {
        let (a, b) = (buffer(a_len, 1), buffer(b_len, 7));
        let p = plan(av, bv).unwrap();
        assert_eq!(
            run_lt(p, &b, &a),
            naive(&a, av, &b, bv),
            "{av:?} · {bv:?} -> {p:?}"
        );
    }

    #[test]
    fn epilogue_of_every_bias_and_activation() {
        use Activation::{GeluTanh, Identity};
        let all = [
            (false, Identity, Epilogue::Plain),
            (true, Identity, Epilogue::Bias),
            (false, GeluTanh, Epilogue::Gelu),
            (true, GeluTanh, Epilogue::GeluBias),
        ];
        for (bias, activation, want) in all {
            let e = Epilogue::new(bias, activation);
            assert_eq!(e, want);
            // The plan sets the bias' data type (and the launch its pointer) from this.
            assert_eq!(e.has_bias(), bias);
        }
    }

    #[test]
    fn row_major_times_row_major() {
        check(View2d::contiguous(3, 4), View2d::contiguous(4, 5), 12, 20);
    }

    #[test]
    fn x_times_w_transposed_uses_the_transpose_flag() {
        // W stored [N=5, K=4], as models store it; x [3, 4].
        let w = View2d::contiguous(5, 4);
        let p = plan(View2d::contiguous(3, 4), transposed(w)).unwrap();
        assert!(p.first.transpose && !p.second.transpose);
        assert_eq!((p.m, p.n, p.k, p.ldc), (5, 3, 4, 5));
        assert_eq!(
            p.first,
            LtOperand {
                transpose: true,
                rows: 4,
                cols: 5,
                ld: 4
            }
        );
        check(View2d::contiguous(3, 4), transposed(w), 12, 20);
    }

    #[test]
    fn transposed_left_operand_and_padded_rows() {
        // A is a transposed view of a [K=4, M=3] buffer; B has rows padded to 8.
        let a = transposed(View2d::contiguous(4, 3));
        let b = View2d {
            shape: [4, 5],
            strides: [8, 1],
        };
        assert_eq!(access(b), Some(Access::RowMajor { ld: 8 }));
        check(a, b, 12, 32);
        // Both transposed, with padding on the column-major one.
        let b = View2d {
            shape: [4, 5],
            strides: [1, 6],
        };
        check(a, b, 12, 30);
    }

    #[test]
    fn vectors_and_extent_one_dims_ignore_their_stride() {
        assert_eq!(
            access(View2d {
                shape: [1, 7],
                strides: [0, 1]
            }),
            Some(Access::RowMajor { ld: 7 })
        );
        assert_eq!(
            access(View2d {
                shape: [7, 1],
                strides: [1, 99]
            }),
            Some(Access::RowMajor { ld: 1 })
        );
        check(
            View2d {
                shape: [1, 4],
                strides: [0, 1],
            },
            View2d {
                shape: [4, 1],
                strides: [1, 3],
            },
            4,
            4,
        );
    }

    #[test]
    fn non_blas_views_are_refused_not_miscomputed() {
        // Broadcast rows (stride 0) and overlapping rows.
        for v in [
            View2d {
                shape: [4, 5],
                strides: [0, 1],
            },
            View2d {
                shape: [4, 5],
                strides: [3, 1],
            },
            View2d {
                shape: [4, 5],
                strides: [10, 2],
            },
        ] {
            assert_eq!(access(v), None, "{v:?}");
            assert!(matches!(
                plan(View2d::contiguous(2, 4), v),
                Err(LayoutError::NotBlasOperand { what: "B", .. })
            ));
        }
    }

    #[test]
    fn shape_errors() {
        assert_eq!(
            plan(View2d::contiguous(2, 3), View2d::contiguous(4, 5)),
            Err(LayoutError::ShapeMismatch {
                m: 2,
                k_a: 3,
                k_b: 4,
                n: 5
            })
        );
        assert!(matches!(
            plan(View2d::contiguous(0, 3), View2d::contiguous(3, 5)),
            Err(LayoutError::Empty { .. })
        ));
        assert_eq!(View2d::from_slices(&[2, 3, 4], &[12, 4, 1]), None);
        assert_eq!(check_bias(5, 1, 5), Ok(()));
        assert_eq!(
            check_bias(4, 1, 5),
            Err(LayoutError::BiasLength { got: 4, n: 5 })
        );
        assert!(check_bias(5, 2, 5).is_err());
    }

    #[test]
    fn alignment_and_flops() {
        assert_eq!(pointer_alignment(0x7f00_0000_0000), 256);
        assert_eq!(pointer_alignment(0x1002), 2);
        assert_eq!(pointer_alignment(0x1010), 16);
        assert_eq!(gemm_flops(8192, 8192, 8192), 2.0 * 8192f64.powi(3));
    }
}
