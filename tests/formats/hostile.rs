//! Hostile and broken files: every one gives an error that names the file; none panics, none
//! makes the reader allocate more than the file could hold.
use super::fixture;
use weft_engine::formats::gguf::parse_header;
use weft_engine::formats::{FormatError, GgufParseError, ModelFile};

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn kv_str(b: &mut Vec<u8>, key: &str) {
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
}

#[test]
fn every_truncation_of_a_real_file_is_an_error() {
    let bytes = std::fs::read(fixture("gguf/metadata.gguf")).unwrap();
    let full = parse_header(&bytes).unwrap();
    let last_tensor_end = full
        .tensors
        .iter()
        .map(|t| t.offset + t.nbytes)
        .max()
        .unwrap() as usize;
    for len in 0..last_tensor_end {
        assert!(
            parse_header(&bytes[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn byte_flips_never_panic() {
    let bytes = std::fs::read(fixture("gguf/metadata.gguf")).unwrap();
    let header_end = parse_header(&bytes).unwrap().data_offset as usize;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..20_000 {
        let mut m = bytes.clone();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state as usize) % header_end;
            m[at] = (state >> 32) as u8;
        }
        let _ = parse_header(&m);
    }
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    // u64::MAX tensors.
    let err = parse_header(&header(3, u64::MAX, 0)).unwrap_err();
    assert!(matches!(err, GgufParseError::AbsurdCount { .. }), "{err}");
    // u64::MAX metadata entries.
    let err = parse_header(&header(3, 0, u64::MAX)).unwrap_err();
    assert!(matches!(err, GgufParseError::AbsurdCount { .. }), "{err}");
    // A key claiming an enormous length.
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    assert!(matches!(
        parse_header(&b).unwrap_err(),
        GgufParseError::Truncated { .. }
    ));
    // An array claiming 2^61 strings.
    let mut b = header(3, 0, 1);
    kv_str(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes()); // ARRAY
    b.extend_from_slice(&8u32.to_le_bytes()); // of STRING
    b.extend_from_slice(&(1u64 << 61).to_le_bytes());
    let err = parse_header(&b).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    // Arrays nested without end.
    let mut b = header(3, 0, 1);
    kv_str(&mut b, "deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(matches!(
        parse_header(&b).unwrap_err(),
        GgufParseError::NestingTooDeep { .. } | GgufParseError::AbsurdCount { .. }
    ));
}

fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = header(3, 1, 0);
    kv_str(&mut b, "t");
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    dims.iter()
        .for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
    b.extend_from_slice(&type_id.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data_len, 0);
    b
}

#[test]
fn tensor_infos_are_checked() {
    assert!(parse_header(&one_tensor(&[4, 2], 0, 0, 32)).is_ok());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (one_tensor(&[4, 2], 0, 0, 31), "outside the file"),
        (one_tensor(&[4, 2], 0, 1 << 62, 32), "outside the file"),
        (one_tensor(&[u64::MAX, 2], 0, 0, 32), "overflows"),
        (
            one_tensor(&[4, 2], 0, 8, 64),
            "not a multiple of the alignment",
        ),
        (one_tensor(&[33], 8, 0, 64), "multiple of the block size"),
        (one_tensor(&[32], 99, 0, 64), "unknown ggml type id 99"),
        (one_tensor(&[32], 4, 0, 64), "Q4_2"),
        (one_tensor(&[1; 9], 0, 0, 64), "dimensions"),
    ];
    for (bytes, want) in cases {
        let err = parse_header(&bytes).unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains("\"t\""),
            "expected {want:?} in: {err}"
        );
    }
}

#[test]
fn bad_magic_versions_and_endianness() {
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    be.extend_from_slice(&[0; 16]);
    assert_eq!(parse_header(&be).unwrap_err(), GgufParseError::BigEndian(3));
    assert_eq!(
        parse_header(&header(1, 0, 0)).unwrap_err(),
        GgufParseError::UnsupportedVersion(1)
    );
    assert_eq!(
        parse_header(&header(4, 0, 0)).unwrap_err(),
        GgufParseError::UnsupportedVersion(4)
    );
    assert_eq!(
        parse_header(b"GGML\x03\0\0\0").unwrap_err(),
        GgufParseError::BadMagic(*b"GGML")
    );
}

#[test]
fn errors_from_files_are_one_line_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 4] = [
        ("empty.gguf", b""),
        (
            "magic.gguf",
            b"NOPE\x03\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ),
        ("short.gguf", b"GGUF\x03\0\0"),
        (
            "random.bin",
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b",
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = ModelFile::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(name) && !msg.contains('\n'), "{msg}");
    }
    let err = ModelFile::open(dir.path().join("absent.gguf")).unwrap_err();
    assert!(matches!(err, FormatError::Io { .. }) && err.to_string().contains("absent.gguf"));
}

/// Inputs the fuzzer (fuzz/fuzz_targets/gguf_header.rs) once crashed on, kept as regressions.
/// zero-dim-overflow.gguf: a tensor with dims [0, 2^63, 2^63] passed the checked element count
/// (0) but `TensorInfo::n_elements` multiplied in PyTorch order and overflowed.
#[test]
fn fuzzer_crashers_stay_fixed() {
    let dir = fixture("gguf/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(header) = parse_header(&bytes) {
            for t in &header.tensors {
                let n = t.n_elements();
                assert!(
                    n == 0 || t.nbytes > 0,
                    "{}: {n} elements in {} bytes",
                    t.name,
                    t.nbytes
                );
            }
        }
        n += 1;
    }
    assert!(n >= 1);
}
