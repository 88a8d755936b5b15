//! The quickstart (models/quickstart/, workflows/quickstart.ron): weft's tokenizers give the ids
//! the models were trained on ([`tokens`]), a simple picture classifier checked against rendered
//! ground truth ([`classify`]), and the prompt-adherence test: held-out prompts through the
//! shipped workflow, pictures classified back ([`adherence`]).
//!
//! Fixtures from tools/quickstart/fixtures.py (the dataset's own renderer and vocabulary).
mod adherence;
mod classify;
mod tokens;

use std::path::PathBuf;
use weft_tests::repo_root;

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures/quickstart").join(rel)
}

pub fn model(name: &str) -> PathBuf {
    repo_root().join("models/quickstart").join(name)
}

pub fn json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}
