//! LoRA patches: kohya (`lora_up`/`lora_down`/`alpha`, underscored names) and diffusers/PEFT
//! (`lora_A`/`lora_B`, a key map onto a fused-qkv slice), with strength, on quantized, half and
//! 4-D weights; the patched copy equals `W + strength·alpha/rank·up·down`, and unpatching gives
//! the file back bit for bit. Clones carry their own patch lists.
use super::{cache, patcher, small_model, values};
use burn::tensor::DType;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weft_engine::formats::ModelFile;
use weft_engine::patcher::{LoadOptions, LoraKeyMap, WeightFormat, WeightPatch, lora_patches};
use weft_engine::weights::WeightSource;

/// A LoRA tensor: name, dtype, shape, f32 values.
type LoraTensor = (String, Dtype, Vec<usize>, Vec<f32>);

fn write_lora(dir: &Path, name: &str, tensors: &[LoraTensor]) -> PathBuf {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, dtype, shape, v)| {
            let data = match dtype {
                Dtype::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (n.clone(), *dtype, shape.clone(), data)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, dtype, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

/// The f32 values a half-precision LoRA factor really holds.
fn as_stored(dtype: Dtype, v: &[f32]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// `base + scale·up·down` over rows `rows` of a `[rows_total, cols]` weight, in f64.
fn expected(
    base: &[f32],
    cols: usize,
    rows: std::ops::Range<usize>,
    up: &[f32],
    down: &[f32],
    rank: usize,
    scale: f64,
) -> Vec<f64> {
    let mut out: Vec<f64> = base.iter().map(|&v| f64::from(v)).collect();
    for (o, row) in rows.enumerate() {
        for c in 0..cols {
            let delta: f64 = (0..rank)
                .map(|k| f64::from(up[o * rank + k]) * f64::from(down[k * cols + c]))
                .sum();
            out[row * cols + c] += scale * delta;
        }
    }
    out
}

/// The values weight `name` computes with under patcher `p`: its dense device copy with the
/// LoRAs merged in, or — a quantized weight kept as its blocks (`WeightFormat::AsStored`) — the
/// file's blocks (checked byte for byte) plus the low-rank updates kept beside them.
fn patched_values(
    p: &weft_engine::patcher::ModelPatcher<weft_tests::B>,
    reference: &ModelFile,
    name: &str,
) -> Vec<f32> {
    let weight = p.resident(name).unwrap();
    if weight.dtype() != DType::U8 {
        assert!(
            p.side_updates(name).unwrap().is_empty(),
            "{name}: merged and beside"
        );
        return read_f32(&weight);
    }
    let info = reference.tensor(name).unwrap();
    let file = std::fs::read(reference.path()).unwrap();
    assert!(
        weight.read_back().unwrap() == file[info.range()],
        "{name}: blocks changed"
    );
    let mut values = reference.dequantize(info).unwrap();
    let side = p.side_updates(name).unwrap();
    assert!(
        !side.is_empty(),
        "{name}: a patch on blocks must stay beside them"
    );
    for u in side {
        for (o, row) in values[u.rows.start * u.cols..u.rows.end * u.cols]
            .chunks_exact_mut(u.cols)
            .enumerate()
        {
            for (c, w) in row.iter_mut().enumerate() {
                let d: f32 = (0..u.rank)
                    .map(|k| u.up[o * u.rank + k] * u.down[k * u.cols + c])
                    .sum();
                *w += u.scale * d;
            }
        }
    }
    values
}

fn read_f32(weight: &weft_engine::patcher::DeviceWeight<weft_tests::B>) -> Vec<f32> {
    assert_eq!(
        weight.dtype(),
        DType::F32,
        "a patched weight is dense in the compute dtype"
    );
    weight
        .read_back()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tolerance * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

/// One LoRA module of the kohya test: its base name, target, factor dtype and shapes.
struct Module {
    base: &'static str,
    target: &'static str,
    dtype: Dtype,
    out: usize,
    cols: usize,
    rank: usize,
    alpha: Option<f32>,
    up: Vec<usize>,
    down: Vec<usize>,
}

#[test]
fn kohya_lora_patches_exactly_and_unpatch_restores_the_file_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path(), "m.gguf");
    let file = std::fs::read(&model_path).unwrap();
    let reference = ModelFile::open(&model_path).unwrap();
    // Q8_0 [96, 64] rank 4 (F32 factors, alpha 2); F16 [64, 64] rank 8 (F16 factors, no alpha);
    // F16 conv [8, 4, 3, 3] rank 2 ([8, 2, 1, 1] · [2, 4, 3, 3], alpha 1); and a text-encoder
    // module that patches nothing here.
    let modules = [
        Module {
            base: "lora_unet_double_blocks_0_img_attn_qkv",
            target: "double_blocks.0.img_attn.qkv.weight",
            dtype: Dtype::F32,
            out: 96,
            cols: 64,
            rank: 4,
            alpha: Some(2.0),
            up: vec![96, 4],
            down: vec![4, 64],
        },
        Module {
            base: "lora_unet_double_blocks_0_img_attn_proj",
            target: "double_blocks.0.img_attn.proj.weight",
            dtype: Dtype::F16,
            out: 64,
            cols: 64,
            rank: 8,
            alpha: None,
            up: vec![64, 8],
            down: vec![8, 64],
        },
        Module {
            base: "lora_unet_img_in_conv",
            target: "img_in.conv.weight",
            dtype: Dtype::F32,
            out: 8,
            cols: 36,
            rank: 2,
            alpha: Some(1.0),
            up: vec![8, 2, 1, 1],
            down: vec![2, 4, 3, 3],
        },
    ];
    let mut tensors: Vec<LoraTensor> = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        tensors.push((
            format!("{}.lora_up.weight", m.base),
            m.dtype,
            m.up.clone(),
            values(100 + i as u64, m.out * m.rank),
        ));
        tensors.push((
            format!("{}.lora_down.weight", m.base),
            m.dtype,
            m.down.clone(),
            values(200 + i as u64, m.rank * m.cols),
        ));
        if let Some(a) = m.alpha {
            tensors.push((format!("{}.alpha", m.base), Dtype::F32, vec![], vec![a]));
        }
    }
    tensors.push((
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(),
        Dtype::F32,
        vec![4, 2],
        values(9, 8),
    ));
    tensors.push((
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
        Dtype::F32,
        vec![2, 4],
        values(10, 8),
    ));
    let lora_path = write_lora(dir.path(), "kohya.safetensors", &tensors);

    let cache = cache();
    let base = patcher(&cache, &model_path, LoadOptions::default());
    let lora = Arc::new(WeightSource::open_in(&cache, &lora_path).unwrap());
    let strength = 0.7f32;
    let found = lora_patches(base.source(), &lora, strength, &LoraKeyMap::new()).unwrap();
    assert_eq!(found.patches.len(), 3);
    assert_eq!(found.unmatched.len(), 1);
    assert!(
        found.unmatched[0].0.starts_with("lora_te1_"),
        "{:?}",
        found.unmatched
    );

    let mut patched = base.clone();
    patched.add_patches(found.patches).unwrap();
    assert!(
        base.patches().is_empty(),
        "a clone's patches never reach the original"
    );
    assert_eq!(patched.patches().len(), 3);

    patched.load(None).unwrap();
    for m in &modules {
        let info = reference.tensor(m.target).unwrap();
        let factor = |suffix: &str| {
            as_stored(
                m.dtype,
                &tensors
                    .iter()
                    .find(|t| t.0 == format!("{}.{suffix}", m.base))
                    .unwrap()
                    .3,
            )
        };
        let (up, down) = (factor("lora_up.weight"), factor("lora_down.weight"));
        let scale = f64::from(strength) * m.alpha.map_or(1.0, |a| f64::from(a) / m.rank as f64);
        let want = expected(
            &reference.dequantize(info).unwrap(),
            m.cols,
            0..m.out,
            &up,
            &down,
            m.rank,
            scale,
        );
        assert_close(
            m.target,
            &patched_values(&patched, &reference, m.target),
            &want,
            1e-5,
        );
    }
    // Weights no patch targets stay as stored.
    let bias = reference
        .tensor("double_blocks.0.img_attn.qkv.bias")
        .unwrap();
    assert!(patched.resident(&bias.name).unwrap().read_back().unwrap() == file[bias.range()]);
    assert!(patched.verify().unwrap().is_empty());
    // The unpatched original sees the file, not its clone's patches: a merged weight streams
    // instead of sharing the patched copy; the Q8_0 qkv, its LoRA beside it, shares the blocks.
    let (proj, qkv) = (
        "double_blocks.0.img_attn.proj.weight",
        "double_blocks.0.img_attn.qkv.weight",
    );
    assert!(base.resident(proj).is_none());
    for name in [proj, qkv] {
        assert!(
            base.weight(name).unwrap().read_back().unwrap()
                == file[reference.tensor(name).unwrap().range()]
        );
    }
    assert!(base.resident(qkv).is_some());

    // Unpatch: every merged copy (the two F16 ones) is the file's bytes again, in the stored type.
    assert_eq!(patched.unpatch().unwrap(), 2);
    for info in reference.tensors() {
        let weight = base.resident(&info.name).expect("resident and unpatched");
        assert!(
            weight.read_back().unwrap() == file[info.range()],
            "{} is not the file's after unpatch",
            info.name
        );
    }
    assert!(base.verify().unwrap().is_empty());
    // Patch again, then load the unpatched clone: same result as unpatch.
    patched.load(None).unwrap();
    assert!(base.resident(proj).is_none());
    base.load(None).unwrap();
    assert!(base.verify().unwrap().is_empty());
    assert!(
        std::fs::read(&model_path).unwrap() == file,
        "patching wrote to the model file"
    );
}

#[test]
fn diffusers_lora_with_a_key_map_patches_a_slice_of_a_fused_weight_with_negative_strength() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path(), "m.gguf");
    let reference = ModelFile::open(&model_path).unwrap();
    let rank = 4;
    let tensors: Vec<LoraTensor> = vec![
        // diffusers names; `to_k` lands on rows 32..64 of the fused qkv weight.
        (
            "transformer.transformer_blocks.0.attn.to_k.lora_A.weight".into(),
            Dtype::F32,
            vec![rank, 64],
            values(1, rank * 64),
        ),
        (
            "transformer.transformer_blocks.0.attn.to_k.lora_B.weight".into(),
            Dtype::F32,
            vec![32, rank],
            values(2, 32 * rank),
        ),
        // BFL names with PEFT suffixes resolve by themselves.
        (
            "transformer.final_layer.linear.lora_A.weight".into(),
            Dtype::F32,
            vec![rank, 64],
            values(3, rank * 64),
        ),
        (
            "transformer.final_layer.linear.lora_B.weight".into(),
            Dtype::F32,
            vec![16, rank],
            values(4, 16 * rank),
        ),
    ];
    let lora_path = write_lora(dir.path(), "peft.safetensors", &tensors);
    let cache = cache();
    let mut p = patcher(&cache, &model_path, LoadOptions::default());
    let lora = Arc::new(WeightSource::open_in(&cache, &lora_path).unwrap());
    let mut map = LoraKeyMap::new();
    map.insert(
        "transformer.transformer_blocks.0.attn.to_k",
        "double_blocks.0.img_attn.qkv.weight",
        Some(32..64),
    );
    let found = lora_patches(p.source(), &lora, -0.5, &map).unwrap();
    assert_eq!((found.patches.len(), found.unmatched.len()), (2, 0));
    p.add_patches(found.patches).unwrap();
    p.load(None).unwrap();

    let qkv = reference
        .tensor("double_blocks.0.img_attn.qkv.weight")
        .unwrap();
    let want = expected(
        &reference.dequantize(qkv).unwrap(),
        64,
        32..64,
        &tensors[1].3,
        &tensors[0].3,
        rank,
        -0.5,
    );
    let got = patched_values(&p, &reference, &qkv.name);
    assert_close("qkv", &got, &want, 1e-5);
    let untouched = reference.dequantize(qkv).unwrap();
    assert_eq!(
        got[..32 * 64],
        untouched[..32 * 64],
        "rows outside the slice are the file's values"
    );
    assert_eq!(got[64 * 64..], untouched[64 * 64..]);

    let last = reference.tensor("final_layer.linear.weight").unwrap(); // Q4_0
    let want = expected(
        &reference.dequantize(last).unwrap(),
        64,
        0..16,
        &tensors[3].3,
        &tensors[2].3,
        rank,
        -0.5,
    );
    assert_close(
        "final_layer",
        &patched_values(&p, &reference, &last.name),
        &want,
        1e-5,
    );
}

