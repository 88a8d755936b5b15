//! Text encoders and tokenizers against transformers (and ComfyUI's prompt handling), from the
//! fixtures of tools/gen_text_encoder_fixtures.py in tests/fixtures/text/.
mod encoders;
mod tokenizers;

use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    crate::models::fixture(&format!("text/{name}"))
}
