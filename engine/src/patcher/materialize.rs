//! What a weight's device copy is made from: the mapping's bytes as they are, the mapping's bytes
//! for the device to dequantize, or the file's values dequantized, patched and converted to the
//! compute dtype in a fresh host buffer.
#![forbid(unsafe_code)]

use super::device::HostData;
use super::{LoadOptions, PatchError, WeightFormat, WeightPatch};
use crate::weights::WeightSource;
use burn::tensor::DType;
use rayon::prelude::*;
use weft_formats::gguf::GgmlType;
use weft_formats::{StorageType, TensorInfo};

/// A weight ready to upload.
pub(crate) enum HostWeight<'a> {
    /// Floating-point values of `DType`.
    Float(HostData<'a>, DType),
    /// Quantized blocks, as stored.
    Blocks(&'a [u8], GgmlType),
    /// Stored bytes of a `GgmlType` tensor that the device dequantizes into `DType` itself
    /// (`WeightDevice::dequantizes`): the upload moves the file's bytes, not the wider floats.
    OnDevice(&'a [u8], GgmlType, DType),
}

impl HostWeight<'_> {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            HostWeight::Float(data, _) => data.as_bytes(),
            HostWeight::Blocks(bytes, _) | HostWeight::OnDevice(bytes, ..) => bytes,
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            HostWeight::Float(_, dtype) => *dtype,
            HostWeight::Blocks(..) => DType::U8,
            HostWeight::OnDevice(_, _, dtype) => *dtype,
        }
    }
}

/// The float dtype a stored type maps onto without conversion.
fn plain_float(dtype: StorageType) -> Option<DType> {
    match dtype.ggml()? {
        GgmlType::F32 => Some(DType::F32),
        GgmlType::F16 => Some(DType::F16),
        GgmlType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Whether the weight goes to the device as its stored bytes (no patches, `AsStored`, and a type
/// the device copy can hold as is: plain floats and quantized ggml blocks).
/// A dequantized layout whose stored floats already are the compute dtype keeps them too.
pub(crate) fn stays_as_stored(info: &TensorInfo, patched: bool, options: LoadOptions) -> bool {
    if patched {
        return false;
    }
    match options.format {
        WeightFormat::AsStored => {
            plain_float(info.dtype).is_some()
                || info.dtype.ggml().is_some_and(GgmlType::is_quantized)
        }
        WeightFormat::Dequantized => plain_float(info.dtype) == Some(options.compute_dtype),
    }
}

/// The weight `info` of `source` with `patches` applied, as `options` lay it out.
/// `on_device(ty, dtype)` says whether the device dequantizes `ty` into `dtype` itself; an
/// unpatched weight it accepts goes up as its stored bytes ([`HostWeight::OnDevice`]).
pub(crate) fn materialize<'a>(
    source: &'a WeightSource,
    info: &TensorInfo,
    patches: &[&WeightPatch],
    options: LoadOptions,
    on_device: &dyn Fn(GgmlType, DType) -> bool,
) -> Result<HostWeight<'a>, PatchError> {
    if patches.is_empty()
        && options.format == WeightFormat::Dequantized
        && !stays_as_stored(info, false, options)
        && let Some(ty) = info.dtype.ggml()
        && on_device(ty, options.compute_dtype)
    {
        return Ok(HostWeight::OnDevice(
            source.bytes(info),
            ty,
            options.compute_dtype,
        ));
    }
    if stays_as_stored(info, !patches.is_empty(), options) {
        let bytes = source.bytes(info);
        return Ok(match (plain_float(info.dtype), info.dtype.ggml()) {
            (Some(dtype), _) => HostWeight::Float(HostData::Mapped(bytes), dtype),
            (None, Some(ty)) => HostWeight::Blocks(bytes, ty),
            (None, None) => unreachable!("stays_as_stored admits ggml types only"),
        });
    }
    let mut values = source.dequantize(info)?;
    for patch in patches {
        patch.apply(&mut values, &info.shape)?;
    }
    Ok(match options.compute_dtype {
        DType::F16 => HostWeight::Float(
            HostData::Half(
                values
                    .par_iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
            ),
            DType::F16,
        ),
        DType::BF16 => HostWeight::Float(
            HostData::Half(
                values
                    .par_iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            ),
            DType::BF16,
        ),
        _ => HostWeight::Float(HostData::F32(values), DType::F32),
    })
}
