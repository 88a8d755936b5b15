//! Quantized-resident linear layers (`weft_models::quant`): a layer over ggml blocks computes
//! what the layer over the dequantized matrix computes — bit for bit on the CPU, where both see
//! the CPU dequantizer's values — for every block type, through `forward`, `forward_gelu` and a
//! row split; and the patcher hands blocks to the models when a model is quantized-resident.
use crate::memory::values;
use burn::tensor::{DType, Int, Tensor, TensorData};
use weft_cuda::bench_dequant::random_blocks;
use weft_engine::formats::gguf::{GgmlType, dequant};
use weft_models::ModelError;
use weft_models::layers::Linear;
use weft_models::quant::{Matrix, QuantMatrix};
use weft_tests::B;

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn blocks(bytes: Vec<u8>) -> Tensor<B, 1, Int> {
    let n = bytes.len();
    Tensor::from_data(
        TensorData::from_bytes_vec(bytes, [n], DType::U8),
        (&Default::default(), DType::U8),
    )
}

fn data<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Bit patterns, so that equal NaNs compare equal (random blocks can decode to NaN).
fn bits<const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    data(t).iter().map(|v| v.to_bits()).collect()
}

/// Every quantized type the CPU dequantizer reads.
fn quantized_types() -> Vec<GgmlType> {
    GgmlType::ALL
        .iter()
        .copied()
        .filter(|&ty| ty.is_quantized() && dequant::is_supported(ty))
        .collect()
}

#[test]
fn a_quantized_layer_equals_the_dequantized_one_for_every_block_type() {
    let types = quantized_types();
    // city96's and QuantStack's files use these; all must be here.
    for name in [
        "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
        "IQ4_XS",
    ] {
        assert!(
            types.iter().any(|t| t.name() == name),
            "{name} missing from {types:?}"
        );
    }
    // 256 columns: whole blocks of every type (32 or 256 values).
    let (rows, cols) = (6, 256);
    for ty in types {
        let bytes = random_blocks(ty, rows * cols, 7);
        let mut w = vec![0f32; rows * cols];
        dequant::dequantize(ty, &bytes, &mut w, "w").unwrap();
        // Random blocks reach the f16 scales' whole range; keep the products finite and varied.
        let largest = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let scale = 1.0 / largest;
        let bias = values(5, rows);
        let x: Vec<f32> = values(6, 3 * cols).iter().map(|v| v * scale).collect();
        let quantized = Linear::from_matrix(
            Matrix::Quantized(
                QuantMatrix::new(blocks(bytes), ty, [rows, cols], DType::F32, "test", "w").unwrap(),
            ),
            Some(tensor(bias.clone(), [rows])),
        );
        let dense = Linear::new(tensor(w, [rows, cols]), Some(tensor(bias, [rows])));
        assert!(quantized.is_quantized() && !dense.is_quantized());
        assert_eq!((quantized.d_out(), quantized.d_in()), (rows, cols));
        let x = tensor(x, [3, cols]);
        assert_eq!(
            bits(quantized.forward(x.clone())),
            bits(dense.forward(x.clone())),
            "{ty}: forward"
        );
        assert_eq!(
            bits(quantized.forward_gelu(x.clone())),
            bits(dense.forward_gelu(x.clone())),
            "{ty}: forward_gelu"
        );
        // A row split is a byte range of the blocks: each half is the dense half.
        let [q_top, q_rest] = quantized.split_rows(2);
        let [d_top, d_rest] = dense.split_rows(2);
        assert_eq!(
            bits(q_top.forward(x.clone())),
            bits(d_top.forward(x.clone())),
            "{ty}: top"
        );
        assert_eq!(
            bits(q_rest.forward(x.clone())),
            bits(d_rest.forward(x)),
            "{ty}: rest"
        );
    }
}

