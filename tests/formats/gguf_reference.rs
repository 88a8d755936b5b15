//! GGUF files read exactly as gguf-py reads them; dequantization bit-exact with gguf-py.
use super::{assert_bits_eq, fixture, load_json};
use serde_json::Value as Json;
use weft::gguf::inspect_json;
use weft_engine::formats::gguf::{GgmlType, dequant};
use weft_engine::formats::{ModelFile, npy};

/// The types the foundation issue requires to be bit-exact with gguf-py.
const REQUIRED: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K", "IQ4_NL", "IQ4_XS",
];

/// JSON equality where numbers compare as f64 (gguf-py writes f32 metadata widened to f64,
/// integers as integers).
fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits),
            }
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Our reading of a file against gguf-py's (the `<file>.json` written by the generator).
fn check_against_gguf_py(rel: &str) {
    let path = fixture(rel);
    let want = load_json(&fixture(&format!("{rel}.json")));
    let model = ModelFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let ModelFile::Gguf(file) = &model else {
        panic!("{rel}: not read as GGUF")
    };
    let header = file.header();
    assert_eq!(
        Json::from(header.version),
        want["version"],
        "{rel}: version"
    );
    assert_eq!(
        Json::from(header.alignment),
        want["alignment"],
        "{rel}: alignment"
    );
    assert_eq!(
        Json::from(header.data_offset),
        want["data_offset"],
        "{rel}: data offset"
    );

    let order: Vec<&str> = header.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let want_order: Vec<&str> = want["metadata_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(order, want_order, "{rel}: metadata keys in file order");
    let truncated = want["metadata_truncated"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (key, value) in &header.metadata {
        assert_eq!(
            Json::from(value.type_name()),
            want["metadata_types"][key],
            "{rel}: type of {key}"
        );
        if truncated.contains_key(key) {
            // Long arrays are recorded as head + tail + length (see the generator's docstring).
            let t = &truncated[key];
            let arr = value.to_json();
            let arr = arr.as_array().unwrap();
            assert_eq!(Json::from(arr.len()), t["len"], "{rel}: length of {key}");
            let head = t["head"].as_array().unwrap();
            let tail = t["tail"].as_array().unwrap();
            assert!(
                json_eq(
                    &Json::Array(arr[..head.len()].to_vec()),
                    &Json::Array(head.clone())
                ),
                "{rel}: head of {key}"
            );
            assert!(
                json_eq(
                    &Json::Array(arr[arr.len() - tail.len()..].to_vec()),
                    &Json::Array(tail.clone())
                ),
                "{rel}: tail of {key}"
            );
        } else {
            assert!(
                json_eq(&value.to_json(), &want["metadata"][key]),
                "{rel}: value of {key}: {} vs {}",
                value.to_json(),
                want["metadata"][key]
            );
        }
    }

    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(header.tensors.len(), tensors.len(), "{rel}: tensor count");
    let ours = inspect_json(&model);
    for (t, (w, j)) in header
        .tensors
        .iter()
        .zip(tensors.iter().zip(ours["tensors"].as_array().unwrap()))
    {
        for field in ["name", "type", "shape", "offset", "nbytes"] {
            assert_eq!(j[field], w[field], "{rel}: tensor {} field {field}", t.name);
        }
        assert_eq!(
            Json::from(t.ggml_dims.clone()),
            w["ne"],
            "{rel}: ne of {}",
            t.name
        );
    }
    // `weft gguf inspect --json` carries exactly these keys.
    let keys: Vec<&String> = ours.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["version", "alignment", "metadata", "tensors"]);
}

#[test]
fn type_fixture_header_matches_gguf_py() {
    check_against_gguf_py("gguf/types.gguf");
}

#[test]
fn all_metadata_types_nested_arrays_long_names_5d_and_orig_shape() {
    check_against_gguf_py("gguf/metadata.gguf");
    let model = ModelFile::open(fixture("gguf/metadata.gguf")).unwrap();
    let w = model.require("w").unwrap();
    assert_eq!(
        w.shape,
        vec![32, 8, 3, 3],
        "comfy.gguf.orig_shape overrides the stored [9, 256]"
    );
    assert!(model.tensors().iter().any(|t| t.name.len() > 64));
    assert!(model.tensors().iter().any(|t| t.shape.len() == 5));
}

#[test]
fn version_2_file() {
    check_against_gguf_py("gguf/v2.gguf");
}

#[test]
fn zero_tensors_without_trailing_padding() {
    check_against_gguf_py("gguf/empty.gguf");
    let model = ModelFile::open(fixture("gguf/empty.gguf")).unwrap();
    assert!(model.tensors().is_empty());
}

#[test]
fn real_llama_cpp_vocab_files() {
    let dir = fixture("gguf/real");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gguf") {
            check_against_gguf_py(&format!(
                "gguf/real/{}",
                path.file_name().unwrap().to_str().unwrap()
            ));
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected the committed vocab files in {}",
        dir.display()
    );
}

