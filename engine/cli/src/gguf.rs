//! `weft gguf inspect|dump`: look inside GGUF and safetensors model files.
use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use weft_engine::formats::{ModelFile, TensorInfo, npy};

#[derive(Subcommand, Debug)]
pub enum GgufCommand {
    /// Summarise a GGUF or safetensors file: version, alignment, architecture, bytes per
    /// tensor type, metadata.
    Inspect {
        file: PathBuf,
        /// Print JSON: {"version", "alignment", "metadata", "tensors": [{"name", "type",
        /// "shape", "offset", "nbytes"}]}.
        #[arg(long)]
        json: bool,
        /// Also list every tensor in the summary.
        #[arg(long)]
        tensors: bool,
    },
    /// Write one tensor, dequantized to f32 in its PyTorch-order shape, as a .npy file.
    Dump {
        file: PathBuf,
        tensor: String,
        #[arg(short, long, value_name = "OUT.npy")]
        output: PathBuf,
    },
}

pub fn run(cmd: GgufCommand) -> anyhow::Result<()> {
    match cmd {
        GgufCommand::Inspect {
            file,
            json,
            tensors,
        } => {
            let model = ModelFile::open(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspect_json(&model))?);
            } else {
                print!("{}", summary(&model, tensors));
            }
            Ok(())
        }
        GgufCommand::Dump {
            file,
            tensor,
            output,
        } => {
            let model = ModelFile::open(&file)?;
            let info = model.require(&tensor)?;
            let values = model.dequantize(info)?;
            npy::write_f32(&output, &info.shape, &values)
                .with_context(|| format!("writing tensor {tensor:?}"))?;
            eprintln!(
                "wrote {} ({} {:?} -> f32) to {}",
                info.name,
                info.dtype,
                info.shape,
                output.display()
            );
            Ok(())
        }
    }
}

fn tensor_json(t: &TensorInfo) -> Json {
    json!({"name": t.name, "type": t.dtype.name(), "shape": t.shape, "offset": t.offset, "nbytes": t.nbytes})
}

/// The `--json` document; its shape is part of the CLI's contract.
pub fn inspect_json(model: &ModelFile) -> Json {
    let (version, alignment, metadata) = match model {
        ModelFile::Gguf(f) => {
            let h = f.header();
            let meta: Map<String, Json> = h
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            (json!(h.version), json!(h.alignment), meta)
        }
        ModelFile::Safetensors(f) => {
            let meta: Map<String, Json> = f
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), Json::String(v.clone())))
                .collect();
            (Json::Null, Json::Null, meta)
        }
    };
    json!({
        "version": version,
        "alignment": alignment,
        "metadata": metadata,
        "tensors": model.tensors().iter().map(tensor_json).collect::<Vec<_>>(),
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// The human-readable summary; long arrays show their first and last few elements.
pub fn summary(model: &ModelFile, list_tensors: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let file_len = model.mapping().len() as u64;
    let _ = writeln!(
        s,
        "file:         {} ({})",
        model.path().display(),
        human_bytes(file_len)
    );
    let metadata: Vec<(String, String, String)> = match model {
        ModelFile::Gguf(f) => {
            let h = f.header();
            let _ = writeln!(
                s,
                "format:       GGUF v{}, alignment {}",
                h.version, h.alignment
            );
            let _ = writeln!(
                s,
                "architecture: {}",
                h.architecture().unwrap_or("(not set)")
            );
            h.metadata
                .iter()
                .map(|(k, v)| {
                    let shown = match v.as_array() {
                        Some(a) => a.to_json(Some(4)).to_string(),
                        None => v.to_json().to_string(),
                    };
                    (k.clone(), v.type_name(), shown)
                })
                .collect()
        }
        ModelFile::Safetensors(f) => {
            let _ = writeln!(s, "format:       safetensors");
            f.metadata()
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        "STRING".into(),
                        Json::String(v.clone()).to_string(),
                    )
                })
                .collect()
        }
    };
    let tensors = model.tensors();
    let total: u64 = tensors.iter().map(|t| t.nbytes).sum();
    let params: u64 = tensors.iter().map(TensorInfo::n_elements).sum();
    let _ = writeln!(
        s,
        "tensors:      {} ({} parameters, {})",
        tensors.len(),
        params,
        human_bytes(total)
    );
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in tensors {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.nbytes;
    }
    for (ty, (count, bytes)) in by_type {
        let _ = writeln!(
            s,
            "  {ty:<8} {count:>6} tensors  {:>12}",
            human_bytes(bytes)
        );
    }
    let _ = writeln!(s, "metadata:     {} keys", metadata.len());
    for (k, ty, v) in metadata {
        let v = if v.chars().count() > 160 {
            format!("{}…", v.chars().take(160).collect::<String>())
        } else {
            v
        };
        let _ = writeln!(s, "  {k} [{ty}] = {v}");
    }
    if list_tensors {
        let _ = writeln!(s, "tensor list:");
        for t in tensors {
            let _ = writeln!(
                s,
                "  {:<60} {:<8} {:?} @{} ({})",
                t.name,
                t.dtype.name(),
                t.shape,
                t.offset,
                human_bytes(t.nbytes)
            );
        }
    }
    s
}
