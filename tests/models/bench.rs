//! Timings of one Flux forward on the CPU (a record, not a test: `#[ignore]`, nothing asserted
//! about speed). Run:
//!
//!     cargo test -p weft-tests --test integration models::bench -- --ignored --nocapture
//!
//! The medium model (hidden 512, 4 double + 8 single blocks, 32x32 latent = 256 image tokens,
//! 64 text tokens) is generated outside the repository first:
//!
//!     python3 tools/gen_flux_fixtures.py --medium /tmp/weft-flux-medium
//!     WEFT_FLUX_MEDIUM=/tmp/weft-flux-medium cargo test -p weft-tests --test integration \
//!         models::bench -- --ignored --nocapture
use super::{open, reference, values};
use std::time::Instant;
use weft_engine::formats::ModelFile;
use weft_models::flux::{Flux, FluxConditioning};
use weft_tests::B;

/// This process's user + system CPU time in seconds (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn time_forward(what: &str, model: &ModelFile, inputs: &ModelFile, runs: usize) {
    let start = Instant::now();
    let flux = Flux::<B>::load(model, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let load = start.elapsed().as_secs_f64();
    let cond = FluxConditioning {
        context: reference(inputs, "context"),
        y: reference(inputs, "y"),
        guidance: flux
            .config()
            .guidance_embed
            .then(|| values(inputs, "guidance")),
    };
    let x = reference::<4>(inputs, "x");
    let t = values(inputs, "timesteps");
    flux.forward_latent(x.clone(), &t, &cond).unwrap(); // warm-up
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..runs {
        // into_data waits for the result on any backend.
        flux.forward_latent(x.clone(), &t, &cond)
            .unwrap()
            .into_data();
    }
    let per_wall = wall.elapsed().as_secs_f64() / runs as f64;
    let per_cpu = (cpu_seconds() - cpu) / runs as f64;
    println!(
        "{what}: {:?} latent {:?}: load {load:.3} s, forward {per_wall:.4} s wall, {per_cpu:.3} s CPU ({runs} runs, {} threads)",
        flux.config(),
        x.dims(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

#[test]
#[ignore = "timing record; run with --ignored --nocapture"]
fn bench_flux_tiny_forward() {
    time_forward(
        "tiny dev",
        &open("flux/dev.gguf"),
        &open("flux/reference.safetensors"),
        20,
    );
}

#[test]
#[ignore = "timing record; needs WEFT_FLUX_MEDIUM (see the module doc)"]
fn bench_flux_medium_forward() {
    let Ok(dir) = std::env::var("WEFT_FLUX_MEDIUM") else {
        panic!(
            "set WEFT_FLUX_MEDIUM to a folder made by `python3 tools/gen_flux_fixtures.py --medium DIR`"
        );
    };
    let dir = std::path::Path::new(&dir);
    let open = |name: &str| ModelFile::open(dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
    time_forward(
        "medium dev",
        &open("medium.gguf"),
        &open("inputs.safetensors"),
        3,
    );
}
