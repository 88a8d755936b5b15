//! `weft bench synth-flux --shape tiny` and `weft bench model` on the CPU: the synthetic Flux file
//! reads back with city96's names, types, shapes and gguf-py's layout, and the bench loads it
//! through the patcher and reports every field it promises (values sane, never timed).
use weft::bench_flux::FluxBench;
use weft::bench_model::{BenchModelArgs, measure};
use weft_engine::formats::{GgufFile, StorageType};
use weft_models::flux::synthetic::{SynthQuant, SynthShape, flux_plans, write_synthetic_flux};

fn write_tiny(dir: &std::path::Path, quant: SynthQuant) -> std::path::PathBuf {
    let path = dir.join(format!("flux-{quant:?}.gguf"));
    let mut calls = 0;
    let made = write_synthetic_flux(&path, SynthShape::Tiny, quant, 7, &mut |done, total| {
        assert!(done <= total);
        calls += 1;
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), made.file_bytes);
    assert_eq!(calls, made.tensors + 1);
    path
}

#[test]
fn a_tiny_synthetic_flux_reads_back_with_its_plan_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [SynthQuant::Q8_0, SynthQuant::Q4K] {
        let path = write_tiny(dir.path(), quant);
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let header = file.header();
        assert_eq!(
            header.get("general.architecture").map(|v| format!("{v:?}")),
            Some("String(\"flux\")".to_string())
        );
        let plans = flux_plans(SynthShape::Tiny, quant);
        assert_eq!(file.tensors().len(), plans.len());
        let mut offset = header.data_offset;
        for (info, plan) in file.tensors().iter().zip(&plans) {
            assert_eq!(info.name, plan.name);
            assert_eq!(info.dtype, StorageType::Ggml(plan.ty), "{}", plan.name);
            assert_eq!(info.shape, plan.shape, "{}", plan.name);
            // gguf-py's layout: each tensor at the next aligned offset after the previous one.
            assert_eq!(info.offset, offset, "{}", plan.name);
            assert_eq!(info.nbytes, plan.nbytes().unwrap());
            offset += info.nbytes.div_ceil(header.alignment) * header.alignment;
        }
        assert_eq!(offset, std::fs::metadata(&path).unwrap().len());
        let quantized = plans.iter().filter(|p| p.ty == quant_type(quant)).count();
        assert!(quantized >= 20, "{quant:?}: {quantized} quantized matrices");
        // Every value dequantizes finite.
        let model = weft_engine::formats::ModelFile::open(&path).unwrap();
        for t in model.tensors() {
            assert!(model.dequantize(t).unwrap().iter().all(|v| v.is_finite()));
        }
    }
}

fn quant_type(quant: SynthQuant) -> weft_engine::formats::gguf::GgmlType {
    match quant {
        SynthQuant::Q8_0 => weft_engine::formats::gguf::GgmlType::Q8_0,
        SynthQuant::Q4K => weft_engine::formats::gguf::GgmlType::Q4_K,
    }
}

#[test]
fn bench_model_runs_a_tiny_flux_on_the_cpu_and_reports_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), SynthQuant::Q4K);
    let args = BenchModelArgs {
        file: path,
        device: "cpu".into(),
        res: 64,
        steps: 2,
        text_tokens: 32,
        seed: 1,
        json: true,
        memory: Default::default(),
    };
    let report = measure(&args, &FluxBench).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        report.model.starts_with("flux dev (hidden 256"),
        "{}",
        report.model
    );
    // 64 px → latent 8x8 → 4x4 patches.
    assert_eq!((report.image_tokens, report.text_tokens), (16, 32));
    assert_eq!(report.step_ms.len(), 2);
    assert_eq!(report.first_step_ms, Some(report.step_ms[0]));
    assert_eq!(report.rest_mean_ms, Some(report.step_ms[1]));
    assert!(report.step_ms.iter().all(|ms| ms.is_finite() && *ms > 0.0));
    assert!(report.load_s >= report.upload_s && report.upload_s > 0.0);
    assert_eq!(report.streamed_weights, 0);
    assert!(report.weight_device_bytes > 0);
    assert!(report.latent_finite);
    // On the CPU there is no device memory to read; RSS comes from /proc.
    assert_eq!(report.peak_device_used_bytes, None);
    assert!(report.peak_rss_bytes.is_some_and(|b| b > 0));
    // Bad arguments are errors, not panics.
    let zero = BenchModelArgs {
        steps: 0,
        ..args.clone()
    };
    assert!(measure(&zero, &FluxBench).is_err());
    let gpu = BenchModelArgs {
        device: "gpu".into(),
        ..args
    };
    assert!(measure(&gpu, &FluxBench).is_err());
}
