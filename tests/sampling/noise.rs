//! `torch.manual_seed(seed); torch.randn(shape)` reproduced bit for bit: the vectorized Box-Muller
//! path (at least 16 values, with the tail redraw), the scalar path (fewer than 16) with its cached
//! normal, seeds above 2^32, and a generator drawn from several times.
use serde_json::Value;
use weft_sampling::{TorchGenerator, prepare_noise, torch_randn};

use super::{fixture, hex_f32};

fn fnv1a64(values: &[f32]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in values.iter().flat_map(|v| v.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i}: got {} ({:#010x}), torch {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

fn seed_of(case: &Value) -> u64 {
    case["seed"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("seed")
}

#[test]
fn randn_matches_torch_bit_for_bit() {
    let noise = fixture("noise.json");
    let cases = noise["cases"].as_array().expect("cases");
    for case in cases {
        let seed = seed_of(case);
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let got = torch_randn(seed, &shape);
        let what = format!("seed {seed}, shape {shape:?}");
        if case.get("bits").is_some() {
            assert_bits(&what, &got, &hex_f32(&case["bits"]));
        } else {
            assert_bits(
                &format!("{what}, head"),
                &got[..32],
                &hex_f32(&case["head"]),
            );
            assert_bits(
                &format!("{what}, tail"),
                &got[got.len() - 32..],
                &hex_f32(&case["tail"]),
            );
            assert_eq!(
                fnv1a64(&got),
                case["fnv1a64"].as_str().unwrap(),
                "{what}: digest of all values"
            );
        }
    }
    assert!(cases.len() >= 70, "the fixture covers 7 seeds x 10 shapes");
}

#[test]
fn generator_draws_continue_like_torch() {
    // Ancestral samplers call randn on one generator per step; the scalar path (< 16 values) caches
    // the second normal of each Box-Muller pair for the next call.
    let noise = fixture("noise.json");
    for sequence in noise["sequences"].as_array().expect("sequences") {
        let seed = seed_of(sequence);
        let mut generator = TorchGenerator::manual_seed(seed);
        for (i, draw) in sequence["draws"].as_array().unwrap().iter().enumerate() {
            let numel = draw["numel"].as_u64().unwrap() as usize;
            let got = generator.randn(&[numel]);
            assert_bits(
                &format!("seed {seed}, draw {i} ({numel} values)"),
                &got,
                &hex_f32(&draw["bits"]),
            );
        }
    }
}

#[test]
fn seeds_above_32_bits_keep_only_the_low_bits() {
    // torch seeds mt19937 with `seed & 0xffffffff`; ComfyUI seeds go up to 2^64 - 1.
    assert_eq!(
        torch_randn(42 + (1 << 32), &[1, 4, 8, 8]),
        torch_randn(42, &[1, 4, 8, 8])
    );
    assert_eq!(torch_randn(u64::MAX, &[3]), torch_randn(0xffff_ffff, &[3]));
}

#[test]
fn prepare_noise_with_a_batch_index_matches_comfyui() {
    let noise = fixture("noise.json");
    for case in noise["batch_indexed"].as_array().expect("batch_indexed") {
        let seed = seed_of(case);
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let index: Vec<usize> = case["batch_index"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let got = prepare_noise(seed, &shape, Some(&index)).unwrap();
        assert_bits(
            &format!("seed {seed}, batch_index {index:?}"),
            &got,
            &hex_f32(&case["bits"]),
        );
    }
    assert!(
        prepare_noise(1, &[2, 4, 8, 8], Some(&[0])).is_err(),
        "one index per latent"
    );
    assert!(
        prepare_noise(1, &[1, 4, 8, 8], Some(&[usize::MAX])).is_err(),
        "bounded draws"
    );
    assert_eq!(
        prepare_noise(9, &[2, 4, 8, 8], None).unwrap(),
        torch_randn(9, &[2, 4, 8, 8])
    );
}
