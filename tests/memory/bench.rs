//! `weft bench offload` run as a user runs it, in its own process (so that RSS and mappings are
//! its own, undisturbed by the tests running beside it): 20 load/offload cycles of a generated
//! ~200 MB mixed-type GGUF keep exactly one mapping, anonymous RSS flat, no device copy after
//! offload, and every reload equal to the file.
use super::small_model;
use std::process::Command;
use weft::offload_cycle::OffloadBench;
use weft_engine::weights::synthetic::write_mixed_gguf;

fn weft() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft-test"));
    command.env_remove("RUST_LOG");
    command
}

#[test]
fn twenty_cycles_of_a_200_mb_model_keep_one_mapping_flat_rss_and_equal_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed-200mb.gguf");
    let made = write_mixed_gguf(&path, 200_000_000, 1).unwrap();
    assert!(made.file_bytes >= 200_000_000, "{made:?}");

    let output = weft()
        .args(["bench", "offload"])
        .arg(&path)
        .args(["--cycles", "20", "--verify", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Exactly the keys the issue specifies.
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&json), ["file_bytes", "cycles"]);
    assert_eq!(
        keys(&json["cycles"][0]),
        [
            "cycle",
            "load_s",
            "offload_s",
            "device_bytes_loaded",
            "device_bytes_after_offload",
            "rss_anon_after_offload",
            "rss_file_after_offload",
            "file_mappings",
            "weights_match_file"
        ]
    );

    let bench: OffloadBench = serde_json::from_str(&stdout).unwrap();
    assert_eq!(bench.file_bytes, made.file_bytes);
    assert_eq!(bench.cycles.len(), 20);
    let tensor_bytes: u64 = weft_engine::formats::ModelFile::open(&path)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.nbytes)
        .sum();
    for c in &bench.cycles {
        assert_eq!(
            c.weights_match_file,
            Some(true),
            "cycle {}: a reload differs from the file",
            c.cycle
        );
        assert_eq!(
            c.device_bytes_loaded, tensor_bytes,
            "cycle {}: not every weight was loaded",
            c.cycle
        );
        assert_eq!(
            c.device_bytes_after_offload, 0,
            "cycle {}: device copies survived the offload",
            c.cycle
        );
        if cfg!(target_os = "linux") {
            assert_eq!(
                c.file_mappings, 1,
                "cycle {}: the file is mapped {} times",
                c.cycle, c.file_mappings
            );
            // The device copies (the size of the file) are gone from anonymous memory.
            assert!(
                c.rss_anon_after_offload < bench.file_bytes / 10,
                "cycle {}: RssAnon {} after offload",
                c.cycle,
                c.rss_anon_after_offload
            );
        }
    }
    if cfg!(target_os = "linux") {
        let anon: Vec<u64> = bench.cycles[1..]
            .iter()
            .map(|c| c.rss_anon_after_offload)
            .collect();
        let growth = anon.iter().max().unwrap() - anon.iter().min().unwrap();
        assert!(
            growth < bench.file_bytes / 100,
            "RssAnon after offload moved by {growth} bytes over cycles 2..20 (limit 1% of {})",
            bench.file_bytes
        );
    }
}

#[test]
fn the_table_names_every_column_and_bad_arguments_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "small.gguf");
    let output = weft()
        .args(["bench", "offload"])
        .arg(&path)
        .args(["--cycles", "2", "--verify"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for column in [
        "cycle",
        "load s",
        "GB/s",
        "offload ms",
        "RssAnon MiB",
        "mappings",
        "match",
    ] {
        assert!(stdout.contains(column), "no {column:?} column:\n{stdout}");
    }
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_end().ends_with("yes"))
            .count(),
        2,
        "{stdout}"
    );

    for (args, message) in [
        (vec!["--cycles", "0"], "--cycles 0"),
        (vec!["--device", "tpu"], "--device tpu"),
        (vec!["--dequantize", "q8"], "--dequantize q8"),
    ] {
        let output = weft()
            .args(["bench", "offload"])
            .arg(&path)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(message),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let missing = weft()
        .args(["bench", "offload", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model.gguf"));
    // Without the `cuda` feature the error says how to build it; with it and no GPU, what failed.
    let output = weft()
        .args(["bench", "offload"])
        .arg(&path)
        .args(["--device", "cuda:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("cuda"),
        "{stderr}"
    );
}
