//! Image files: `LoadImage` and `SaveImage` (PNG, 8 bits per channel, as ComfyUI writes them, with
//! the run's [`PngTextChunks`] embedded) and the conversions between IMAGE tensors and PNG bytes.
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use weft_engine::node::{
    Fingerprint, Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType,
    Value,
};
use weft_engine::registry::NodeRegistry;

/// An 8-bit image, row-major, channels interleaved.
pub struct Bitmap {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grey), 3 (RGB) or 4 (RGBA).
    pub channels: u8,
    /// `height * width * channels` bytes.
    pub pixels: Vec<u8>,
}

/// Splits an IMAGE batch into 8-bit bitmaps. Values are clamped to 0..=1 and scaled by 255 with
/// truncation, as ComfyUI's `SaveImage` does (`np.clip(255. * i, 0, 255).astype(np.uint8)`).
pub fn image_to_bitmaps<B: Backend>(image: Tensor<B, 4>) -> Result<Vec<Bitmap>, NodeError> {
    let [batch, height, width, channels] = image.dims();
    if !matches!(channels, 1 | 3 | 4) {
        return Err(NodeError::msg(format!(
            "an image with {channels} channels cannot be saved as PNG (1, 3 or 4)"
        )));
    }
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(NodeError::msg(format!(
            "image of {width}x{height} is too large for PNG"
        )));
    };
    let floats = image
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| NodeError::msg(format!("reading the image: {e:?}")))?;
    let per_image = height * width * channels;
    Ok((0..batch)
        .map(|b| Bitmap {
            width: w,
            height: h,
            channels: channels as u8,
            pixels: floats[b * per_image..(b + 1) * per_image]
                .iter()
                .map(|v| (v * 255.0).clamp(0.0, 255.0) as u8)
                .collect(),
        })
        .collect())
}

/// The run's text that `SaveImage` embeds as PNG text chunks: the engine's
/// [`RunMetadata`](weft_engine::node::RunMetadata)
/// (`weft run` fills it with the workflow and the command that reproduces the run).
pub use weft_engine::node::RunMetadata as PngTextChunks;

/// Encodes a bitmap as PNG.
pub fn encode_png(bitmap: &Bitmap) -> Result<Vec<u8>, NodeError> {
    encode_png_with_text(bitmap, &[])
}

/// Encodes a bitmap as PNG with text chunks: `tEXt` when the text is Latin-1, else `iTXt` (UTF-8),
/// as PIL's `PngInfo.add_text` chooses for ComfyUI.
pub fn encode_png_with_text(
    bitmap: &Bitmap,
    text: &[(String, String)],
) -> Result<Vec<u8>, NodeError> {
    let color = match bitmap.channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => png::ColorType::Rgba,
    };
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, bitmap.width, bitmap.height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    for (keyword, value) in text {
        let added = if value.chars().all(|c| u32::from(c) < 256) {
            encoder.add_text_chunk(keyword.clone(), value.clone())
        } else {
            encoder.add_itxt_chunk(keyword.clone(), value.clone())
        };
        added.map_err(|e| NodeError::msg(format!("PNG text chunk {keyword:?}: {e}")))?;
    }
    let mut writer = encoder.write_header().map_err(NodeError::other)?;
    writer
        .write_image_data(&bitmap.pixels)
        .map_err(NodeError::other)?;
    writer.finish().map_err(NodeError::other)?;
    Ok(bytes)
}

/// The text chunks of a PNG (`tEXt`, then `iTXt`; compressed `zTXt` last) as (keyword, text):
/// what [`encode_png_with_text`] embedded, e.g. the workflow that made an image.
pub fn read_png_text(bytes: &[u8]) -> Result<Vec<(String, String)>, NodeError> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .map_err(NodeError::other)?;
    let info = reader.info();
    let mut text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for chunk in &info.utf8_text {
        text.push((
            chunk.keyword.clone(),
            chunk.get_text().map_err(NodeError::other)?,
        ));
    }
    for chunk in &info.compressed_latin1_text {
        text.push((
            chunk.keyword.clone(),
            chunk.get_text().map_err(NodeError::other)?,
        ));
    }
    Ok(text)
}

