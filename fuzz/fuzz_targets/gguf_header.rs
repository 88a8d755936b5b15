//! Fuzzes the GGUF header parser, then dequantizes every (small) tensor it accepts: no input may
//! panic, hang, or make the parser allocate beyond what the bytes could hold.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_formats::gguf::parse_header;
use weft_formats::tensor::to_f32;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = parse_header(data) else { return };
    for t in &header.tensors {
        let n = t.n_elements();
        if n > 1 << 16 {
            continue;
        }
        let bytes = &data[t.offset as usize..(t.offset + t.nbytes) as usize];
        let mut out = vec![0f32; n as usize];
        let _ = to_f32(t.dtype, bytes, &mut out, &t.name);
    }
    let _ = header.architecture();
});
