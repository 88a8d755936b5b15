//! [`MemoryArgs`]: the memory flags of `weft run` and `weft bench` (`--reserve-vram`,
//! `--gpu-only`, `--lowvram`, `--novram`, `--vram-budget`, `--residency`), turned into a
//! [`MemoryPolicy`].
#![forbid(unsafe_code)]

use weft_engine::memory::{MemoryMode, MemoryPolicy, ResidencyChoice};

/// Memory flags, flattened into a command's arguments (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct MemoryArgs {
    /// Device memory to leave free for activations and other programs, in GiB (default 1).
    #[arg(long = "reserve-vram", value_name = "GIB")]
    pub reserve_vram: Option<f64>,
    /// Keep every model on the device; never offload or stream (a model that does not fit is an error).
    #[arg(long, conflicts_with_all = ["lowvram", "novram"])]
    pub gpu_only: bool,
    /// Keep only the running node's models on the device, partly when they do not fit.
    #[arg(long, conflicts_with = "novram")]
    pub lowvram: bool,
    /// Keep nothing on the device: stream every weight from the file mapping when used.
    #[arg(long)]
    pub novram: bool,
    /// Behave as on a card of SIZE: plan every model for at most that much device memory
    /// (`8GiB`, `16G`, `24GB`, `12000MiB`; G and GiB are 2^30 bytes, GB 10^9). Also
    /// `WEFT_VRAM_BUDGET`.
    #[arg(long = "vram-budget", value_name = "SIZE", env = "WEFT_VRAM_BUDGET")]
    pub vram_budget: Option<String>,
    /// How GGUF weights live on the device: `auto` (dequantized when the dequantized model fits,
    /// else quantized), `dequantized` (or `bf16`), `quantized` (blocks as stored, dequantized
    /// layer by layer). Also `WEFT_WEIGHT_RESIDENCY`.
    #[arg(long, value_name = "MODE", env = "WEFT_WEIGHT_RESIDENCY")]
    pub residency: Option<String>,
}

/// Bytes of a size written `8GiB`, `16G`, `24GB`, `512MiB`, `1.5T` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => (1u64 << 30) as f64,
        "gb" => 1e9,
        "t" | "tib" => (1u64 << 40) as f64,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 8GiB"))?;
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?}: expected a size of at least one byte"));
    }
    Ok(bytes as u64)
}

impl MemoryArgs {
    /// The policy the flags ask for, or a sentence saying which value is wrong.
    pub fn policy(&self) -> Result<MemoryPolicy, String> {
        let mut policy = MemoryPolicy::default();
        if let Some(gib) = self.reserve_vram {
            if !gib.is_finite() || gib < 0.0 {
                return Err(format!(
                    "--reserve-vram {gib}: expected a size in GiB, 0 or more"
                ));
            }
            policy.reserve_bytes = (gib * (1u64 << 30) as f64) as u64;
        }
        policy.mode = match (self.gpu_only, self.lowvram, self.novram) {
            (true, _, _) => MemoryMode::GpuOnly,
            (_, true, _) => MemoryMode::LowVram,
            (_, _, true) => MemoryMode::NoVram,
            _ => MemoryMode::Normal,
        };
        if let Some(size) = &self.vram_budget {
            policy.capacity = Some(parse_size(size).map_err(|e| format!("--vram-budget {e}"))?);
        }
        if let Some(mode) = &self.residency {
            policy.residency = mode
                .parse::<ResidencyChoice>()
                .map_err(|e| format!("--residency {e}"))?;
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        memory: MemoryArgs,
    }

    fn parse(args: &[&str]) -> Result<MemoryPolicy, String> {
        let cli = Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.memory.policy()
    }

    #[test]
    fn flags_become_a_policy() {
        assert_eq!(parse(&[]).unwrap(), MemoryPolicy::default());
        let p = parse(&["--reserve-vram", "2.5", "--lowvram"]).unwrap();
        assert_eq!((p.mode, p.reserve_bytes), (MemoryMode::LowVram, 5 << 29));
        assert_eq!(parse(&["--gpu-only"]).unwrap().mode, MemoryMode::GpuOnly);
        assert_eq!(parse(&["--novram"]).unwrap().mode, MemoryMode::NoVram);
    }

    #[test]
    fn a_budget_and_a_residency_become_the_capacity_and_the_choice() {
        let p = parse(&["--vram-budget", "16GiB", "--residency", "quantized"]).unwrap();
        assert_eq!(p.capacity, Some(16 << 30));
        assert_eq!(p.residency, ResidencyChoice::Quantized);
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("24GB"), Ok(24_000_000_000));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(
            parse_size("8 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("0GiB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(
            parse(&["--vram-budget", "lots"])
                .unwrap_err()
                .contains("--vram-budget")
        );
        assert!(
            parse(&["--residency", "fp8"])
                .unwrap_err()
                .contains("--residency \"fp8\"")
        );
    }

    #[test]
    fn bad_values_and_conflicting_modes_are_refused() {
        assert!(
            parse(&["--reserve-vram=-1"])
                .unwrap_err()
                .contains("--reserve-vram -1")
        );
        assert!(parse(&["--reserve-vram", "NaN"]).is_err());
        assert!(parse(&["--gpu-only", "--lowvram"]).is_err());
    }
}