#[test]
fn a_patch_on_a_quantized_weight_is_merged_when_dequantized_and_kept_beside_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path(), "m.gguf");
    let reference = ModelFile::open(&model_path).unwrap();
    let tensors: Vec<LoraTensor> = vec![
        (
            "lora_unet_single_blocks_0_linear1.lora_up.weight".into(),
            Dtype::F32,
            vec![16, 2],
            values(5, 32),
        ),
        (
            "lora_unet_single_blocks_0_linear1.lora_down.weight".into(),
            Dtype::F32,
            vec![2, 256],
            values(6, 512),
        ),
    ];
    let lora_path = write_lora(dir.path(), "k.safetensors", &tensors);
    let cache = cache();
    let info = reference.tensor("single_blocks.0.linear1.weight").unwrap(); // Q5_1
    let base = reference.dequantize(info).unwrap();
    let want = expected(&base, 256, 0..16, &tensors[0].3, &tensors[1].3, 2, 1.0);
    for format in [WeightFormat::Dequantized, WeightFormat::AsStored] {
        let mut p = patcher(
            &cache,
            &model_path,
            LoadOptions {
                compute_dtype: DType::BF16,
                format,
            },
        );
        let lora = Arc::new(WeightSource::open_in(&cache, &lora_path).unwrap());
        p.add_patches(
            lora_patches(p.source(), &lora, 1.0, &LoraKeyMap::new())
                .unwrap()
                .patches,
        )
        .unwrap();
        p.load(None).unwrap();
        let weight = p.resident(&info.name).unwrap();
        let side = p.side_updates(&info.name).unwrap();
        if format == WeightFormat::Dequantized {
            // Merged into the weight's bf16 copy.
            assert!(side.is_empty());
            assert_eq!(weight.dtype(), DType::BF16);
            assert_eq!(weight.device_bytes(), info.n_elements() * 2);
            let got: Vec<f32> = weight
                .read_back()
                .unwrap()
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            assert_close("Q5_1 + LoRA in bf16", &got, &want, 1.0 / 128.0);
            continue;
        }
        // Kept as its blocks, the LoRA beside it: the weight is the file's, and the update the
        // layer adds is exactly the LoRA's.
        assert_eq!(weight.dtype(), DType::U8);
        assert_eq!(weight.device_bytes(), info.nbytes);
        let file = std::fs::read(&model_path).unwrap();
        assert!(weight.read_back().unwrap() == file[info.range()]);
        assert!(p.verify().unwrap().is_empty());
        assert_eq!(side.len(), 1);
        let u = &side[0];
        assert_eq!(
            (u.rank, u.cols, u.rows.clone(), u.scale),
            (2, 256, 0..16, 1.0)
        );
        assert_eq!(
            (u.up.as_slice(), u.down.as_slice()),
            (&tensors[0].3[..], &tensors[1].3[..])
        );
        let mut merged = base.clone();
        for (o, row) in merged.chunks_exact_mut(256).take(16).enumerate() {
            for (c, w) in row.iter_mut().enumerate() {
                *w += (0..2)
                    .map(|k| u.up[o * 2 + k] * u.down[k * 256 + c])
                    .sum::<f32>()
                    * u.scale;
            }
        }
        assert_close("Q5_1 + side LoRA", &merged, &want, 1e-5);
        // Another weight without a LoRA has nothing beside it.
        assert!(
            p.side_updates("final_layer.linear.weight")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            p.resident("final_layer.linear.weight").unwrap().dtype(),
            DType::U8
        );
    }
}

