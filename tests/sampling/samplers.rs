//! Whole KSampler runs against ComfyUI's `KSAMPLER.sample` (noise scaling, the k-diffusion loop,
//! its default noise samplers, inverse noise scaling) on an analytic model
//! `denoised = x·a + target·(1 - a)`, `a = 1 / (1 + sigma²)`, for an EPS model (SD1) and two flow
//! models (Flux, SD3). Every step's `x` and `denoised`, every sigma the model saw, and the result are
//! compared.
use std::cell::RefCell;
use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use weft_sampling::model_sampling::{BetaSchedule, Parameterization};
use weft_sampling::samplers::cfg_is_skipped;
use weft_sampling::{
    CfgDenoiser, Denoiser, Guidance, ModelSampling, SamplerHooks, SamplerKind, SamplerRun,
    SamplingError,
};
use weft_tests::B;

use super::{compare, fixture, hex_f32, model_sampling};

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values(t: &Tensor<B, 4>) -> Vec<f32> {
    t.to_data().to_vec::<f32>().expect("f32 tensor")
}

/// The analytic model, in the same float32 order as the generator's `AnalyticModel`.
fn analytic(
    target: Tensor<B, 4>,
    seen: &RefCell<Vec<f32>>,
) -> impl FnMut(Tensor<B, 4>, f32) -> Result<Tensor<B, 4>, SamplingError> + '_ {
    move |x, sigma| {
        seen.borrow_mut().push(sigma);
        let a = 1.0 / (1.0 + sigma * sigma);
        Ok(x.mul_scalar(a) + target.clone().mul_scalar(1.0 - a))
    }
}

/// Samplers whose every operation is IEEE arithmetic (and sqrt) on both sides: bit-exact.
const EXACT: [SamplerKind; 5] = [
    SamplerKind::Euler,
    SamplerKind::EulerAncestral,
    SamplerKind::Heun,
    SamplerKind::Ddpm,
    SamplerKind::Lcm,
];

