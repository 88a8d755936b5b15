//! A quantized model on the CPU holds its file's mapped pages, one layer's values and the
//! activations, never the model in f32: `weft bench model` on a 214 MB Flux-shaped Q8_0 file,
//! quantized-resident, in its own process (so that its anonymous memory is its own), grows
//! anonymous memory by less than 0.15× the model's f32 size.
use std::process::Command;
use weft_engine::formats::ModelFile;
use weft_models::flux::synthetic::{SynthQuant, SynthShape, write_synthetic_flux};

#[test]
fn a_quantized_flux_on_the_cpu_reads_its_blocks_from_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux-small-q8_0.gguf");
    write_synthetic_flux(
        &path,
        SynthShape::Small,
        SynthQuant::Q8_0,
        3,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    assert!(file_bytes >= 200_000_000, "{file_bytes}");
    let f32_bytes: u64 = ModelFile::open(&path)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.n_elements() * 4)
        .sum();

    let output = Command::new(env!("CARGO_BIN_EXE_weft-test"))
        .env_remove("RUST_LOG")
        .env_remove("WEFT_WEIGHT_RESIDENCY")
        .args(["bench", "model"])
        .arg(&path)
        .args([
            "--device",
            "cpu",
            "--res",
            "64",
            "--steps",
            "2",
            "--text-tokens",
            "16",
        ])
        .args(["--residency", "quantized", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let field = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing: {report}"))
    };
    assert!(
        report["residency"]
            .as_str()
            .unwrap()
            .starts_with("quantized-resident"),
        "{report}"
    );
    assert!(report["latent_finite"].as_bool().unwrap(), "{report}");
    assert_eq!(report["step_ms"].as_array().unwrap().len(), 2);
    // Only the float tensors (norms, biases, the F16 embedders) are copied.
    assert!(
        field("weight_device_bytes") < file_bytes / 10,
        "{} bytes copied of a {file_bytes}-byte file",
        field("weight_device_bytes")
    );
    let growth = field("peak_host_anon_bytes").saturating_sub(field("host_anon_before_bytes"));
    eprintln!("anonymous memory grew by {growth} bytes for a {f32_bytes}-byte f32 model");
    assert!(
        growth * 100 < f32_bytes * 15,
        "anonymous memory grew by {growth} bytes; the model is {f32_bytes} bytes in f32"
    );
}
