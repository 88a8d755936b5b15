//! The model patcher on the CPU backend: loads equal the file byte for byte (as stored) or value
//! for value (dequantized), offload drops every copy, a budget loads a prefix and streams the rest,
//! clones share the base, and a device copy can never write to the mapping.
use super::{MODEL_TENSORS, cache, patcher, small_model};
use burn::tensor::{DType, TensorPrimitive};
use weft_engine::formats::ModelFile;
use weft_engine::formats::gguf::GgmlType;
use weft_engine::patcher::{DeviceWeight, LoadOptions, WeightFormat};
use weft_tests::B;

fn stored_dtype(ty: GgmlType) -> DType {
    match ty {
        GgmlType::F32 => DType::F32,
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        _ => DType::U8,
    }
}

#[test]
fn every_stored_type_loads_byte_for_byte_and_offload_drops_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    let file = std::fs::read(&path).unwrap(); // read independently of the mapping
    assert_eq!(p.stats().mmap.tensors, MODEL_TENSORS.len());

    let report = p.load(None).unwrap();
    assert_eq!((report.uploaded, report.streamed), (MODEL_TENSORS.len(), 0));
    assert_eq!(
        p.device_bytes(),
        p.source().tensor_bytes_total(),
        "as stored: device bytes = file bytes"
    );
    for info in p.source().tensors() {
        let weight = p.resident(&info.name).expect("resident");
        let (_, ty, shape) = MODEL_TENSORS
            .iter()
            .find(|(n, ..)| *n == info.name)
            .unwrap();
        assert_eq!(weight.dtype(), stored_dtype(*ty), "{}", info.name);
        assert_eq!(
            weight.shape(),
            shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
            "{}",
            info.name
        );
        assert!(
            matches!(weight, DeviceWeight::Blocks { .. }) == ty.is_quantized(),
            "{}",
            info.name
        );
        assert!(
            weight.read_back().unwrap() == file[info.range()],
            "{} differs from the file",
            info.name
        );
    }
    assert!(p.verify().unwrap().is_empty());
    let stats = p.stats();
    assert_eq!(
        (stats.device.tensors, stats.mmap.tensors, stats.host.tensors),
        (MODEL_TENSORS.len(), 0, 0)
    );

    let freed = p.offload();
    assert_eq!(
        (freed.tensors, freed.bytes),
        (MODEL_TENSORS.len(), p.source().tensor_bytes_total())
    );
    assert_eq!(p.device_bytes(), 0);
    assert!(
        p.source()
            .tensors()
            .iter()
            .all(|t| p.resident(&t.name).is_none())
    );
    assert_eq!(p.stats().mmap.tensors, MODEL_TENSORS.len());
    // A reload after offload is the file again.
    p.load(None).unwrap();
    assert!(p.verify().unwrap().is_empty());
}

#[test]
fn dequantized_loads_equal_the_reference_dequantization_in_the_compute_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let reference = ModelFile::open(&path).unwrap();
    let cache = cache();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let p = patcher(
            &cache,
            &path,
            LoadOptions {
                format: WeightFormat::Dequantized,
                compute_dtype: dtype,
            },
        );
        p.load(None).unwrap();
        let expected_bytes: u64 = reference
            .tensors()
            .iter()
            .map(|t| t.n_elements() * dtype.size() as u64)
            .sum();
        assert_eq!(p.device_bytes(), expected_bytes);
        for info in reference.tensors() {
            let want: Vec<u8> = reference
                .dequantize(info)
                .unwrap()
                .iter()
                .flat_map(|&v| match dtype {
                    DType::F32 => v.to_bits().to_le_bytes().to_vec(),
                    DType::BF16 => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                    _ => half::f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                })
                .collect();
            let weight = p.resident(&info.name).unwrap();
            assert_eq!(weight.dtype(), dtype);
            assert!(
                weight.read_back().unwrap() == want,
                "{} ({dtype:?}) differs from the reference",
                info.name
            );
        }
    }
}

