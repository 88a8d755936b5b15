//! The Box-Muller kernel of torch's CPU `randn` (`NormalFill16<float>` on AVX2), lane by lane.
//!
//! torch fills an f32 tensor with uniforms, then turns each 16 of them into normals with
//! Cephes-style `log256_ps` and `sincos256_ps` polynomials (ATen/native/cpu/avx_mathfun.h). GCC
//! compiles those with FMA contraction, so the exact bits depend on which multiply-adds it fused.
//! The fused places below were read off the disassembly of `NormalFill16<float, true>::operator()`
//! in libtorch_cpu.so 2.15 (x86-64, the AVX2 dispatch that AVX-512 machines use too) and are
//! checked bit for bit against torch (`tests/sampling/noise.rs`). Each lane is independent, so a
//! scalar loop reproduces the vector code exactly; `f32::mul_add` is a true fused multiply-add.

/// Constants as the bit patterns in libtorch (C's double literals rounded to float).
const MIN_NORM_POS: f32 = f32::from_bits(0x0080_0000);
const INV_MANT_MASK: u32 = !0x7f80_0000;
const SIGN_MASK: u32 = 0x8000_0000;
const SQRTHF: f32 = f32::from_bits(0x3f35_04f3); // 0.707106781186547524
const LOG_P: [f32; 9] = [
    f32::from_bits(0x3d90_21bb), // 7.0376836292E-2
    f32::from_bits(0xbdeb_d1b8), // -1.1514610310E-1
    f32::from_bits(0x3def_251a), // 1.1676998740E-1
    f32::from_bits(0xbdfe_5d4f), // -1.2420140846E-1
    f32::from_bits(0x3e11_e9bf), // 1.4249322787E-1
    f32::from_bits(0xbe2a_ae50), // -1.6668057665E-1
    f32::from_bits(0x3e4c_ceac), // 2.0000714765E-1
    f32::from_bits(0xbe7f_fffc), // -2.4999993993E-1
    f32::from_bits(0x3eaa_aaaa), // 3.3333331174E-1
];
const LOG_Q1: f32 = f32::from_bits(0xb95e_8083); // -2.12194440e-4
const LOG_Q2: f32 = f32::from_bits(0x3f31_8000); // 0.693359375
const FOPI: f32 = f32::from_bits(0x3fa2_f983); // 4 / pi
const MINUS_DP1: f32 = f32::from_bits(0xbf49_0000); // -0.78515625
const MINUS_DP2: f32 = f32::from_bits(0xb97d_a000); // -2.4187564849853515625e-4
const MINUS_DP3: f32 = f32::from_bits(0xb322_2169); // -3.77489497744594108e-8
const SINCOF: [f32; 3] = [
    f32::from_bits(0xb94c_a1f9), // -1.9515295891E-4
    f32::from_bits(0x3c08_839e), // 8.3321608736E-3
    f32::from_bits(0xbe2a_aaa3), // -1.6666654611E-1
];
const COSCOF: [f32; 3] = [
    f32::from_bits(0x37cc_f5ce), // 2.443315711809948E-005
    f32::from_bits(0xbab6_061a), // -1.388731625493765E-003
    f32::from_bits(0x3d2a_aaa5), // 4.166664568298827E-002
];
/// `2.0f * c10::pi<double>`, rounded to float by `_mm256_set1_ps`.
const TWO_PI: f32 = f32::from_bits(0x40c9_0fdb);

fn select(mask: bool, value: f32) -> f32 {
    if mask { value } else { 0.0 }
}

/// `log256_ps` for one lane: natural log, NaN for x <= 0.
#[inline(always)]
pub fn log_ps(x: f32) -> f32 {
    let invalid = x <= 0.0;
    // vmaxps keeps the second operand when the first is not greater (NaN included).
    let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS };
    let exponent = (x.to_bits() >> 23) as i32 - 0x7f;
    let x = f32::from_bits((x.to_bits() & INV_MANT_MASK) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let mask = x < SQRTHF;
    let tmp = select(mask, x);
    let mut x = x - 1.0;
    e -= select(mask, 1.0);
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0].mul_add(x, LOG_P[1]);
    for &p in &LOG_P[2..] {
        y = y.mul_add(x, p);
    }
    let e_q1 = e * LOG_Q1;
    y *= x;
    y = y.mul_add(z, e_q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    x = e.mul_add(LOG_Q2, x);
    if invalid {
        f32::from_bits(x.to_bits() | 0xffff_ffff)
    } else {
        x
    }
}

