//! Which form a model's weights take on the device: dequantized-resident (every weight in the
//! compute dtype, the fastest products) when the dequantized model fits the room the memory
//! manager has for it, else quantized-resident (GGUF blocks as stored, dequantized layer by layer
//! at each product), so that a model fits where its file fits.
#![forbid(unsafe_code)]

use crate::patcher::{LoadOptions, WeightFormat};
use crate::weights::cache::human_bytes;
use burn::tensor::DType;
use std::fmt;

/// What the user asked for (`--residency`, `WEFT_WEIGHT_RESIDENCY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum ResidencyChoice {
    /// Decide per model from the room on the device.
    #[default]
    Auto,
    /// Always dequantize at load (the whole model in the compute dtype).
    Dequantized,
    /// Always keep quantized weights as their blocks.
    Quantized,
}

impl std::str::FromStr for ResidencyChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ResidencyChoice::Auto),
            "dequantized" | "bf16" => Ok(ResidencyChoice::Dequantized),
            "quantized" => Ok(ResidencyChoice::Quantized),
            other => Err(format!(
                "{other:?}: expected auto, dequantized (or bf16) or quantized"
            )),
        }
    }
}

/// The form a model got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Residency {
    /// Every weight dequantized to the compute dtype at load.
    Dequantized,
    /// Quantized weights kept as their blocks; the rest as stored.
    Quantized,
}

impl Residency {
    /// The load options of this form, weights computed in `compute_dtype`.
    pub fn options(self, compute_dtype: DType) -> LoadOptions {
        LoadOptions {
            format: match self {
                Residency::Dequantized => WeightFormat::Dequantized,
                Residency::Quantized => WeightFormat::AsStored,
            },
            compute_dtype,
        }
    }
}

impl fmt::Display for Residency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Residency::Dequantized => "dequantized-resident",
            Residency::Quantized => "quantized-resident",
        })
    }
}

/// The choice and why it was made (for the log line `weft run` writes per model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidencyPlan {
    /// The form.
    pub residency: Residency,
    /// Why, in words.
    pub reason: String,
}

/// Activations and scratch need room beside the weights: a dequantized model is taken only when
/// it fits with this share of its size to spare (Flux-dev at 1024², bf16: 3.3 GiB of peak over
/// 22.2 GiB of weights, docs/BENCHMARKS.md).
pub const ACTIVATION_SHARE: u64 = 6;

/// Chooses the form of a model whose full load takes `dense_bytes` dequantized and
/// `quantized_bytes` with its blocks kept, when the manager has `room` bytes for it (`None`:
/// unknown, as on a device that cannot report its memory: today's dequantized form).
pub fn plan(
    choice: ResidencyChoice,
    dense_bytes: u64,
    quantized_bytes: u64,
    room: Option<u64>,
) -> ResidencyPlan {
    let sizes = format!(
        "{} dequantized, {} quantized",
        human_bytes(dense_bytes),
        human_bytes(quantized_bytes)
    );
    let (residency, reason) = match (choice, room) {
        (ResidencyChoice::Dequantized, _) => {
            (Residency::Dequantized, format!("asked for ({sizes})"))
        }
        (ResidencyChoice::Quantized, _) => (Residency::Quantized, format!("asked for ({sizes})")),
        _ if quantized_bytes >= dense_bytes => (
            Residency::Dequantized,
            format!("no quantized weights to keep ({sizes})"),
        ),
        (ResidencyChoice::Auto, None) => (
            Residency::Dequantized,
            format!("the device reports no free memory ({sizes})"),
        ),
        (ResidencyChoice::Auto, Some(room)) => {
            let needed = dense_bytes.saturating_add(dense_bytes / ACTIVATION_SHARE);
            if needed <= room {
                (
                    Residency::Dequantized,
                    format!(
                        "{sizes}; {} with activations fits {} of room",
                        human_bytes(needed),
                        human_bytes(room)
                    ),
                )
            } else {
                (
                    Residency::Quantized,
                    format!(
                        "{sizes}; {} with activations does not fit {} of room",
                        human_bytes(needed),
                        human_bytes(room)
                    ),
                )
            }
        }
    };
    ResidencyPlan { residency, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn auto_keeps_the_dequantized_model_only_when_it_fits_with_its_activations() {
        // Flux-dev Q8_0: 22.2 GiB in bf16, 12.7 GiB as stored.
        let (dense, quantized) = (22 * GIB + GIB / 5, 12 * GIB + 7 * GIB / 10);
        let on = |room| plan(ResidencyChoice::Auto, dense, quantized, Some(room)).residency;
        assert_eq!(on(78 * GIB), Residency::Dequantized);
        assert_eq!(on(24 * GIB), Residency::Quantized, "22.2 + 3.7 GiB > 24");
        assert_eq!(on(16 * GIB), Residency::Quantized);
        assert_eq!(on(26 * GIB), Residency::Dequantized, "22.2 + 3.7 GiB <= 26");
        let unknown = plan(ResidencyChoice::Auto, dense, quantized, None);
        assert_eq!(unknown.residency, Residency::Dequantized);
        assert!(
            unknown.reason.contains("reports no free memory"),
            "{}",
            unknown.reason
        );
        let tight = plan(ResidencyChoice::Auto, dense, quantized, Some(16 * GIB));
        assert!(
            tight.reason.contains("does not fit 16.00 GiB"),
            "{}",
            tight.reason
        );
    }

    #[test]
    fn a_choice_is_obeyed_and_a_model_without_blocks_stays_dequantized() {
        let forced = plan(ResidencyChoice::Quantized, 10, 5, Some(1 << 40));
        assert_eq!(forced.residency, Residency::Quantized);
        let forced = plan(ResidencyChoice::Dequantized, 10, 5, Some(1));
        assert_eq!(forced.residency, Residency::Dequantized);
        // A safetensors VAE: nothing to keep quantized, whatever the room.
        let vae = plan(ResidencyChoice::Auto, 10, 10, Some(1));
        assert_eq!(vae.residency, Residency::Dequantized);
        assert_eq!("bf16".parse(), Ok(ResidencyChoice::Dequantized));
        assert_eq!("quantized".parse(), Ok(ResidencyChoice::Quantized));
        assert!("fp8".parse::<ResidencyChoice>().is_err());
    }

    #[test]
    fn the_forms_map_onto_load_options() {
        let q = Residency::Quantized.options(DType::BF16);
        assert_eq!(
            (q.format, q.compute_dtype),
            (WeightFormat::AsStored, DType::BF16)
        );
        let d = Residency::Dequantized.options(DType::F32);
        assert_eq!(
            (d.format, d.compute_dtype),
            (WeightFormat::Dequantized, DType::F32)
        );
    }
}