#[test]
fn dequantization_is_bit_exact_with_gguf_py() {
    let model = ModelFile::open(fixture("gguf/types.gguf")).unwrap();
    let mut checked = Vec::new();
    let mut unsupported = Vec::new();
    for t in model.tensors() {
        let ty = t.dtype.ggml().unwrap();
        let expected = fixture(&format!("gguf/expected/{}.npy", t.name));
        if !expected.exists() {
            continue; // gguf-py itself cannot dequantize this type
        }
        if !dequant::is_supported(ty) {
            let err = model.dequantize(t).unwrap_err().to_string();
            assert!(
                err.contains(ty.name()) && err.contains(&t.name) && err.contains("types.gguf"),
                "{err}"
            );
            unsupported.push(ty.name());
            continue;
        }
        let want = npy::read(&expected).unwrap();
        assert_eq!(want.shape, t.shape, "{}: shape", t.name);
        let got = model.dequantize(t).unwrap();
        assert_bits_eq(&format!("{} ({ty})", t.name), &got, &want.data);
        checked.push(ty.name());
    }
    for r in REQUIRED {
        assert!(
            checked.contains(r),
            "{r} was not checked against gguf-py (checked: {checked:?})"
        );
    }
    eprintln!("bit-exact with gguf-py: {checked:?}; rejected with an error: {unsupported:?}");
}

#[test]
fn quantization_is_bit_exact_with_gguf_py() {
    use weft_engine::formats::gguf::quant::quantize;
    let input = npy::read(fixture("gguf/quantize/input.npy")).unwrap();
    let row = *input.shape.last().unwrap() as usize;
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        let want = std::fs::read(fixture(&format!(
            "gguf/quantize/{}.bin",
            ty.name().to_lowercase()
        )))
        .unwrap();
        let got = quantize(ty, &input.data, row).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}: length");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{ty}: byte {i} (block {}) differs: got {:#04x}, want {:#04x}",
                i / ty.type_size(),
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn dump_writes_the_dequantized_tensor_as_npy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4_k.npy");
    let cmd = weft::gguf::GgufCommand::Dump {
        file: fixture("gguf/types.gguf"),
        tensor: "q4_k".into(),
        output: out.clone(),
    };
    weft::gguf::run(cmd).unwrap();
    let got = npy::read(&out).unwrap();
    let want = npy::read(fixture("gguf/expected/q4_k.npy")).unwrap();
    assert_eq!(got.shape, want.shape);
    assert_bits_eq("dumped q4_k", &got.data, &want.data);
}

#[test]
fn missing_tensor_error_names_file_and_suggests() {
    let model = ModelFile::open(fixture("gguf/types.gguf")).unwrap();
    let err = model.require("q4k").unwrap_err().to_string();
    assert!(
        err.contains("types.gguf") && err.contains("\"q4k\"") && err.contains("did you mean"),
        "{err}"
    );
}

#[test]
fn summary_abbreviates_long_arrays() {
    let model = ModelFile::open(fixture("gguf/real/ggml-vocab-llama-spm.gguf")).unwrap();
    let text = weft::gguf::summary(&model, false);
    assert!(text.contains("GGUF v"), "{text}");
    let tokens = text
        .lines()
        .find(|l| l.contains("tokenizer.ggml.tokens"))
        .expect("tokens line");
    assert!(
        tokens.contains("more)") && tokens.chars().count() < 300,
        "{tokens}"
    );
}
