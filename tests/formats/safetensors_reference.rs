//! safetensors files read through the same mapping machinery, against the safetensors package.
use super::{assert_bits_eq, fixture, load_json};
use serde_json::Value as Json;
use weft_engine::formats::{ModelFile, npy};

#[test]
fn small_file_matches_the_safetensors_package() {
    let model = ModelFile::open(fixture("safetensors/small.safetensors")).unwrap();
    let ModelFile::Safetensors(file) = &model else {
        panic!("not read as safetensors")
    };
    let want = load_json(&fixture("safetensors/small.json"));
    let want_tensors = want["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), want_tensors.len());
    for w in want_tensors {
        let name = w["name"].as_str().unwrap();
        let t = file
            .tensor(name)
            .unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(Json::from(t.dtype.name()), w["dtype"], "{name}: dtype");
        assert_eq!(Json::from(t.shape.clone()), w["shape"], "{name}: shape");
        assert_eq!(Json::from(t.offset), w["offset"], "{name}: offset");
        assert_eq!(Json::from(t.nbytes), w["nbytes"], "{name}: nbytes");
        let expected = npy::read(fixture(&format!(
            "safetensors/{}",
            w["expected"].as_str().unwrap()
        )))
        .unwrap();
        assert_bits_eq(name, &model.dequantize(t).unwrap(), &expected.data);
    }
    for (k, v) in want["metadata"].as_object().unwrap() {
        assert_eq!(
            file.metadata().get(k).map(String::as_str),
            v.as_str(),
            "__metadata__ {k}"
        );
    }
    let json = weft::gguf::inspect_json(&model);
    assert!(json["version"].is_null() && json["alignment"].is_null());
}

#[test]
fn corrupt_safetensors_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("safetensors/small.safetensors")).unwrap();
    bytes.truncate(bytes.len() - 1);
    let path = dir.path().join("cut.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let err = ModelFile::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("safetensors"),
        "{err}"
    );
}