#[test]
fn quantized_matrices_dequantize_into_the_asked_dtype() {
    let ty = GgmlType::Q8_0;
    let bytes = random_blocks(ty, 2 * 64, 3);
    let mut w = vec![0f32; 2 * 64];
    dequant::dequantize(ty, &bytes, &mut w, "w").unwrap();
    let bf16: fn(f32) -> f32 = |v| half::bf16::from_f32(v).to_f32();
    let f16: fn(f32) -> f32 = |v| half::f16::from_f32(v).to_f32();
    for (dtype, round) in [(DType::BF16, bf16), (DType::F16, f16)] {
        let q = QuantMatrix::new(blocks(bytes.clone()), ty, [2, 64], dtype, "test", "w").unwrap();
        let values = q.dequantize();
        assert_eq!(values.dtype(), dtype);
        let want: Vec<f32> = w.iter().map(|&v| round(v)).collect();
        assert_eq!(data(values.cast(DType::F32)), want, "{dtype:?}");
    }
}

#[test]
fn blocks_that_do_not_hold_the_matrix_are_an_error_naming_the_tensor() {
    let ty = GgmlType::Q4_K;
    let bytes = random_blocks(ty, 256, 1);
    let error = |result: Result<QuantMatrix<B>, ModelError>| result.unwrap_err().to_string();
    let short = error(QuantMatrix::new(
        blocks(bytes[..100].to_vec()),
        ty,
        [1, 256],
        DType::F32,
        "m.gguf",
        "blk.0.w",
    ));
    assert!(
        short.contains("m.gguf") && short.contains("blk.0.w") && short.contains("100 bytes"),
        "{short}"
    );
    let ragged = error(QuantMatrix::new(
        blocks(bytes.clone()),
        ty,
        [2, 128],
        DType::F32,
        "m.gguf",
        "w",
    ));
    assert!(ragged.contains("not whole Q4_K blocks of 256"), "{ragged}");
    let float = error(QuantMatrix::new(
        blocks(bytes.clone()),
        GgmlType::F16,
        [1, 128],
        DType::F32,
        "m.gguf",
        "w",
    ));
    assert!(float.contains("not a quantized type"), "{float}");
    let int = error(QuantMatrix::new(
        blocks(bytes),
        ty,
        [1, 256],
        DType::I32,
        "m.gguf",
        "w",
    ));
    assert!(int.contains("cannot dequantize into"), "{int}");
}

fn quant_linear_args(d_in: usize) -> weft::bench_quant::QuantLinearArgs {
    weft::bench_quant::QuantLinearArgs {
        device: "cpu".into(),
        tokens: 3,
        d_in,
        d_out: 5,
        types: Vec::new(),
        iters: 1,
        seed: 3,
        json: false,
    }
}

#[test]
fn bench_quant_linear_checks_every_quantized_type_on_the_cpu() {
    let report = weft::bench_quant::measure(&quant_linear_args(256)).unwrap();
    assert_eq!(report.dtype, "F32");
    let names: Vec<&str> = report.rows.iter().map(|r| r.ty.as_str()).collect();
    for name in [
        "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(
        names.contains(&"IQ4_NL") && names.contains(&"IQ4_XS"),
        "{names:?}"
    );
    assert!(report.passed());
    for row in &report.rows {
        // On the CPU both layers see the CPU dequantizer's values: the outputs are equal.
        assert_eq!(row.max_abs_diff, 0.0, "{row:?}");
        assert!(
            row.max_abs_ref > 0.0 && row.max_abs_ref.is_finite(),
            "{row:?}"
        );
        assert_eq!(row.dense_bytes, 5 * 256 * 4);
        assert!(row.block_bytes < row.dense_bytes, "{row:?}");
        assert!(row.dense_ms > 0.0 && row.quantized_ms > 0.0, "{row:?}");
    }
    let q8 = report.rows.iter().find(|r| r.ty == "Q8_0").unwrap();
    assert_eq!(q8.block_bytes, 5 * 8 * 34);
}

#[test]
fn bench_quant_linear_rejects_widths_that_are_not_whole_blocks() {
    let error = weft::bench_quant::measure(&quant_linear_args(100)).unwrap_err();
    assert!(error.to_string().contains("--d-in 100"), "{error}");
}