#[test]
fn a_budget_loads_a_prefix_and_the_rest_streams_from_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    let tensors = p.source().tensors().to_vec();
    let budget = tensors[0].nbytes + tensors[1].nbytes + tensors[2].nbytes;
    let report = p.load(Some(budget)).unwrap();
    assert_eq!((report.uploaded, report.streamed), (3, tensors.len() - 3));
    assert_eq!(p.device_bytes(), budget);
    let stats = p.stats();
    assert_eq!(
        (stats.device.tensors, stats.mmap.tensors),
        (3, tensors.len() - 3)
    );

    // A streamed weight is the file's, and is not kept.
    let last = tensors.last().unwrap();
    let streamed = p.weight(&last.name).unwrap();
    assert!(streamed.read_back().unwrap() == p.source().bytes(last));
    assert_eq!(p.streamed(), 1);
    assert!(p.resident(&last.name).is_none());
    assert_eq!(p.device_bytes(), budget);

    // A full load keeps the prefix and adds the rest.
    let full = p.load(None).unwrap();
    assert_eq!(
        (full.kept, full.uploaded, full.dropped),
        (3, tensors.len() - 3, 0)
    );
    // A smaller budget drops what no longer fits.
    let smaller = p.load(Some(tensors[0].nbytes)).unwrap();
    assert_eq!((smaller.kept, smaller.dropped), (1, tensors.len() - 1));
    assert!(p.verify().unwrap().is_empty());
}

#[test]
fn partial_offload_drops_the_last_weights_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    p.load(None).unwrap();
    let tensors = p.source().tensors().to_vec();
    let last = tensors.last().unwrap();
    let report = p.offload_bytes(1);
    assert_eq!((report.tensors, report.bytes), (1, last.nbytes));
    assert!(p.resident(&last.name).is_none());
    assert!(p.resident(&tensors[0].name).is_some());
}

#[test]
fn float_weights_serve_models_without_dequant_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let reference = ModelFile::open(&path).unwrap();
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    p.load(None).unwrap();
    // Quantized (resident as blocks): the file's values, dequantized, in the compute dtype.
    let q8 = reference
        .tensor("double_blocks.0.img_attn.qkv.weight")
        .unwrap();
    let values = p
        .float_weight(&q8.name)
        .unwrap()
        .to_data()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(values, reference.dequantize(q8).unwrap());
    // A resident float weight is the resident tensor itself.
    let bias = reference
        .tensor("double_blocks.0.img_attn.qkv.bias")
        .unwrap();
    assert_eq!(
        p.float_weight(&bias.name)
            .unwrap()
            .to_data()
            .to_vec::<f32>()
            .unwrap(),
        reference.dequantize(bias).unwrap()
    );
    assert_eq!(
        p.streamed(),
        1,
        "only the quantized one was dequantized on the side"
    );
    assert!(p.float_weight("missing").is_err());
}

#[test]
fn clones_share_the_base_weights_and_the_device_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    let q = p.clone();
    assert!(q.shares_model_with(&p));
    assert!(std::sync::Arc::ptr_eq(p.source(), q.source()));
    p.load(None).unwrap();
    assert_eq!(
        q.device_bytes(),
        p.device_bytes(),
        "the device copy is shared"
    );
    let name = &p.source().tensors()[0].name;
    let (a, b) = (p.resident(name).unwrap(), q.resident(name).unwrap());
    assert_eq!(a.read_back().unwrap(), b.read_back().unwrap());
    q.offload();
    assert_eq!(p.device_bytes(), 0);
}

/// The base cannot be written through a device copy, by construction:
/// - the mapping hands out only `&[u8]` (a compile-fail doctest on `WeightSource::bytes` keeps it so),
///   and is mapped read-only, so a write through an alias would fault;
/// - every device copy is a buffer the patcher allocated: its address lies outside the mapping.
///
/// This test writes through every device copy in place and checks the file and the next load.
#[test]
fn a_device_copy_never_writes_to_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let before = std::fs::read(&path).unwrap();
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    p.load(None).unwrap();
    let map = p.source().mapping().bytes().as_ptr_range();
    let map = map.start as usize..map.end as usize;
    let weights: Vec<_> = p
        .source()
        .tensors()
        .iter()
        .map(|t| p.resident(&t.name).unwrap())
        .collect();
    // The patcher lets go; these handles are now the only owners, so writes happen in place.
    p.offload();
    for weight in weights {
        let mut primitive = match weight {
            DeviceWeight::Float { tensor, .. } => match tensor.into_primitive() {
                TensorPrimitive::Float(t) => t,
                TensorPrimitive::QFloat(_) => unreachable!("weights are never burn-quantized"),
            },
            DeviceWeight::Blocks { tensor, .. } => tensor.into_primitive(),
            DeviceWeight::Mapped(_) => unreachable!("a copying host device maps nothing"),
        };
        let start = primitive.bytes().as_ptr() as usize;
        assert!(
            !map.contains(&start),
            "a device copy lies inside the mapping"
        );
        // `try_storage_mut` writes in place or refuses (it never copies first).
        let written = match primitive.dtype() {
            DType::F32 => primitive.try_storage_mut::<f32>().map(|s| s.fill(-7.0)),
            DType::F16 => primitive
                .try_storage_mut::<burn::tensor::f16>()
                .map(|s| s.fill(burn::tensor::f16::from_f32(-7.0))),
            DType::BF16 => primitive
                .try_storage_mut::<burn::tensor::bf16>()
                .map(|s| s.fill(burn::tensor::bf16::from_f32(-7.0))),
            _ => primitive.try_storage_mut::<u8>().map(|s| s.fill(0xA5)),
        };
        assert!(
            written.is_some(),
            "the device copy is shared; the write would not be in place"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
    assert!(
        p.source().mapping().bytes() == before.as_slice(),
        "the mapping changed"
    );
    p.load(None).unwrap();
    assert!(
        p.verify().unwrap().is_empty(),
        "a reload differs from the file"
    );
}

#[test]
fn an_empty_tensor_loads_and_offloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    let mut writer = weft_engine::formats::gguf::GgufWriter::new();
    writer
        .add_tensor("empty.weight", GgmlType::F32, &[0, 32], &[])
        .unwrap();
    writer
        .add_tensor("empty.q8", GgmlType::Q8_0, &[0, 32], &[])
        .unwrap();
    writer
        .add_tensor("one.weight", GgmlType::F16, &[1, 32], &[0.5; 32])
        .unwrap();
    writer.write_file(&path).unwrap();
    let cache = cache();
    for options in [
        LoadOptions::default(),
        LoadOptions {
            format: WeightFormat::Dequantized,
            compute_dtype: DType::BF16,
        },
    ] {
        let p = patcher(&cache, &path, options);
        p.load(None).unwrap();
        assert_eq!(p.resident("empty.weight").unwrap().shape(), [0, 32]);
        assert!(p.verify().unwrap().is_empty());
        assert_eq!(p.offload().tensors, 3);
    }
}

