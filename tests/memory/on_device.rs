//! The patcher's device-dequantization route on the CPU: a `WeightDevice` that says it
//! dequantizes Q8_0 and Q4_K itself (with the CPU dequantizer, rounded with `half`) records every
//! upload, so the tests see which weights go up as their stored bytes (`upload_dequantized`),
//! which stay on the host path (floats, types the device refuses, patched weights), and that
//! `verify` holds the device's values to the host's.
use super::{cache, values};
use burn::tensor::{DType, Int, Tensor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use weft_engine::formats::ModelFile;
use weft_engine::formats::gguf::dequant::dequantize;
use weft_engine::formats::gguf::{GgmlType, GgufWriter};
use weft_engine::patcher::{
    BurnDevice, DeviceError, HostData, LoadOptions, LoraFactors, ModelPatcher, PatchKind,
    WeightDevice, WeightFormat, WeightPatch,
};
use weft_engine::weights::{MmapCache, WeightSource};
use weft_tests::B;

/// One call the device received.
#[derive(Debug, Clone, PartialEq)]
enum Upload {
    /// `upload_float`: the bytes, and whether they were a view of the mapping.
    Float {
        what: String,
        dtype: DType,
        mapped: bool,
        bytes: Vec<u8>,
    },
    /// `upload_blocks`.
    Blocks { what: String, len: usize },
    /// `upload_dequantized`: the length of the bytes it received.
    Dequantized {
        what: String,
        ty: GgmlType,
        elements: usize,
        dtype: DType,
        len: usize,
    },
}

impl Upload {
    fn what(&self) -> &str {
        match self {
            Upload::Float { what, .. }
            | Upload::Blocks { what, .. }
            | Upload::Dequantized { what, .. } => what,
        }
    }
}

/// The CPU device, plus dequantization "on the device" for `types`: the stored bytes are
/// dequantized by the CPU dequantizer and rounded to the requested dtype, as the CUDA kernels
/// promise to do bit for bit.
struct DequantizingDevice {
    host: BurnDevice<B>,
    types: Vec<GgmlType>,
    /// A weight whose first dequantized value this device gets wrong (one bit flipped).
    corrupt: Option<&'static str>,
    uploads: Mutex<Vec<Upload>>,
}

impl DequantizingDevice {
    fn new(types: &[GgmlType], corrupt: Option<&'static str>) -> Arc<Self> {
        Arc::new(DequantizingDevice {
            host: BurnDevice::host(Default::default()),
            types: types.to_vec(),
            corrupt,
            uploads: Mutex::new(Vec::new()),
        })
    }

    fn uploads(&self) -> Vec<Upload> {
        self.uploads.lock().unwrap().clone()
    }

    /// The `(name, stored bytes received)` of every `upload_dequantized` call, in order.
    fn dequantized(&self) -> Vec<(String, usize)> {
        self.uploads()
            .into_iter()
            .filter_map(|u| match u {
                Upload::Dequantized { what, len, .. } => Some((what, len)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, upload: Upload) {
        self.uploads.lock().unwrap().push(upload);
    }
}

impl WeightDevice<B> for DequantizingDevice {
    fn device(&self) -> &burn::tensor::Device<B> {
        self.host.device()
    }

    fn describe(&self) -> String {
        "cpu (dequantizing test device)".into()
    }

    fn upload_float(
        &self,
        data: HostData<'_>,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<B, 1>, DeviceError> {
        self.record(Upload::Float {
            what: what.into(),
            dtype,
            mapped: matches!(data, HostData::Mapped(_)),
            bytes: data.as_bytes().to_vec(),
        });
        self.host.upload_float(data, dtype, what)
    }

    fn upload_blocks(&self, bytes: &[u8], what: &str) -> Result<Tensor<B, 1, Int>, DeviceError> {
        self.record(Upload::Blocks {
            what: what.into(),
            len: bytes.len(),
        });
        self.host.upload_blocks(bytes, what)
    }

    fn weight_dtype(&self) -> DType {
        DType::BF16
    }

    fn dequantizes(&self, ty: GgmlType, dtype: DType) -> bool {
        self.types.contains(&ty) && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
    }

    fn upload_dequantized(
        &self,
        bytes: &[u8],
        ty: GgmlType,
        elements: usize,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<B, 1>, DeviceError> {
        self.record(Upload::Dequantized {
            what: what.into(),
            ty,
            elements,
            dtype,
            len: bytes.len(),
        });
        assert!(
            self.dequantizes(ty, dtype),
            "{what}: {ty} to {dtype:?} was refused"
        );
        let mut values = vec![0f32; elements];
        dequantize(ty, bytes, &mut values, what)
            .map_err(|e| DeviceError::Backend(e.to_string()))?;
        let mut data = match dtype {
            DType::BF16 => HostData::Half(
                values
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            ),
            DType::F16 => HostData::Half(
                values
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
            ),
            _ => HostData::F32(values),
        };
        if self.corrupt == Some(what) {
            match &mut data {
                HostData::Half(v) => v[0] ^= 1,
                HostData::F32(v) => v[0] = f32::from_bits(v[0].to_bits() ^ 1),
                HostData::Mapped(_) => unreachable!("made above"),
            }
        }
        self.host.upload_float(data, dtype, what)
    }

    fn release(&self) {
        self.host.release();
    }
}

const Q8: &str = "blocks.0.qkv.weight";
const Q4K: &str = "blocks.0.out.weight";
const Q5: &str = "blocks.0.mlp.weight";
const BIAS: &str = "blocks.0.qkv.bias";
const HALF: &str = "blocks.0.proj.weight";
const BF16: &str = "blocks.0.mod.weight";

/// Q4_K blocks of `n` elements with finite values: random bytes whose two f16 scales (`d`,
/// `dmin`, the first four bytes of each 144-byte block) are set to small numbers.
fn q4_k_bytes(n: usize, seed: u64) -> Vec<u8> {
    let bytes = GgmlType::Q4_K.bytes_for(n as u64).unwrap() as usize;
    let mut data: Vec<u8> = values(seed, bytes)
        .iter()
        .map(|v| ((v + 1.0) * 128.0) as u8)
        .collect();
    for (i, block) in data
        .chunks_exact_mut(GgmlType::Q4_K.type_size())
        .enumerate()
    {
        let d = half::f16::from_f32(0.01 + 0.001 * i as f32);
        let dmin = half::f16::from_f32(0.003);
        block[..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&dmin.to_le_bytes());
    }
    data
}

/// A small model with a tensor of each kind the route tells apart: two types the device
/// dequantizes (Q8_0, Q4_K), one it does not (Q5_1), and F32, F16 and BF16 floats.
fn model(dir: &Path) -> PathBuf {
    let mut writer = GgufWriter::new();
    writer
        .add_tensor(Q8, GgmlType::Q8_0, &[64, 64], &values(1, 64 * 64))
        .unwrap();
    writer
        .add_raw_tensor(Q4K, GgmlType::Q4_K, &[8, 256], q4_k_bytes(8 * 256, 2))
        .unwrap();
    writer
        .add_tensor(Q5, GgmlType::Q5_1, &[16, 64], &values(3, 16 * 64))
        .unwrap();
    writer
        .add_tensor(BIAS, GgmlType::F32, &[64], &values(4, 64))
        .unwrap();
    writer
        .add_tensor(HALF, GgmlType::F16, &[32, 64], &values(5, 32 * 64))
        .unwrap();
    writer
        .add_tensor(BF16, GgmlType::BF16, &[16, 64], &values(6, 16 * 64))
        .unwrap();
    let path = dir.join("m.gguf");
    writer.write_file(&path).unwrap();
    path
}

fn dequantized(dtype: DType) -> LoadOptions {
    LoadOptions {
        format: WeightFormat::Dequantized,
        compute_dtype: dtype,
    }
}

fn patcher_on(
    cache: &MmapCache,
    path: &Path,
    device: &Arc<DequantizingDevice>,
    options: LoadOptions,
) -> ModelPatcher<B> {
    ModelPatcher::new(
        Arc::new(WeightSource::open_in(cache, path).unwrap()),
        device.clone(),
        options,
    )
    .unwrap()
}

/// The file's values of `name` rounded to bf16, as little-endian bytes.
fn host_bf16(file: &ModelFile, name: &str) -> Vec<u8> {
    file.dequantize(file.require(name).unwrap())
        .unwrap()
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect()
}

fn bf16_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

#[test]
fn a_dequantized_load_sends_the_accepted_quantized_weights_as_stored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let reference = ModelFile::open(&path).unwrap();
    let cache = cache();
    let device = DequantizingDevice::new(&[GgmlType::Q8_0, GgmlType::Q4_K], None);
    let p = patcher_on(&cache, &path, &device, dequantized(DType::BF16));

    let report = p.load(None).unwrap();
    let n_bytes = |name: &str| reference.require(name).unwrap().nbytes as usize;
    // The stored bytes, not the 2 bytes per value of the bf16 result.
    assert_eq!(
        device.dequantized(),
        [(Q8.to_owned(), n_bytes(Q8)), (Q4K.to_owned(), n_bytes(Q4K))]
    );
    assert_eq!((n_bytes(Q8), n_bytes(Q4K)), (64 * 64 / 32 * 34, 8 * 144));
    let uploads = device.uploads();
    assert!(uploads.contains(&Upload::Dequantized {
        what: Q8.into(),
        ty: GgmlType::Q8_0,
        elements: 64 * 64,
        dtype: DType::BF16,
        len: n_bytes(Q8),
    }));
    assert!(uploads.contains(&Upload::Dequantized {
        what: Q4K.into(),
        ty: GgmlType::Q4_K,
        elements: 8 * 256,
        dtype: DType::BF16,
        len: n_bytes(Q4K),
    }));
    // Everything else went up as floats, once each: computed on the host in bf16, except the
    // BF16 tensor, which already is the compute dtype and goes up as the mapping's bytes.
    assert_eq!(uploads.len(), 6, "{uploads:?}");
    assert!(!uploads.iter().any(|u| matches!(u, Upload::Blocks { .. })));
    let file = std::fs::read(&path).unwrap();
    for name in [Q5, BIAS, HALF, BF16] {
        let Some(Upload::Float {
            dtype,
            mapped,
            bytes,
            ..
        }) = uploads.iter().find(|u| u.what() == name)
        else {
            panic!("{name}: not uploaded as floats: {uploads:?}");
        };
        assert_eq!(*dtype, DType::BF16, "{name}");
        assert_eq!(*mapped, name == BF16, "{name}");
        assert!(*bytes == host_bf16(&reference, name), "{name}: values");
        if name == BF16 {
            assert!(
                *bytes == file[reference.require(name).unwrap().range()],
                "{name}: the file's bytes"
            );
        }
    }

    // Every copy is dense bf16 and holds the host dequantizer's values, rounded.
    let bf16_bytes: u64 = reference.tensors().iter().map(|t| t.n_elements() * 2).sum();
    assert_eq!(
        (report.uploaded, report.uploaded_bytes, report.device_bytes),
        (6, bf16_bytes, bf16_bytes)
    );
    assert_eq!(p.full_bytes(), bf16_bytes);
    for info in reference.tensors() {
        let weight = p.resident(&info.name).unwrap();
        assert_eq!(weight.dtype(), DType::BF16, "{}", info.name);
        assert!(
            weight.read_back().unwrap() == host_bf16(&reference, &info.name),
            "{} differs from the host's dequantization",
            info.name
        );
    }
    assert!(p.verify().unwrap().is_empty());
}

#[test]
fn verify_compares_device_dequantization_with_the_host_and_names_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let cache = cache();
    let honest = DequantizingDevice::new(&[GgmlType::Q8_0, GgmlType::Q4_K], None);
    let p = patcher_on(&cache, &path, &honest, dequantized(DType::BF16));
    p.load(None).unwrap();
    assert_eq!(honest.dequantized().len(), 2);
    assert_eq!(p.verify().unwrap(), Vec::<String>::new());

    // One bit of one value of the Q4_K weight is wrong: verify names that weight and no other.
    let faulty = DequantizingDevice::new(&[GgmlType::Q8_0, GgmlType::Q4_K], Some(Q4K));
    let q = patcher_on(&cache, &path, &faulty, dequantized(DType::BF16));
    q.load(None).unwrap();
    assert_eq!(faulty.dequantized().len(), 2);
    assert_eq!(q.verify().unwrap(), [Q4K]);
}

#[test]
fn a_weight_not_resident_streams_through_the_device_dequantizer_and_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let reference = ModelFile::open(&path).unwrap();
    let cache = cache();
    let device = DequantizingDevice::new(&[GgmlType::Q8_0, GgmlType::Q4_K], None);
    let p = patcher_on(&cache, &path, &device, dequantized(DType::BF16));
    // A budget for nothing: every weight streams.
    let report = p.load(Some(0)).unwrap();
    assert_eq!((report.uploaded, report.streamed), (0, 6));
    assert!(device.uploads().is_empty());

    let weight = p.weight(Q4K).unwrap();
    assert_eq!(weight.dtype(), DType::BF16);
    assert!(weight.read_back().unwrap() == host_bf16(&reference, Q4K));
    let floats = p.float_weight(Q8).unwrap();
    assert_eq!(floats.dtype(), DType::BF16);
    assert_eq!(
        device.dequantized(),
        [
            (
                Q4K.to_owned(),
                reference.require(Q4K).unwrap().nbytes as usize
            ),
            (
                Q8.to_owned(),
                reference.require(Q8).unwrap().nbytes as usize
            )
        ]
    );
    assert_eq!(p.streamed(), 2);
    assert!(p.resident(Q4K).is_none() && p.resident(Q8).is_none());
    assert_eq!(p.device_bytes(), 0);
}

/// A rank-2 LoRA for the [64, 64] Q8_0 weight, in a GGUF of its own: `(path, up, down)`.
fn lora(dir: &Path) -> (PathBuf, Vec<f32>, Vec<f32>) {
    let (up, down) = (values(11, 64 * 2), values(12, 2 * 64));
    let mut writer = GgufWriter::new();
    writer
        .add_tensor("qkv.lora_up.weight", GgmlType::F32, &[64, 2], &up)
        .unwrap();
    writer
        .add_tensor("qkv.lora_down.weight", GgmlType::F32, &[2, 64], &down)
        .unwrap();
    let path = dir.join("lora.gguf");
    writer.write_file(&path).unwrap();
    (path, up, down)
}

#[test]
fn a_patched_weight_takes_the_host_path_and_unpatching_returns_it_to_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let (lora_path, up, down) = lora(dir.path());
    let reference = ModelFile::open(&path).unwrap();
    let cache = cache();
    let device = DequantizingDevice::new(&[GgmlType::Q8_0, GgmlType::Q4_K], None);
    let mut p = patcher_on(&cache, &path, &device, dequantized(DType::BF16));
    let strength = 0.5;
    p.add_patches([WeightPatch {
        target: Q8.into(),
        strength,
        kind: PatchKind::Lora(LoraFactors {
            source: Arc::new(WeightSource::open_in(&cache, &lora_path).unwrap()),
            up: "qkv.lora_up.weight".into(),
            down: "qkv.lora_down.weight".into(),
            alpha: None,
            rows: None,
        }),
    }])
    .unwrap();
    p.load(None).unwrap();

    // Only the unpatched Q4_K went to the device's dequantizer; the patched Q8_0 was
    // dequantized, patched and rounded on the host.
    assert_eq!(device.dequantized(), [(Q4K.to_owned(), 8 * 144)]);
    let uploads = device.uploads();
    let Some(Upload::Float {
        dtype: DType::BF16,
        mapped: false,
        bytes,
        ..
    }) = uploads.iter().find(|u| u.what() == Q8)
    else {
        panic!("{Q8}: not a host-computed bf16 upload: {uploads:?}");
    };
    let base = reference
        .dequantize(reference.require(Q8).unwrap())
        .unwrap();
    let want: Vec<f32> = (0..64 * 64)
        .map(|i| {
            let (row, col) = (i / 64, i % 64);
            let delta: f32 = (0..2).map(|k| up[row * 2 + k] * down[k * 64 + col]).sum();
            base[i] + strength * delta
        })
        .collect();
    let got = bf16_values(bytes);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // bf16 keeps 8 significant bits: a relative error of at most 2^-8.
        assert!(
            (g - w).abs() <= w.abs() / 256.0 + 1e-6,
            "element {i}: got {g}, want {w}"
        );
    }
    let unpatched = bf16_values(&host_bf16(&reference, Q8));
    assert!(
        got.iter().zip(&unpatched).filter(|(g, u)| g != u).count() > 64 * 64 / 2,
        "the patch is baked in"
    );
    assert!(p.resident(Q8).unwrap().read_back().unwrap() == *bytes);
    assert!(p.verify().unwrap().is_empty());

    // Without its patch, the weight is the file's again, dequantized by the device.
    p.clear_patches();
    assert_eq!(p.unpatch().unwrap(), 1);
    assert_eq!(
        device.dequantized(),
        [
            (Q4K.to_owned(), 8 * 144),
            (Q8.to_owned(), 64 * 64 / 32 * 34)
        ]
    );
    assert!(p.resident(Q8).unwrap().read_back().unwrap() == host_bf16(&reference, Q8));
    assert!(p.verify().unwrap().is_empty());
}

