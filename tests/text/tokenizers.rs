//! Tokenizer parity: every prompt of the corpus (tests/fixtures/text/prompts.json: 241 prompts with
//! unicode, emoji, control characters, long prompts and ComfyUI weight syntax) must give exactly
//! the ids transformers' CLIPTokenizer / T5TokenizerFast give, and exactly ComfyUI's weighted
//! chunks. No tolerance: ids and weights are compared for equality (weights are f64 as in Python).
use super::fixture;
use serde_json::Value;
use std::sync::OnceLock;
use weft_engine::formats::ModelFile;
use weft_models::text::weights::parse_weights;
use weft_models::text::{ClipTokenizer, T5Tokenizer, TextError, TokenChunk};

fn corpus() -> &'static [Value] {
    static CORPUS: OnceLock<Vec<Value>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let text = std::fs::read_to_string(fixture("prompts.json")).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        json["cases"].as_array().unwrap().clone()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A fixture chunk {"ids", "weights"?, "pad"} expanded to ids and weights.
fn chunk(v: &Value, pad: u32) -> TokenChunk {
    let mut ids = ids(&v["ids"]);
    let mut weights: Vec<f64> = match v.get("weights") {
        Some(w) => w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect(),
        None => vec![1.0; ids.len()],
    };
    let n_pad = v["pad"].as_u64().unwrap() as usize;
    ids.extend(std::iter::repeat_n(pad, n_pad));
    weights.extend(std::iter::repeat_n(1.0, n_pad));
    TokenChunk { ids, weights }
}

/// Runs `check` on every case; fails listing every prompt that differs (not just the first).
fn all_cases(what: &str, mut check: impl FnMut(&Value) -> Result<bool, TextError>) {
    let cases = corpus();
    assert!(cases.len() >= 200, "corpus has {} prompts", cases.len());
    let failing: Vec<String> = cases
        .iter()
        .filter(|case| !check(case).unwrap_or_else(|e| panic!("{what}: {e}")))
        .map(|case| format!("{:?}", case["prompt"].as_str().unwrap()))
        .collect();
    println!(
        "{what}: {} of {} prompts identical",
        cases.len() - failing.len(),
        cases.len()
    );
    assert!(
        failing.is_empty(),
        "{what}: {} prompts differ:\n{}",
        failing.len(),
        failing.join("\n")
    );
}

fn clip() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| ClipTokenizer::builtin().unwrap())
}

fn t5_builtin() -> &'static T5Tokenizer {
    static TOKENIZER: OnceLock<T5Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| T5Tokenizer::builtin().unwrap())
}

fn t5_gguf() -> &'static T5Tokenizer {
    static TOKENIZER: OnceLock<T5Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(
        || match ModelFile::open(fixture("t5_tokenizer.gguf")).unwrap() {
            ModelFile::Gguf(f) => T5Tokenizer::from_gguf(&f).unwrap(),
            ModelFile::Safetensors(_) => unreachable!(),
        },
    )
}

#[test]
fn clip_ids_match_transformers() {
    assert_eq!(clip().vocab_size(), 49408);
    all_cases("CLIP ids", |case| {
        Ok(clip().encode_with_specials(case["prompt"].as_str().unwrap())? == ids(&case["clip"]))
    });
}

#[test]
fn t5_builtin_ids_match_transformers() {
    all_cases("T5 ids (built-in vocabulary)", |case| {
        Ok(
            t5_builtin().encode_with_specials(case["prompt"].as_str().unwrap())?
                == ids(&case["t5"]),
        )
    });
}

#[test]
fn t5_gguf_ids_match_transformers() {
    all_cases("T5 ids (GGUF tokenizer.ggml.*)", |case| {
        Ok(t5_gguf().encode_with_specials(case["prompt"].as_str().unwrap())? == ids(&case["t5"]))
    });
}

#[test]
fn prompt_weights_match_comfyui() {
    all_cases("token_weights segments", |case| {
        let want: Vec<(String, f64)> = case["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_f64().unwrap()))
            .collect();
        Ok(parse_weights(case["prompt"].as_str().unwrap()) == want)
    });
}

#[test]
fn clip_chunks_match_comfyui() {
    all_cases("CLIP-L weighted chunks", |case| {
        let want: Vec<TokenChunk> = case["clip_chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| chunk(c, 49407))
            .collect();
        let got = clip().tokenize_with_weights(case["prompt"].as_str().unwrap())?;
        Ok(got.iter().all(|c| c.ids.len() == 77) && got == want)
    });
}

#[test]
fn t5_chunks_match_comfyui() {
    all_cases("T5-XXL weighted chunk (min length 256)", |case| {
        let want: Vec<TokenChunk> = case["t5_chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| chunk(c, 0))
            .collect();
        let got = t5_gguf().tokenize_with_weights(case["prompt"].as_str().unwrap(), 256)?;
        Ok(got.len() == 1 && got[0].ids.len() >= 256 && got == want)
    });
}

#[test]
fn long_prompts_span_chunks() {
    // "word " * 76 is 76 one-token words: 75 fit the first chunk, the 76th opens a second.
    let chunks = clip().tokenize_with_weights(&"word ".repeat(76)).unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!((chunks[0].ids[0], chunks[0].ids[76]), (49406, 49407));
    let t5 = t5_builtin()
        .tokenize_with_weights(&"tok ".repeat(300), 256)
        .unwrap();
    assert_eq!(t5.len(), 1, "T5 is never cut");
    assert!(t5[0].ids.len() > 256 && *t5[0].ids.last().unwrap() == 1);
}

#[test]
fn bad_t5_metadata_is_an_error_naming_the_key() {
    let file = match ModelFile::open(fixture("t5.gguf")).unwrap() {
        ModelFile::Gguf(f) => f,
        ModelFile::Safetensors(_) => unreachable!(),
    };
    let err = T5Tokenizer::from_gguf(&file)
        .err()
        .expect("a model file without a vocabulary")
        .to_string();
    assert!(
        err.contains("t5.gguf") && err.contains("tokenizer.ggml.model"),
        "{err}"
    );
}

#[test]
fn corrupt_charsmap_is_an_error_not_a_panic() {
    let file = match ModelFile::open(fixture("t5_tokenizer.gguf")).unwrap() {
        ModelFile::Gguf(f) => f,
        ModelFile::Safetensors(_) => unreachable!(),
    };
    let vocab = weft_models::text::T5Vocab::from_gguf(&file).unwrap();
    // A trie cut short, and one whose node offsets point past its end: both would index out of
    // bounds inside the normalizer while tokenizing.
    let mut short = vocab.clone();
    short.charsmap.truncate(short.charsmap.len() / 2);
    let mut scrambled = vocab.clone();
    for unit in scrambled.charsmap[4..4 + 4096].chunks_exact_mut(4) {
        unit[3] = 0x7f;
    }
    for (what, bad) in [("truncated", short), ("scrambled", scrambled)] {
        let err = T5Tokenizer::new(bad, "test.gguf")
            .err()
            .unwrap_or_else(|| panic!("{what} charsmap accepted"))
            .to_string();
        assert!(
            err.contains("test.gguf") && err.contains("charsmap"),
            "{what}: {err}"
        );
    }
}