/// `sincos256_ps` for one lane: `(sin x, cos x)`.
#[inline(always)]
pub fn sincos_ps(x: f32) -> (f32, f32) {
    let sign_in = x.to_bits() & SIGN_MASK;
    let ax = f32::from_bits(x.to_bits() & !SIGN_MASK);
    // vcvttps2dq truncates; torch only feeds [0, 2pi) here, far inside i32.
    let j = (((ax * FOPI) as i32).wrapping_add(1)) & !1;
    let yf = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    let sign_sin = sign_in ^ swap_sign_sin;
    let mut x = yf.mul_add(MINUS_DP1, ax);
    x = MINUS_DP2.mul_add(yf, x);
    x = yf.mul_add(MINUS_DP3, x);
    let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;

    let z = x * x;
    let half_z = z * 0.5;
    let mut y = COSCOF[0].mul_add(z, COSCOF[1]);
    y = y.mul_add(z, COSCOF[2]);
    y *= z;
    y = z.mul_add(y, -half_z);
    y += 1.0;

    let mut y2 = SINCOF[0].mul_add(z, SINCOF[1]);
    y2 = y2.mul_add(z, SINCOF[2]);
    y2 *= z;
    y2 = x.mul_add(y2, x);

    let ysin2 = select(poly_mask, y2);
    let ysin1 = select(!poly_mask, y);
    let y2 = y2 - ysin2;
    let y = y - ysin1;
    let sin = ysin2 + ysin1;
    let cos = y2 + y;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

/// `NormalFill16<float>` on every complete block of 16 values of `data`: 16 uniforms in [0, 1)
/// become 16 normals, in place. Lane `j` of a block pairs `block[j]` (radius) with `block[j + 8]`
/// (angle).
pub fn normal_fill(data: &mut [f32], mean: f32, std: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            normal_fill_avx2_fma(data, mean, std)
        };
        return;
    }
    fill_blocks(data, mean, std);
}

/// The same code with hardware FMA (a call to libm's `fmaf` per multiply-add otherwise) and AVX2
/// for the lanes; fused multiply-adds round once either way, so the bits do not change.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn normal_fill_avx2_fma(data: &mut [f32], mean: f32, std: f32) {
    fill_blocks(data, mean, std);
}

#[inline(always)]
fn fill_blocks(data: &mut [f32], mean: f32, std: f32) {
    for block in data.chunks_exact_mut(16) {
        for j in 0..8 {
            let u1 = 1.0 - block[j];
            let u2 = block[j + 8];
            let radius = (-2.0 * log_ps(u1)).sqrt();
            let (sin, cos) = sincos_ps(TWO_PI * u2);
            block[j] = (radius * cos).mul_add(std, mean);
            block[j + 8] = (radius * sin).mul_add(std, mean);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomials_are_accurate_to_a_few_ulp() {
        // The Cephes polynomials are not libm, but they are close: a guard against a wrong constant.
        for i in 1..=4096 {
            let x = i as f32 / 4096.0;
            let exact = f64::from(x).ln();
            assert!(
                (f64::from(log_ps(x)) - exact).abs() <= 2e-7 * exact.abs().max(1.0),
                "log {x}"
            );
            let theta = TWO_PI * x;
            let (sin, cos) = sincos_ps(theta);
            assert!(
                (f64::from(sin) - f64::from(theta).sin()).abs() < 2e-7,
                "sin {theta}"
            );
            assert!(
                (f64::from(cos) - f64::from(theta).cos()).abs() < 2e-7,
                "cos {theta}"
            );
        }
        assert!(log_ps(0.0).is_nan() && log_ps(-1.0).is_nan());
    }
}
