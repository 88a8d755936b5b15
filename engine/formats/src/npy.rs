//! NumPy `.npy` files (format 1.0/2.0, little-endian, C order): written by `weft gguf dump`,
//! read by tests that compare against numpy references.
use super::error::FormatError;
use std::io::Write;
use std::path::Path;

/// An array read from a `.npy` file, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The numpy dtype descriptor as stored (`<f4`, `<f2`, `<i4`, …).
    pub descr: String,
    pub shape: Vec<u64>,
    pub data: Vec<f32>,
}

/// Writes `data` with `shape` as a little-endian f32 `.npy` (format 1.0).
pub fn write_f32(path: impl AsRef<Path>, shape: &[u64], data: &[f32]) -> Result<(), FormatError> {
    let path = path.as_ref();
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape_str = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' padded to a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let mut bytes = Vec::with_capacity(total + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
    f.write_all(&bytes).map_err(|e| FormatError::io(path, e))
}

/// Reads a `.npy` of f4/f2/f8/i1/i2/i4/i8/u1/u2/u4/bool elements into f32 values.
pub fn read(path: impl AsRef<Path>) -> Result<NpyArray, FormatError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    parse(&bytes).map_err(|message| FormatError::Npy {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses `.npy` bytes; errors are plain messages.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    let descr = dict_value(header, "descr")
        .and_then(quoted)
        .ok_or("no descr in .npy header")?
        .to_string();
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order .npy arrays are not supported".into());
    }
    let shape_str = dict_value(header, "shape").ok_or("no shape in .npy header")?;
    let inner = shape_str.trim().trim_start_matches('(');
    let inner = &inner[..inner.find(')').ok_or("bad shape in .npy header")?];
    let shape: Vec<u64> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| format!("bad dimension {s:?}")))
        .collect::<Result<_, _>>()?;
    let n = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")? as usize;
    let body = &bytes[start + header_len..];
    let (size, conv): (usize, fn(&[u8]) -> f32) = match descr.as_str() {
        "<f4" => (4, |c| f32::from_le_bytes(c.try_into().expect("4"))),
        "<f2" => (2, |c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        "<f8" => (8, |c| f64::from_le_bytes(c.try_into().expect("8")) as f32),
        "|i1" => (1, |c| f32::from(c[0] as i8)),
        "|u1" | "|b1" => (1, |c| f32::from(c[0])),
        "<i2" => (2, |c| f32::from(i16::from_le_bytes([c[0], c[1]]))),
        "<u2" => (2, |c| f32::from(u16::from_le_bytes([c[0], c[1]]))),
        "<i4" => (4, |c| i32::from_le_bytes(c.try_into().expect("4")) as f32),
        "<u4" => (4, |c| u32::from_le_bytes(c.try_into().expect("4")) as f32),
        "<i8" => (8, |c| i64::from_le_bytes(c.try_into().expect("8")) as f32),
        other => return Err(format!("unsupported .npy dtype {other}")),
    };
    if body.len() < n.checked_mul(size).ok_or("shape overflows")? {
        return Err(format!(
            "truncated .npy data: {} bytes for {n} elements of {descr}",
            body.len()
        ));
    }
    let data = body[..n * size].chunks_exact(size).map(conv).collect();
    Ok(NpyArray { descr, shape, data })
}

/// The contents of the quoted string `text` starts with.
fn quoted(text: &str) -> Option<&str> {
    let q = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &text[1..];
    Some(&rest[..rest.find(q)?])
}

/// The text after `'key':` in a Python dict literal, up to the end of the header.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data = [1.5f32, -2.0, 0.0, f32::MAX, 3.25, 7.0];
        write_f32(&path, &[2, 3], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        let arr = read(&path).unwrap();
        assert_eq!(arr.shape, vec![2, 3]);
        assert_eq!(arr.data, data);
        write_f32(&path, &[6], &data).unwrap();
        assert_eq!(read(&path).unwrap().shape, vec![6]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"hello").is_err());
        assert!(parse(b"\x93NUMPY\x01\x00\xff\xff{").is_err());
    }
}