#[test]
fn a_lora_that_does_not_fit_its_weight_is_an_error_naming_the_file_and_the_weight() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path(), "m.gguf");
    let tensors: Vec<LoraTensor> = vec![
        (
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight".into(),
            Dtype::F32,
            vec![63, 2],
            values(1, 126),
        ),
        (
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight".into(),
            Dtype::F32,
            vec![2, 64],
            values(2, 128),
        ),
    ];
    let lora_path = write_lora(dir.path(), "bad.safetensors", &tensors);
    let cache = cache();
    let mut p = patcher(&cache, &model_path, LoadOptions::default());
    let lora = Arc::new(WeightSource::open_in(&cache, &lora_path).unwrap());
    p.add_patches(
        lora_patches(p.source(), &lora, 1.0, &LoraKeyMap::new())
            .unwrap()
            .patches,
    )
    .unwrap();
    let err = p.load(None).unwrap_err().to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains("double_blocks.0.img_attn.proj.weight"),
        "{err}"
    );

    let stray = WeightPatch {
        target: "no.such.weight".into(),
        ..p.patches()[0].as_ref().clone()
    };
    let err = p.add_patches([stray]).unwrap_err().to_string();
    assert!(
        err.contains("m.gguf") && err.contains("no.such.weight"),
        "{err}"
    );
}