#[test]
fn stored_floats_of_the_compute_dtype_go_up_as_the_mappings_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let reference = ModelFile::open(&path).unwrap();
    let file = std::fs::read(&path).unwrap();
    let cache = cache();
    let device = DequantizingDevice::new(&[GgmlType::Q8_0, GgmlType::Q4_K], None);
    let p = patcher_on(&cache, &path, &device, dequantized(DType::F16));
    let planned = p.full_bytes();
    let report = p.load(None).unwrap();

    let uploads = device.uploads();
    let half = reference.require(HALF).unwrap();
    assert!(
        uploads.contains(&Upload::Float {
            what: HALF.into(),
            dtype: DType::F16,
            mapped: true,
            bytes: file[half.range()].to_vec(),
        }),
        "{HALF}: not the mapping's bytes: {uploads:?}"
    );
    assert!(p.resident(HALF).unwrap().read_back().unwrap() == file[half.range()]);
    // Every other float is converted on the host; the quantized ones the device takes still go
    // up as blocks to dequantize into f16.
    for name in [BIAS, BF16, Q5] {
        assert!(
            uploads.iter().any(|u| matches!(
                u,
                Upload::Float { what, dtype: DType::F16, mapped: false, .. } if what == name
            )),
            "{name}: {uploads:?}"
        );
    }
    assert!(uploads.iter().any(|u| matches!(
        u,
        Upload::Dequantized { what, dtype: DType::F16, .. } if what == Q8
    )));
    assert_eq!(device.dequantized().len(), 2);

    let f16_bytes: u64 = reference.tensors().iter().map(|t| t.n_elements() * 2).sum();
    assert_eq!(planned, f16_bytes);
    assert_eq!(
        (report.uploaded_bytes, report.device_bytes, p.full_bytes()),
        (planned, planned, planned)
    );
    assert!(p.verify().unwrap().is_empty());
}
