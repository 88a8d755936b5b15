//! The writer: what it writes reads back identically, with quantized values as the dequantizer
//! sees them.
use weft_engine::formats::ModelFile;
use weft_engine::formats::gguf::{ArrayValue, GgmlType, GgufWriter, MetadataValue, parse_header};

#[test]
fn write_then_read_round_trips_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let mut w = GgufWriter::new().with_alignment(64);
    let metadata = vec![
        ("general.architecture", MetadataValue::String("flux".into())),
        ("u8", MetadataValue::U8(7)),
        ("i64", MetadataValue::I64(-5)),
        ("f64", MetadataValue::F64(0.25)),
        ("b", MetadataValue::Bool(true)),
        (
            "tokens",
            MetadataValue::Array(ArrayValue::String(vec!["<s>".into(), "▁a".into()])),
        ),
        (
            "nested",
            MetadataValue::Array(ArrayValue::Array(vec![
                ArrayValue::I32(vec![1, 2]),
                ArrayValue::F32(vec![0.5]),
            ])),
        ),
    ];
    for (k, v) in &metadata {
        w.add_metadata(*k, v.clone());
    }
    let values: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ] {
        w.add_tensor(format!("w.{}", ty.name()), ty, &[2, 64], &values)
            .unwrap();
    }
    w.write_file(&path).unwrap();

    let model = ModelFile::open(&path).unwrap();
    let ModelFile::Gguf(file) = &model else {
        panic!()
    };
    assert_eq!(file.header().alignment, 64);
    for (k, v) in &metadata {
        assert_eq!(file.header().get(k), Some(v), "{k}");
    }
    for t in file.tensors() {
        assert_eq!(t.offset % 64, 0);
        assert_eq!(t.shape, vec![2, 64]);
        let got = model.dequantize(t).unwrap();
        let tol = match t.dtype.ggml().unwrap() {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1e-3,
            GgmlType::BF16 => 8e-3,
            GgmlType::Q8_0 => 1e-2,
            _ => 0.15,
        };
        let max_err = got
            .iter()
            .zip(&values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err <= tol, "{}: max error {max_err} > {tol}", t.name);
    }
    // The data section ends padded, so a file is exactly header + aligned tensors.
    let bytes = std::fs::read(&path).unwrap();
    let header = parse_header(&bytes).unwrap();
    let last = header.tensors.last().unwrap();
    assert_eq!(
        bytes.len() as u64,
        (last.offset + last.nbytes).div_ceil(64) * 64
    );
}
