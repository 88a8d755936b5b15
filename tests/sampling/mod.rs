//! Sampling against torch 2.15 and ComfyUI's own code (fixtures made by
//! tools/gen_sampling_fixtures.py): the noise bit for bit, model-sampling tables, every scheduler's
//! sigmas, and whole KSampler runs of every sampler on an analytic model.
mod noise;
mod samplers;
mod schedules;

use std::path::Path;

use serde_json::Value;
use weft_sampling::ModelSampling;
use weft_sampling::model_sampling::{BetaSchedule, Parameterization};

/// A fixture of tests/fixtures/sampling, parsed.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/sampling")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Float32 values from the fixtures' hex strings (8 hex digits of bit pattern each).
pub fn hex_f32(value: &Value) -> Vec<f32> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {value}"));
    assert_eq!(text.len() % 8, 0, "hex string length");
    (0..text.len() / 8)
        .map(|i| {
            f32::from_bits(u32::from_str_radix(&text[8 * i..8 * i + 8], 16).expect("hex digits"))
        })
        .collect()
}

/// The distance between two floats in units in the last place (0 when bitwise equal).
pub fn ulps(a: f32, b: f32) -> u64 {
    if a.to_bits() == b.to_bits() || (a == 0.0 && b == 0.0) {
        return 0;
    }
    if a.is_nan() || b.is_nan() || a.is_sign_negative() != b.is_sign_negative() {
        return u64::MAX;
    }
    u64::from(a.to_bits().abs_diff(b.to_bits()))
}

/// The largest ulp distance and largest absolute difference between two equally long slices.
pub fn compare(what: &str, got: &[f32], want: &[f32]) -> (u64, f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0u64, 0f32);
    for (g, w) in got.iter().zip(want) {
        worst.0 = worst.0.max(ulps(*g, *w));
        worst.1 = worst.1.max((g - w).abs());
    }
    worst
}

/// The model sampling a fixture describes (`describe` in the generator).
pub fn model_sampling(description: &Value) -> ModelSampling {
    let number = |key: &str| {
        description[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {description}"))
    };
    match description["kind"].as_str() {
        Some("discrete") => {
            let schedule = match description["beta_schedule"].as_str() {
                Some("linear") => BetaSchedule::Linear,
                _ => BetaSchedule::SqrtLinear,
            };
            ModelSampling::discrete(Parameterization::Eps, schedule, 1000, 0.00085, 0.012).unwrap()
        }
        Some("flux") => ModelSampling::flux(number("shift")).unwrap(),
        Some("discrete_flow") => {
            ModelSampling::discrete_flow(number("shift"), number("multiplier")).unwrap()
        }
        other => panic!("unknown model sampling {other:?}"),
    }
}
