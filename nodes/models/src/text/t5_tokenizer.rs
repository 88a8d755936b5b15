//! T5's SentencePiece unigram tokenizer, rebuilt with the `tokenizers` crate from a vocabulary
//! (pieces, scores, types) and the nmt_nfkc precompiled charsmap: either a GGUF's
//! `tokenizer.ggml.*` metadata (as llama.cpp's converter writes it for T5) or the tokenizer.json
//! of google/t5-v1_1-xxl shipped with weft (`nodes/models/data/t5_tokenizer.json.gz`) for T5 files that
//! carry no tokenizer (safetensors).
//!
//! The pipeline is transformers 5's `T5Tokenizer`: Precompiled normalizer; whitespace split, then
//! Metaspace (`▁`, prepended to every word); Unigram with `<unk>` = 2; control and user-defined
//! tokens (`<pad>`, `</s>`, `<unk>`, `<extra_id_N>`) matched as special tokens in the raw text.
use super::batch::{ChunkLayout, TokenChunk};
use super::{TextError, gunzip};
use serde_json::Value as Json;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};
use weft_engine::formats::GgufFile;
use weft_engine::formats::gguf::{ArrayValue, MetadataValue};

const BUILTIN_JSON_GZ: &[u8] = include_bytes!("../../data/t5_tokenizer.json.gz");
const BUILTIN_ORIGIN: &str = "weft's built-in T5 vocabulary (t5_tokenizer.json.gz)";

/// SentencePiece piece types, as `tokenizer.ggml.token_type` stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_ggml(t: i64) -> Option<PieceType> {
        Some(match t {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// What a T5 tokenizer is built from.
#[derive(Debug, Clone)]
pub struct T5Vocab {
    pub pieces: Vec<(String, f64, PieceType)>,
    pub unk_id: usize,
    pub eos_id: u32,
    pub pad_id: u32,
    /// The SentencePiece normalizer's precompiled charsmap (empty: no normalization).
    pub charsmap: Vec<u8>,
}

/// T5's tokenizer.
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    eos: u32,
    pad: u32,
}

impl T5Tokenizer {
    /// google/t5-v1_1-xxl's vocabulary (32000 pieces and 100 `<extra_id_N>`), shipped with weft.
    pub fn builtin() -> Result<Self, TextError> {
        let text = gunzip(BUILTIN_JSON_GZ, BUILTIN_ORIGIN)?;
        Self::new(
            T5Vocab::from_tokenizer_json(&text, BUILTIN_ORIGIN)?,
            BUILTIN_ORIGIN,
        )
    }

    /// From a T5 GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TextError> {
        let origin = file.mapping().path().display().to_string();
        Self::new(T5Vocab::from_gguf(file)?, &origin)
    }

    pub fn new(vocab: T5Vocab, origin: &str) -> Result<Self, TextError> {
        let bad = |message: String| TextError::Vocabulary {
            origin: origin.to_string(),
            message,
        };
        let n = vocab.pieces.len();
        for (what, id) in [
            ("unknown", vocab.unk_id),
            ("end", vocab.eos_id as usize),
            ("pad", vocab.pad_id as usize),
        ] {
            if id >= n {
                return Err(bad(format!(
                    "{what} token id {id} is outside the {n}-piece vocabulary"
                )));
            }
        }
        // Trailing unused pieces (llama.cpp pads the list to the embedding's rows with `[PADn]`)
        // must never be produced: leave them out of the model.
        let used = n - vocab
            .pieces
            .iter()
            .rev()
            .take_while(|p| p.2 == PieceType::Unused)
            .count();
        let scores = vocab.pieces[..used]
            .iter()
            .map(|(p, s, _)| (p.clone(), *s))
            .collect();
        let model =
            Unigram::from(scores, Some(vocab.unk_id), false).map_err(|e| bad(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(model);
        if !vocab.charsmap.is_empty() {
            check_charsmap(&vocab.charsmap)
                .map_err(|m| bad(format!("precompiled charsmap: {m}")))?;
            let normalizer = Precompiled::from(&vocab.charsmap)
                .map_err(|e| bad(format!("precompiled charsmap: {e}")))?;
            tokenizer.with_normalizer(Some(normalizer));
        }
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            WhitespaceSplit.into(),
            Metaspace::new('▁', PrependScheme::Always, true).into(),
        ])));
        let specials: Vec<AddedToken> = vocab.pieces[..used]
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                matches!(p.2, PieceType::Control | PieceType::UserDefined) || *i == vocab.unk_id
            })
            .map(|(_, p)| AddedToken::from(p.0.clone(), true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        Ok(T5Tokenizer {
            tokenizer,
            eos: vocab.eos_id,
            pad: vocab.pad_id,
        })
    }

    /// Ids of `text` without the closing `</s>` (what ComfyUI keeps of each tokenizer call).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TextError::tokenize(text, e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of `text` and `</s>`: transformers' `tokenizer(text).input_ids`.
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = self.encode(text)?;
        ids.push(self.eos);
        Ok(ids)
    }

    /// ComfyUI's weighted chunk for `prompt` as the Flux T5-XXL tokenizer frames it: one chunk,
    /// `</s>` at the end, padded with `<pad>` to at least `min_length` (ComfyUI: 256).
    pub fn tokenize_with_weights(
        &self,
        prompt: &str,
        min_length: usize,
    ) -> Result<Vec<TokenChunk>, TextError> {
        let layout = ChunkLayout {
            end: self.eos,
            pad: self.pad,
            ..ChunkLayout::flux_t5(min_length)
        };
        layout.tokenize_with_weights(prompt, |word| self.encode(word))
    }

    pub fn end_token(&self) -> u32 {
        self.eos
    }

    pub fn pad_token(&self) -> u32 {
        self.pad
    }
}