/// Decodes a PNG (any colour type and depth) into an RGB or RGBA bitmap.
pub fn decode_png(bytes: &[u8]) -> Result<Bitmap, NodeError> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(NodeError::other)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| NodeError::msg("PNG too large"))?;
    let mut raw = vec![0u8; size];
    let info = reader.next_frame(&mut raw).map_err(NodeError::other)?;
    raw.truncate(info.buffer_size());
    let pixels_in = (info.width as usize) * (info.height as usize);
    let (channels, pixels) = match info.color_type {
        png::ColorType::Rgb => (3, raw),
        png::ColorType::Rgba => (4, raw),
        png::ColorType::Grayscale => (3, raw.iter().flat_map(|&g| [g, g, g]).collect()),
        png::ColorType::GrayscaleAlpha => (
            4,
            raw.chunks_exact(2)
                .flat_map(|ga| [ga[0], ga[0], ga[0], ga[1]])
                .collect(),
        ),
        png::ColorType::Indexed => return Err(NodeError::msg("indexed PNG was not expanded")),
    };
    if pixels.len() != pixels_in * channels as usize {
        return Err(NodeError::msg("PNG data is shorter than its header says"));
    }
    Ok(Bitmap {
        width: info.width,
        height: info.height,
        channels,
        pixels,
    })
}

/// `LoadImage`: reads a PNG into an RGB IMAGE and a MASK (1 - alpha; zeros without alpha).
pub struct LoadImage;

/// Parameters of [`LoadImage`].
#[derive(Deserialize)]
pub struct LoadImageParams {
    /// The file, relative to the workflow's folder.
    pub image: String,
}

impl<B: Backend> Node<B> for LoadImage {
    type Params = LoadImageParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("LoadImage")
            .category("image")
            .describe("Loads a PNG file (path relative to the workflow file) as an RGB image and a mask (1 - alpha).")
            .param(ParamSpec::string("image").describe("path to a .png file"))
            .output("IMAGE", PortType::IMAGE)
            .output("MASK", PortType::MASK)
    }

    fn fingerprint(
        &self,
        params: &LoadImageParams,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Fingerprint::none().file(&ctx.resolve_path(&params.image))
    }

    fn run(
        &self,
        params: LoadImageParams,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let path = ctx.resolve_path(&params.image);
        let bytes = std::fs::read(&path).map_err(|e| NodeError::io(&path, e))?;
        let bitmap =
            decode_png(&bytes).map_err(|e| NodeError::msg(format!("{}: {e}", path.display())))?;
        let (h, w, c) = (
            bitmap.height as usize,
            bitmap.width as usize,
            bitmap.channels as usize,
        );
        let mut rgb = Vec::with_capacity(h * w * 3);
        let mut mask = Vec::with_capacity(h * w);
        for px in bitmap.pixels.chunks_exact(c) {
            rgb.extend(px[..3].iter().map(|&v| f32::from(v) / 255.0));
            mask.push(if c == 4 {
                1.0 - f32::from(px[3]) / 255.0
            } else {
                0.0
            });
        }
        let image = Tensor::<B, 4>::from_data(TensorData::new(rgb, [1, h, w, 3]), ctx.device());
        let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [1, h, w]), ctx.device());
        Ok(Outputs::one(Value::Image(image)).with(Value::Mask(mask)))
    }
}

/// `SaveImage`: writes each image of the batch as `<prefix>_<counter>_.png` in the output folder.
pub struct SaveImage;

/// Parameters of [`SaveImage`].
#[derive(Deserialize)]
pub struct SaveImageParams {
    /// File name prefix, possibly with subfolders (`"portraits/test"`), inside the output folder.
    pub filename_prefix: String,
}

