//! CLIP's byte-level BPE tokenizer (49408 tokens), built with the `tokenizers` crate from OpenAI's
//! merges file (`nodes/models/data/bpe_simple_vocab_16e6.txt.gz`, shipped in the binary), with the same
//! pipeline as transformers' `CLIPTokenizer`: NFC, whitespace runs to one space, lowercase; CLIP's
//! split regex, byte-level symbols; BPE with `</w>` word ends; `<|startoftext|>` and
//! `<|endoftext|>` as special tokens.
//!
//! The vocabulary is derived from the merges as OpenAI's `SimpleTokenizer` does (and as the
//! vocab.json of openai/clip-vit-large-patch14 lists it): the 256 byte symbols in GPT-2's
//! `bytes_to_unicode` order, the same with `</w>`, one token per merge, then the two specials.
use super::batch::{ChunkLayout, TokenChunk};
use super::{TextError, gunzip};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// OpenAI's CLIP BPE merges (from the open_clip_torch wheel; see tools/gen_text_encoder_fixtures.py).
const BPE_MERGES_GZ: &[u8] = include_bytes!("../../data/bpe_simple_vocab_16e6.txt.gz");
const BUILTIN_ORIGIN: &str = "weft's built-in CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz)";

/// Merges CLIP uses: lines 1..=48894 of the file (its first line is a version header).
const N_MERGES: usize = 49152 - 256 - 2;
pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The split that `CLIPTokenizer` applies before byte-level BPE.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's tokenizer. Building it parses 48894 merges (tens of milliseconds): build once, share.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    start: u32,
    end: u32,
}

impl ClipTokenizer {
    /// The standard CLIP vocabulary, shipped with weft.
    pub fn builtin() -> Result<Self, TextError> {
        let text = gunzip(BPE_MERGES_GZ, BUILTIN_ORIGIN)?;
        Self::from_merges_file(&text, BUILTIN_ORIGIN)
    }

    /// From the text of a `bpe_simple_vocab_16e6.txt`-style merges file; `origin` names it in errors.
    pub fn from_merges_file(text: &str, origin: &str) -> Result<Self, TextError> {
        let bad = |message: String| TextError::Vocabulary {
            origin: origin.to_string(),
            message,
        };
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < N_MERGES + 1 {
            return Err(bad(format!(
                "{} lines, expected at least {}",
                lines.len(),
                N_MERGES + 1
            )));
        }
        let mut merges = Vec::with_capacity(N_MERGES);
        for (i, line) in lines[1..=N_MERGES].iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => {
                    return Err(bad(format!(
                        "line {}: {line:?} is not a merge of two symbols",
                        i + 2
                    )));
                }
            }
        }
        let symbols = byte_symbols();
        let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(START_OF_TEXT.to_string());
        tokens.push(END_OF_TEXT.to_string());
        let n_tokens = tokens.len();
        let vocab: Vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        if vocab.len() != n_tokens {
            return Err(bad(format!(
                "{} distinct tokens among {n_tokens}: the merges repeat a token",
                vocab.len()
            )));
        }
        let crate_error = |e: tokenizers::Error| bad(e.to_string());
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(END_OF_TEXT.to_string())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(crate_error)?;
        let mut tokenizer = Tokenizer::new(model);
        let whitespace =
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(crate_error)?;
        tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(crate_error)?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.add_special_tokens(&[
            AddedToken::from(START_OF_TEXT, true),
            AddedToken::from(END_OF_TEXT, true),
        ]);
        let start = (n_tokens - 2) as u32;
        Ok(ClipTokenizer {
            tokenizer,
            start,
            end: start + 1,
        })
    }

    /// Ids of `text` without start/end tokens (what ComfyUI keeps of each tokenizer call).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TextError::tokenize(text, e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `<|startoftext|>`, the ids of `text`, `<|endoftext|>`: transformers' `tokenizer(text).input_ids`.
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = vec![self.start];
        ids.extend(self.encode(text)?);
        ids.push(self.end);
        Ok(ids)
    }

    /// ComfyUI's weighted 77-token chunks for `prompt` (the Flux / SD1 CLIP-L framing).
    pub fn tokenize_with_weights(&self, prompt: &str) -> Result<Vec<TokenChunk>, TextError> {
        ChunkLayout::CLIP_L.tokenize_with_weights(prompt, |word| self.encode(word))
    }

    pub fn start_token(&self) -> u32 {
        self.start
    }

    pub fn end_token(&self) -> u32 {
        self.end
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// GPT-2's `bytes_to_unicode` values, in its order: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100 onwards.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut symbols: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let mut next = 256u32;
    for b in 0..256u32 {
        if !printable(b) {
            symbols.extend(char::from_u32(next));
            next += 1;
        }
    }
    symbols
}