impl T5Vocab {
    /// Reads `tokenizer.ggml.{model,tokens,scores,token_type,precompiled_charsmap}` and the
    /// special ids; the error names the file and the key.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TextError> {
        let origin = file.mapping().path().display().to_string();
        let header = file.header();
        let meta_err = |key: &str, message: String| TextError::Metadata {
            origin: origin.clone(),
            key: key.to_string(),
            message,
        };
        let get = |key: &str| header.get(key);
        let array = |key: &str| -> Result<&ArrayValue, TextError> {
            get(key)
                .ok_or_else(|| meta_err(key, "missing".into()))?
                .as_array()
                .ok_or_else(|| meta_err(key, "not an array".into()))
        };
        let model = get("tokenizer.ggml.model").and_then(MetadataValue::as_str);
        if model != Some("t5") {
            return Err(meta_err(
                "tokenizer.ggml.model",
                format!("{model:?}, expected \"t5\" (a SentencePiece unigram vocabulary)"),
            ));
        }
        let tokens = array("tokenizer.ggml.tokens")?
            .as_strings()
            .ok_or_else(|| meta_err("tokenizer.ggml.tokens", "not an array of strings".into()))?;
        let n = tokens.len();
        let scores: Vec<f64> = match array("tokenizer.ggml.scores")? {
            ArrayValue::F32(v) => v.iter().map(|&s| s as f64).collect(),
            ArrayValue::F64(v) => v.clone(),
            other => {
                return Err(meta_err(
                    "tokenizer.ggml.scores",
                    format!("array of {}, expected F32", other.type_name()),
                ));
            }
        };
        let types = array("tokenizer.ggml.token_type")?
            .as_i64_vec()
            .ok_or_else(|| {
                meta_err(
                    "tokenizer.ggml.token_type",
                    "not an array of integers".into(),
                )
            })?;
        for (key, len) in [
            ("tokenizer.ggml.scores", scores.len()),
            ("tokenizer.ggml.token_type", types.len()),
        ] {
            if len != n {
                return Err(meta_err(key, format!("{len} entries for {n} tokens")));
            }
        }
        let mut pieces = Vec::with_capacity(n);
        for (i, ((piece, score), t)) in tokens.iter().zip(scores).zip(&types).enumerate() {
            let kind = PieceType::from_ggml(*t).ok_or_else(|| {
                meta_err(
                    "tokenizer.ggml.token_type",
                    format!("token {i}: unknown type {t}"),
                )
            })?;
            pieces.push((piece.clone(), score, kind));
        }
        let charsmap = match get("tokenizer.ggml.precompiled_charsmap") {
            None => Vec::new(),
            Some(value) => {
                let key = "tokenizer.ggml.precompiled_charsmap";
                match value.as_array() {
                    Some(ArrayValue::U8(v)) => v.clone(),
                    Some(ArrayValue::I8(v)) => v.iter().map(|&b| b as u8).collect(),
                    _ => return Err(meta_err(key, "expected an array of UINT8".into())),
                }
            }
        };
        let id = |key: &str, default: u64| -> Result<u64, TextError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| meta_err(key, "not an unsigned integer".into())),
            }
        };
        let small = |key: &str, v: u64| {
            u32::try_from(v).map_err(|_| meta_err(key, format!("{v} is not a token id")))
        };
        Ok(T5Vocab {
            pieces,
            unk_id: id("tokenizer.ggml.unknown_token_id", 2)? as usize,
            eos_id: small(
                "tokenizer.ggml.eos_token_id",
                id("tokenizer.ggml.eos_token_id", 1)?,
            )?,
            pad_id: small(
                "tokenizer.ggml.padding_token_id",
                id("tokenizer.ggml.padding_token_id", 0)?,
            )?,
            charsmap,
        })
    }

    /// Reads a Hugging Face T5 tokenizer.json (Unigram model, Precompiled normalizer).
    pub fn from_tokenizer_json(text: &str, origin: &str) -> Result<Self, TextError> {
        let bad = |message: String| TextError::Vocabulary {
            origin: origin.to_string(),
            message,
        };
        let json: Json = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let model = &json["model"];
        if model["type"] != "Unigram" {
            return Err(bad(format!(
                "model type {}, expected \"Unigram\"",
                model["type"]
            )));
        }
        let vocab = model["vocab"]
            .as_array()
            .ok_or_else(|| bad("model.vocab is not a list".into()))?;
        let specials: std::collections::HashSet<u64> = json["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["special"] == true)
            .filter_map(|t| t["id"].as_u64())
            .collect();
        let unk_id = model["unk_id"].as_u64().unwrap_or(2) as usize;
        let mut pieces = Vec::with_capacity(vocab.len());
        for (i, entry) in vocab.iter().enumerate() {
            let (Some(piece), Some(score)) = (entry[0].as_str(), entry[1].as_f64()) else {
                return Err(bad(format!("model.vocab[{i}] is not [piece, score]")));
            };
            let kind = match i {
                _ if i == unk_id => PieceType::Unknown,
                _ if specials.contains(&(i as u64)) => PieceType::Control,
                _ => PieceType::Normal,
            };
            pieces.push((piece.to_string(), score, kind));
        }
        let normalizers = match json["normalizer"]["type"].as_str() {
            Some("Sequence") => json["normalizer"]["normalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Some(_) => vec![json["normalizer"].clone()],
            None => Vec::new(),
        };
        let charsmap = match normalizers.iter().find(|n| n["type"] == "Precompiled") {
            None => Vec::new(),
            Some(n) => {
                let encoded = n["precompiled_charsmap"]
                    .as_str()
                    .ok_or_else(|| bad("precompiled_charsmap is not a string".into()))?;
                base64_decode(encoded)
                    .ok_or_else(|| bad("precompiled_charsmap is not base64".into()))?
            }
        };
        let token_id = |name: &str, default: u32| {
            vocab
                .iter()
                .position(|e| e[0] == name)
                .map_or(default, |i| i as u32)
        };
        Ok(T5Vocab {
            pieces,
            unk_id,
            eos_id: token_id("</s>", 1),
            pad_id: token_id("<pad>", 0),
            charsmap,
        })
    }
}

/// Walks every path of the charsmap's double-array trie (as `spm_precompiled` will) and checks
/// each index and each normalized-string offset, so that a corrupt file is an error here rather
/// than an out-of-bounds panic while tokenizing.
fn check_charsmap(bytes: &[u8]) -> Result<(), String> {
    let trie_bytes = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("shorter than 4 bytes")?;
    if trie_bytes % 4 != 0 || bytes.len() < 4 + trie_bytes {
        return Err(format!(
            "trie of {trie_bytes} bytes does not fit the {}-byte charsmap",
            bytes.len()
        ));
    }
    let units: Vec<usize> = bytes[4..4 + trie_bytes]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let normalized = std::str::from_utf8(&bytes[4 + trie_bytes..])
        .map_err(|_| "normalized strings are not UTF-8")?;
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let label = |u: usize| u & ((1 << 31) | 0xff);
    let value = |u: usize| u & ((1 << 31) - 1);
    let root = *units.first().ok_or("empty trie")?;
    let mut seen = vec![false; units.len()];
    let mut stack = vec![offset(root)];
    while let Some(node) = stack.pop() {
        for c in 1..256usize {
            let child = node ^ c;
            let unit = *units
                .get(child)
                .ok_or_else(|| format!("index {child} outside the {}-unit trie", units.len()))?;
            if label(unit) != c {
                continue;
            }
            let next = child ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *units
                    .get(next)
                    .ok_or_else(|| format!("leaf index {next} outside the trie"))?;
                let start = value(leaf);
                if start >= normalized.len() || !normalized.is_char_boundary(start) {
                    return Err(format!(
                        "normalized offset {start} is not a character of the {}-byte table",
                        normalized.len()
                    ));
                }
            }
            if next >= units.len() {
                return Err(format!("node {next} outside the {}-unit trie", units.len()));
            }
            if !seen[next] {
                seen[next] = true;
                stack.push(next);
            }
        }
    }
    Ok(())
}

/// Standard base64 (with padding), as tokenizer.json stores the charsmap.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | sextet(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}
