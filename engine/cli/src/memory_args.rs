//! [`MemoryArgs`]: the memory flags of `weft run` and `weft bench` (`--reserve-vram`,
//! `--gpu-only`, `--lowvram`, `--novram`), turned into a [`MemoryPolicy`].
#![forbid(unsafe_code)]

use weft_engine::memory::{MemoryMode, MemoryPolicy};

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