#[test]
fn sampler_runs_match_comfyui() {
    let data = fixture("samplers.json");
    let tables = fixture("schedules.json")["tables"].clone();
    let dims: Vec<usize> = data["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let shape = [dims[0], dims[1], dims[2], dims[3]];
    let seed = data["seed"].as_u64().unwrap();
    let noise = hex_f32(&data["noise"]);
    let target = tensor(hex_f32(&data["target"]), shape);
    let img2img = hex_f32(&data["img2img_latent"]);

    let mut worst: BTreeMap<(String, &str), (u64, f32)> = BTreeMap::new();
    let runs = data["runs"].as_array().expect("runs");
    for run in runs {
        let model = run["model"].as_str().unwrap();
        let ms: ModelSampling = model_sampling(&tables[model]);
        let sampler = SamplerKind::from_name(run["sampler"].as_str().unwrap()).unwrap();
        let sigmas = hex_f32(&run["sigmas"]);
        let latent = if run["latent"] == "zeros" {
            vec![0.0; noise.len()]
        } else {
            img2img.clone()
        };
        let what = format!(
            "{model} {} ({} {} steps, denoise {})",
            sampler.name(),
            run["scheduler"],
            run["steps"],
            run["denoise"]
        );

        let seen_sigmas = RefCell::new(Vec::new());
        let steps_seen = RefCell::new(Vec::new());
        let mut denoiser = analytic(target.clone(), &seen_sigmas);
        let mut hooks = SamplerHooks::none().on_step(|step| {
            steps_seen
                .borrow_mut()
                .push((values(step.x), values(step.denoised)))
        });
        let out = SamplerRun {
            sampler,
            model_sampling: &ms,
            sigmas: &sigmas,
            seed,
        }
        .run(
            &mut denoiser,
            tensor(noise.clone(), shape),
            tensor(latent, shape),
            &mut hooks,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        drop(hooks);

        let mut run_worst = compare(
            &format!("{what}: model sigmas"),
            &seen_sigmas.borrow(),
            &hex_f32(&run["model_sigmas"]),
        );
        let want_steps = run["steps_seen"].as_array().unwrap();
        assert_eq!(
            steps_seen.borrow().len(),
            want_steps.len(),
            "{what}: progress reports"
        );
        for (i, ((x, denoised), want)) in steps_seen.borrow().iter().zip(want_steps).enumerate() {
            for (got, want, name) in [
                (x, &want["x"], "x"),
                (denoised, &want["denoised"], "denoised"),
            ] {
                let (ulps, abs) = compare(&format!("{what}: step {i} {name}"), got, &hex_f32(want));
                run_worst = (run_worst.0.max(ulps), run_worst.1.max(abs));
            }
        }
        let (ulps, abs) = compare(
            &format!("{what}: result"),
            &values(&out),
            &hex_f32(&run["out"]),
        );
        run_worst = (run_worst.0.max(ulps), run_worst.1.max(abs));
        if EXACT.contains(&sampler) {
            assert_eq!(
                run_worst.0, 0,
                "{what}: not bit-exact (max abs {:e})",
                run_worst.1
            );
        }
        assert!(
            run_worst.1 <= 2e-5,
            "{what}: max abs difference {:e}",
            run_worst.1
        );
        let entry = worst.entry((model.to_owned(), sampler.name())).or_default();
        *entry = (entry.0.max(run_worst.0), entry.1.max(run_worst.1));
    }
    assert_eq!(
        runs.len(),
        3 * 11 * 2,
        "3 model samplings x 11 samplers x 2 runs"
    );
    for ((model, sampler), (ulps, abs)) in &worst {
        eprintln!("{model:>10} {sampler:>18}: max {ulps} ulp, max abs {abs:e}");
    }
}

fn small_run(
    hooks: &mut SamplerHooks<'_, B>,
    calls: &RefCell<Vec<f32>>,
    sigmas: &[f32],
) -> Result<Tensor<B, 4>, SamplingError> {
    let ms = ModelSampling::sd1();
    let shape = [1, 2, 4, 4];
    let target = tensor(vec![0.5; 32], shape);
    let mut denoiser = analytic(target, calls);
    SamplerRun {
        sampler: SamplerKind::Heun,
        model_sampling: &ms,
        sigmas,
        seed: 0,
    }
    .run(
        &mut denoiser,
        tensor(weft_sampling::torch_randn(0, &shape), shape),
        tensor(vec![0.0; 32], shape),
        hooks,
    )
}

#[test]
fn progress_is_reported_once_per_step_and_cancel_stops_before_the_model() {
    let sigmas = [14.6, 7.0, 2.0, 0.5, 0.0];
    let calls = RefCell::new(Vec::new());
    let mut reported = Vec::new();
    let mut hooks = SamplerHooks::none()
        .on_step(|step| reported.push((step.step, step.total_steps, step.sigma)));
    small_run(&mut hooks, &calls, &sigmas).unwrap();
    drop(hooks);
    assert_eq!(
        reported,
        vec![(0, 4, 14.6), (1, 4, 7.0), (2, 4, 2.0), (3, 4, 0.5)]
    );
    assert_eq!(
        calls.borrow().len(),
        7,
        "heun: two calls per step, one on the last"
    );

    let calls = RefCell::new(Vec::new());
    let mut hooks = SamplerHooks::none().cancel_when(|| calls.borrow().len() >= 3);
    let result = small_run(&mut hooks, &calls, &sigmas);
    assert!(matches!(result, Err(SamplingError::Cancelled)), "cancelled");
    assert_eq!(calls.borrow().len(), 3, "no model call after the cancel");
}

#[test]
fn bad_inputs_are_errors_and_no_sigmas_pass_the_latent_through() {
    let calls = RefCell::new(Vec::new());
    let error = small_run(&mut SamplerHooks::none(), &calls, &[14.6, f32::NAN, 0.0]).unwrap_err();
    assert!(error.to_string().contains("sigmas"), "{error}");
    let out = small_run(&mut SamplerHooks::none(), &calls, &[]).unwrap();
    assert_eq!(values(&out), vec![0.0; 32], "the latent image itself");
    assert!(calls.borrow().is_empty());

    let ms = ModelSampling::sd1();
    let mut denoiser = |x: Tensor<B, 4>, _: f32| Ok(x);
    let error = SamplerRun {
        sampler: SamplerKind::Euler,
        model_sampling: &ms,
        sigmas: &[1.0, 0.0],
        seed: 0,
    }
    .run(
        &mut denoiser,
        tensor(vec![0.0; 32], [1, 2, 4, 4]),
        tensor(vec![0.0; 16], [1, 1, 4, 4]),
        &mut SamplerHooks::none(),
    )
    .unwrap_err();
    assert!(
        matches!(error, SamplingError::ShapeMismatch { .. }),
        "{error}"
    );
}

#[test]
fn parameterizations_match_comfyui() {
    let data = fixture("samplers.json");
    let dims: Vec<usize> = data["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let shape = [dims[0], dims[1], dims[2], dims[3]];
    let noise = tensor(hex_f32(&data["noise"]), shape);
    let target = tensor(hex_f32(&data["target"]), shape);
    let latent = tensor(hex_f32(&data["img2img_latent"]), shape);
    let eps = ModelSampling::sd1();
    let v = ModelSampling::discrete(
        Parameterization::VPrediction,
        BetaSchedule::Linear,
        1000,
        0.00085,
        0.012,
    )
    .unwrap();
    let flow = ModelSampling::flux(1.15).unwrap();
    for case in data["parameterizations"]
        .as_array()
        .expect("parameterizations")
    {
        let ms = match case["parameterization"].as_str() {
            Some("eps") => &eps,
            Some("v") => &v,
            _ => &flow,
        };
        let sigma = case["sigma"].as_f64().unwrap() as f32;
        let what = format!("{} at sigma {sigma}", case["parameterization"]);
        let outputs = [
            ("calculate_input", ms.calculate_input(sigma, noise.clone())),
            (
                "calculate_denoised",
                ms.calculate_denoised(sigma, target.clone(), noise.clone()),
            ),
            (
                "noise_scaling",
                ms.noise_scaling(sigma, noise.clone(), latent.clone(), false),
            ),
            (
                "noise_scaling_max",
                ms.noise_scaling(sigma, noise.clone(), latent.clone(), true),
            ),
            (
                "inverse_noise_scaling",
                ms.inverse_noise_scaling(sigma, target.clone()),
            ),
        ];
        for (name, got) in outputs {
            let (ulps, abs) = compare(&what, &values(&got), &hex_f32(&case[name]));
            assert_eq!(ulps, 0, "{what}: {name} differs by up to {abs:e}");
        }
    }
}

#[test]
fn cfg_denoiser_guides_and_skips_the_negative_pass_at_cfg_1() {
    let ms = ModelSampling::flux(1.15).unwrap();
    let shape = [1, 2, 2, 4];
    let x = tensor(weft_sampling::torch_randn(3, &shape), shape);
    let passes = RefCell::new(Vec::new());
    // A "network" whose velocity is x + 1 for the positive prompt and x - 1 for the negative one.
    let model = |input: Tensor<B, 4>, timestep: f32, guidance: Guidance| {
        passes.borrow_mut().push((timestep, guidance));
        Ok(input.add_scalar(if guidance == Guidance::Positive {
            1.0
        } else {
            -1.0
        }))
    };
    let sigma = 0.75;
    let cond = ms.calculate_denoised(sigma, x.clone().add_scalar(1.0), x.clone());
    let uncond = ms.calculate_denoised(sigma, x.clone().add_scalar(-1.0), x.clone());

    let got = CfgDenoiser::new(&ms, 1.0, model)
        .denoise(x.clone(), sigma)
        .unwrap();
    assert_eq!(
        values(&got),
        values(&cond),
        "cfg 1: the positive estimate itself"
    );
    assert_eq!(
        *passes.borrow(),
        vec![(sigma, Guidance::Positive)],
        "one pass, timestep = sigma for Flux"
    );

    passes.borrow_mut().clear();
    let model = |input: Tensor<B, 4>, _: f32, guidance: Guidance| {
        passes.borrow_mut().push((0.0, guidance));
        Ok(input.add_scalar(if guidance == Guidance::Positive {
            1.0
        } else {
            -1.0
        }))
    };
    let got = CfgDenoiser::new(&ms, 3.5, model).denoise(x, sigma).unwrap();
    let want = uncond.clone() + (cond - uncond).mul_scalar(3.5);
    assert_eq!(
        values(&got),
        values(&want),
        "uncond + (cond - uncond) * cfg"
    );
    assert_eq!(passes.borrow().len(), 2);
    assert!(cfg_is_skipped(1.0) && cfg_is_skipped(1.0 + 1e-12) && !cfg_is_skipped(1.01));
}
