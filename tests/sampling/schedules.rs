//! Model-sampling tables and scheduler sigmas against ComfyUI (3cd7b32f) on torch 2.15.
//!
//! Bit-exact where ComfyUI's computation is IEEE arithmetic only; where torch evaluates `exp`,
//! `log`, `pow` or `tan` on float32 tensors (MKL VML / SLEEF, not always correctly rounded) weft
//! uses correctly rounded values, and the sigmas may differ by one ulp.
use std::collections::BTreeMap;

use weft_sampling::model_sampling::flux_shift;
use weft_sampling::{SamplerKind, Scheduler, ksampler_sigmas};

use super::{compare, fixture, hex_f32, model_sampling};

#[test]
fn model_sampling_tables_match_comfyui() {
    let schedules = fixture("schedules.json");
    for (name, table) in schedules["tables"].as_object().expect("tables") {
        let ms = model_sampling(table);
        let sigmas = ms.sigmas();
        assert_eq!(
            sigmas.len() as u64,
            table["table_len"].as_u64().unwrap(),
            "{name}: table length"
        );
        if table.get("sigmas").is_some() {
            let (ulps, _) = compare(name, sigmas, &hex_f32(&table["sigmas"]));
            assert_eq!(ulps, 0, "{name}: sigma table");
        } else {
            assert_eq!(
                compare(name, &sigmas[..16], &hex_f32(&table["sigmas_head"])).0,
                0,
                "{name}: head"
            );
            assert_eq!(
                compare(
                    name,
                    &sigmas[sigmas.len() - 16..],
                    &hex_f32(&table["sigmas_tail"])
                )
                .0,
                0,
                "{name}: tail"
            );
        }
        for probe in table["sigma_of"].as_array().unwrap() {
            let (t, want) = (
                probe[0].as_f64().unwrap() as f32,
                probe[1].as_f64().unwrap() as f32,
            );
            let (ulps, _) = compare(name, &[ms.sigma(t)], &[want]);
            assert!(
                ulps <= 1,
                "{name}: sigma({t}) = {} , ComfyUI {want}",
                ms.sigma(t)
            );
        }
        for probe in table["timestep_of"].as_array().unwrap() {
            let (sigma, want) = (
                probe[0].as_f64().unwrap() as f32,
                probe[1].as_f64().unwrap() as f32,
            );
            assert_eq!(ms.timestep(sigma), want, "{name}: timestep({sigma})");
        }
        for probe in table["percent_to_sigma"].as_array().unwrap() {
            let (percent, want) = (probe[0].as_f64().unwrap(), probe[1].as_f64().unwrap());
            let got = ms.percent_to_sigma(percent);
            assert!(
                (got - want).abs() <= want.abs() * 1e-6,
                "{name}: percent_to_sigma({percent}) = {got}, ComfyUI {want}"
            );
        }
    }
}

#[test]
fn flux_shift_is_the_model_sampling_flux_nodes() {
    let schedules = fixture("schedules.json");
    let shift = |name: &str| schedules["tables"][name]["shift"].as_f64().unwrap();
    assert_eq!(flux_shift(1024, 1024, 1.15, 0.5), shift("flux_1024"));
    assert_eq!(flux_shift(512, 768, 1.15, 0.5), shift("flux_512x768"));
    assert_eq!(flux_shift(1024, 1024, 0.5, 0.5), shift("flux_schnell"));
}

/// Schedulers whose ComfyUI computation involves no tensor transcendental (or only on values
/// that are then used as indices), so weft must match bit for bit on every model.
const EXACT: [Scheduler; 4] = [
    Scheduler::Simple,
    Scheduler::DdimUniform,
    Scheduler::Beta,
    Scheduler::LinearQuadratic,
];

#[test]
fn scheduler_sigmas_match_comfyui() {
    let schedules = fixture("schedules.json");
    let tables = &schedules["tables"];
    let mut worst: BTreeMap<(String, &str), (u64, f32)> = BTreeMap::new();
    let runs = schedules["runs"].as_array().expect("runs");
    for run in runs {
        let model = run["model"].as_str().unwrap();
        let ms = model_sampling(&tables[model]);
        let scheduler = Scheduler::from_name(run["scheduler"].as_str().unwrap()).unwrap();
        let sampler = SamplerKind::from_name(run["sampler"].as_str().unwrap()).unwrap();
        let steps = run["steps"].as_u64().unwrap() as usize;
        let denoise = run["denoise"].as_f64().unwrap();
        let got = ksampler_sigmas(&ms, scheduler, sampler, steps, denoise).unwrap();
        let want = hex_f32(&run["sigmas"]);
        let what = format!(
            "{model} {} {steps} steps, denoise {denoise}, {}",
            scheduler.name(),
            sampler.name()
        );
        let (ulps, abs) = compare(&what, &got, &want);
        if EXACT.contains(&scheduler) {
            assert_eq!(ulps, 0, "{what}: weft {got:?}, ComfyUI {want:?}");
        }
        assert!(
            ulps <= 2,
            "{what}: {ulps} ulps; weft {got:?}, ComfyUI {want:?}"
        );
        let entry = worst
            .entry((model.to_owned(), scheduler.name()))
            .or_default();
        *entry = (entry.0.max(ulps), entry.1.max(abs));
    }
    assert!(
        runs.len() > 700,
        "7 model samplings x 9 schedulers x several step counts"
    );
    for ((model, scheduler), (ulps, abs)) in &worst {
        if *ulps > 0 {
            eprintln!("{model:>16} {scheduler:>16}: max {ulps} ulp, max abs {abs:e}");
        }
    }
}

#[test]
fn unknown_names_list_the_known_ones() {
    let error = Scheduler::from_name("ddim").unwrap_err().to_string();
    assert!(
        error.contains("\"ddim\"") && error.contains("karras") && error.contains("kl_optimal"),
        "{error}"
    );
    let error = SamplerKind::from_name("euler_a").unwrap_err().to_string();
    assert!(error.contains("euler_ancestral"), "{error}");
}

#[test]
fn degenerate_requests_are_errors_or_empty() {
    let ms = weft_sampling::ModelSampling::sd1();
    assert!(Scheduler::Normal.sigmas(&ms, 0).is_err(), "zero steps");
    assert!(
        Scheduler::KlOptimal.sigmas(&ms, 1).is_err(),
        "kl_optimal divides by steps - 1"
    );
    assert!(
        ksampler_sigmas(&ms, Scheduler::Normal, SamplerKind::Euler, 20, 0.0)
            .unwrap()
            .is_empty(),
        "denoise 0"
    );
    assert!(
        ksampler_sigmas(&ms, Scheduler::Normal, SamplerKind::Euler, 20, f64::NAN).is_err(),
        "NaN denoise"
    );
    assert_eq!(
        ksampler_sigmas(&ms, Scheduler::Karras, SamplerKind::Euler, 10, 0.5)
            .unwrap()
            .len(),
        11,
        "tail of 20 steps"
    );
}
