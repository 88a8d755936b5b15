//! The few torch CPU operations whose exact results the schedules depend on, in f32 and f64.
//!
//! - `torch.linspace` evaluates `start + step * i` in the first half and `end - step * (n - 1 - i)`
//!   in the second, with `step = (end - start) / (n - 1)` in the output type; GCC fuses both into
//!   a multiply-add. Verified against torch 2.15 for f32 and f64 (`tests/sampling/schedulers.rs`).
//! - Transcendental functions on tensors go through MKL VML (`exp`, `log`, `tan`) or SLEEF
//!   (`expm1`, `pow` on 16-element blocks), which are within one ulp but not always correctly
//!   rounded. These helpers return the correctly rounded f32 (computed in f64, rounded once), the
//!   value torch returns for the great majority of inputs.

/// `torch.linspace(start, end, steps, dtype=float32)`.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `torch.linspace(start, end, steps, dtype=float64)`.
pub fn linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f64, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f64, end)
            }
        })
        .collect()
}

/// `exp` of a float32 tensor element, correctly rounded.
pub fn exp(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

/// `log` of a float32 tensor element, correctly rounded.
pub fn ln(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

/// `expm1` of a float32 tensor element, correctly rounded.
pub fn expm1(x: f32) -> f32 {
    f64::from(x).exp_m1() as f32
}

/// `x ** p` of a float32 tensor element and a Python float exponent (torch's scalar path:
/// `std::pow(float, double)`).
pub fn powf(x: f32, p: f64) -> f32 {
    f64::from(x).powf(p) as f32
}

/// `tan` of a float32 tensor element, correctly rounded.
pub fn tan(x: f32) -> f32 {
    f64::from(x).tan() as f32
}

/// Python's `math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)`.
pub fn isclose(a: f64, b: f64, rel_tol: f64, abs_tol: f64) -> bool {
    if a == b {
        return true;
    }
    if a.is_infinite() || b.is_infinite() {
        return false;
    }
    let diff = (b - a).abs();
    diff <= (rel_tol * b).abs() || diff <= (rel_tol * a).abs() || diff <= abs_tol
}