#[test]
fn errors_name_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let cache = cache();
    let p = patcher(&cache, &path, LoadOptions::default());
    let err = p.weight("no.such.weight").unwrap_err().to_string();
    assert!(
        err.contains("m.gguf") && err.contains("no.such.weight"),
        "{err}"
    );
    let bad = weft_engine::patcher::ModelPatcher::<B>::new(
        p.source().clone(),
        super::cpu(),
        LoadOptions {
            compute_dtype: DType::I32,
            ..LoadOptions::default()
        },
    );
    assert!(bad.unwrap_err().to_string().contains("I32"));
}

/// `BurnDevice::host_mapped` (the CLI's CPU device) leaves quantized blocks in the mapping: a
/// view inside it, equal to the file, costing no device bytes; floats are still copied, and
/// offload drops both.
#[test]
fn a_mapped_host_device_reads_quantized_blocks_in_place() {
    use std::sync::Arc;
    use weft_engine::patcher::{BurnDevice, ModelPatcher};
    use weft_engine::weights::WeightSource;
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "m.gguf");
    let cache = cache();
    let p = ModelPatcher::<B>::new(
        Arc::new(WeightSource::open_in(&cache, &path).unwrap()),
        Arc::new(BurnDevice::host_mapped(Default::default())),
        LoadOptions::default(),
    )
    .unwrap();
    let file = std::fs::read(&path).unwrap();
    let report = p.load(None).unwrap();
    assert_eq!((report.uploaded, report.streamed), (MODEL_TENSORS.len(), 0));
    let float_bytes: u64 = p
        .source()
        .tensors()
        .iter()
        .filter(|t| !t.dtype.ggml().is_some_and(|ty| ty.is_quantized()))
        .map(|t| t.nbytes)
        .sum();
    assert!(float_bytes > 0 && float_bytes < p.source().tensor_bytes_total());
    assert_eq!(p.device_bytes(), float_bytes);
    let map = p.source().mapping().bytes().as_ptr_range();
    for info in p.source().tensors() {
        let weight = p.resident(&info.name).expect("resident");
        let quantized = info.dtype.ggml().is_some_and(|ty| ty.is_quantized());
        match &weight {
            DeviceWeight::Mapped(m) => {
                assert!(quantized, "{}", info.name);
                assert!(map.contains(&m.bytes().as_ptr()), "{}", info.name);
                assert_eq!(m.shape(), weight.shape());
                assert_eq!(weight.device_bytes(), 0);
            }
            _ => assert!(!quantized, "{}: blocks were copied", info.name),
        }
        assert!(
            weight.read_back().unwrap() == file[info.range()],
            "{}",
            info.name
        );
    }
    assert!(p.verify().unwrap().is_empty());
    let freed = p.offload();
    assert_eq!(
        (freed.tensors, freed.bytes),
        (MODEL_TENSORS.len(), float_bytes)
    );
    assert!(
        p.source()
            .tensors()
            .iter()
            .all(|t| p.resident(&t.name).is_none())
    );
}