impl<B: Backend> Node<B> for SaveImage {
    type Params = SaveImageParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("SaveImage")
            .category("image")
            .describe(
                "Saves images as PNG files <prefix>_00001_.png … in the output folder, with the run's text chunks (the workflow) \
                 embedded; each file appears whole or not at all.",
            )
            .input("images", PortType::IMAGE)
            .param(ParamSpec::string("filename_prefix").default("weft"))
            .output_node()
            .always_run()
    }

    fn run(
        &self,
        params: SaveImageParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let bitmaps = image_to_bitmaps(inputs.image("images")?)?;
        let prefix = ctx.output_path(&params.filename_prefix)?;
        let (dir, stem) = match (prefix.parent(), prefix.file_name()) {
            (Some(dir), Some(stem)) => (dir.to_owned(), stem.to_string_lossy().into_owned()),
            _ => {
                return Err(NodeError::msg(format!(
                    "invalid filename_prefix {:?}",
                    params.filename_prefix
                )));
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        let text = ctx
            .env()
            .services
            .get::<PngTextChunks>()
            .map(|chunks| chunks.0.clone())
            .unwrap_or_default();
        for (counter, bitmap) in (next_counter(&dir, &stem)?..).zip(&bitmaps) {
            ctx.check_cancelled()?;
            let path = dir.join(format!("{stem}_{counter:05}_.png"));
            write_atomically(&path, &encode_png_with_text(bitmap, &text)?)?;
            tracing::info!(path = %path.display(), "saved image");
            ctx.report_file(&path);
        }
        Ok(Outputs::none())
    }
}

/// One past the largest counter of `<stem>_NNNNN_.png` files in `dir` (ComfyUI's numbering).
fn next_counter(dir: &Path, stem: &str) -> Result<u64, NodeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| NodeError::io(dir, e))?;
    let largest = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let digits = name
                .strip_prefix(stem)?
                .strip_prefix('_')?
                .strip_suffix("_.png")?
                .to_owned();
            digits.parse::<u64>().ok()
        })
        .max();
    Ok(largest.map_or(1, |n| n + 1))
}

/// Writes `bytes` to a hidden temporary file beside `path`, then renames it into place: a reader
/// (or a Ctrl-C) never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial: PathBuf = path.with_file_name(format!(".{name}.partial"));
    let result = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(NodeError::io(path, e));
    }
    Ok(())
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry.register(LoadImage).register(SaveImage);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_keeps_pixels_and_alpha() {
        let bitmap = Bitmap {
            width: 2,
            height: 1,
            channels: 4,
            pixels: vec![255, 0, 10, 255, 1, 2, 3, 0],
        };
        let decoded = decode_png(&encode_png(&bitmap).unwrap()).unwrap();
        assert_eq!((decoded.width, decoded.height, decoded.channels), (2, 1, 4));
        assert_eq!(decoded.pixels, bitmap.pixels);
    }

    #[test]
    fn grey_png_decodes_as_rgb() {
        let bitmap = Bitmap {
            width: 1,
            height: 2,
            channels: 1,
            pixels: vec![7, 200],
        };
        let decoded = decode_png(&encode_png(&bitmap).unwrap()).unwrap();
        assert_eq!(decoded.channels, 3);
        assert_eq!(decoded.pixels, vec![7, 7, 7, 200, 200, 200]);
    }

    #[test]
    fn text_chunks_are_embedded_latin1_or_utf8() {
        let bitmap = Bitmap {
            width: 1,
            height: 1,
            channels: 3,
            pixels: vec![1, 2, 3],
        };
        let text = [
            ("workflow".to_owned(), "Workflow(version: 1)".to_owned()),
            ("prompt".to_owned(), "猫 café".to_owned()),
        ];
        let bytes = encode_png_with_text(&bitmap, &text).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        assert_eq!(
            reader.info().uncompressed_latin1_text.len(),
            1,
            "Latin-1 text as tEXt"
        );
        assert_eq!(reader.info().utf8_text.len(), 1, "other text as iTXt");
        assert_eq!(read_png_text(&bytes).unwrap(), text);
        assert_eq!(decode_png(&bytes).unwrap().pixels, vec![1, 2, 3]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_png(b"not a png").is_err());
        assert!(decode_png(&[]).is_err());
    }

    #[test]
    fn counter_continues_after_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_counter(dir.path(), "x").unwrap(), 1);
        for name in [
            "x_00001_.png",
            "x_00007_.png",
            "xy_00009_.png",
            "x_notanumber_.png",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(next_counter(dir.path(), "x").unwrap(), 8);
    }
}
