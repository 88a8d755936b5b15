//! ComfyUI's `SDTokenizer.tokenize_with_weights`: a weighted prompt becomes fixed-layout chunks of
//! token ids with per-token weights (start token, words, end token, padding), with ComfyUI's rules
//! for where a long prompt is cut. [`ChunkLayout::CLIP_L`] and [`ChunkLayout::flux_t5`] are the
//! settings ComfyUI's Flux tokenizer uses.
use super::TextError;
use super::weights::{parse_weights, split_embedding_words};

/// One encoder input: ids and their weights (ComfyUI's `(token, weight)` pairs), same length.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f64>,
}

impl TokenChunk {
    /// Whether any token carries a weight other than 1.0 (ComfyUI then also encodes an empty
    /// prompt and interpolates, see [`super::apply_token_weights`]).
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// How a tokenizer's output is framed into chunks (ComfyUI's `SDTokenizer` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    /// Token that opens every chunk (CLIP's `<|startoftext|>`; none for T5).
    pub start: Option<u32>,
    /// Token that closes every chunk.
    pub end: u32,
    /// Token that fills a chunk up.
    pub pad: u32,
    /// Tokens per chunk, start and end included.
    pub max_length: usize,
    /// Pad every chunk to `max_length`.
    pub pad_to_max_length: bool,
    /// Pad the last chunk to at least this many tokens.
    pub min_length: Option<usize>,
}

/// A "word" (one tokenizer call) at least this long may be split across chunks; shorter ones
/// move whole to the next chunk (ComfyUI's `max_word_length`).
const MAX_WORD_LENGTH: usize = 8;

impl ChunkLayout {
    /// CLIP-L as ComfyUI's `sd1_clip.SDTokenizer()` frames it: 77 tokens, BOS 49406, EOS 49407,
    /// padded with EOS.
    pub const CLIP_L: ChunkLayout = ChunkLayout {
        start: Some(49406),
        end: 49407,
        pad: 49407,
        max_length: 77,
        pad_to_max_length: true,
        min_length: None,
    };

    /// T5-XXL as ComfyUI's Flux `T5XXLTokenizer` frames it: no start token, `</s>` (1) at the
    /// end, one chunk however long, padded with `<pad>` (0) to at least `min_length` (ComfyUI:
    /// 256; SD3 uses 77).
    pub const fn flux_t5(min_length: usize) -> ChunkLayout {
        ChunkLayout {
            start: None,
            end: 1,
            pad: 0,
            max_length: 99_999_999,
            pad_to_max_length: false,
            min_length: Some(min_length),
        }
    }

    /// Frames `prompt`: parses weights, tokenizes each piece with `encode` (ids without special
    /// tokens), and cuts the result into chunks exactly as ComfyUI does.
    pub fn tokenize_with_weights(
        &self,
        prompt: &str,
        mut encode: impl FnMut(&str) -> Result<Vec<u32>, TextError>,
    ) -> Result<Vec<TokenChunk>, TextError> {
        let room = self
            .max_length
            .saturating_sub(1 + usize::from(self.start.is_some()));
        if room == 0 {
            return Err(TextError::Layout(format!(
                "max_length {} leaves no room for tokens",
                self.max_length
            )));
        }
        let mut groups = Vec::new();
        for (segment, weight) in parse_weights(prompt) {
            for word in split_embedding_words(&segment) {
                groups.push((encode(word)?, weight));
            }
        }

        let mut chunks = Vec::new();
        let mut chunk = self.open();
        for (ids, weight) in groups {
            // ComfyUI loops forever on a short word that cannot fit an empty chunk; with the
            // layouts above that cannot happen, and here such a word is split like a long one.
            let splittable = ids.len() >= MAX_WORD_LENGTH || ids.len() > room;
            let mut rest = ids.as_slice();
            while !rest.is_empty() {
                if rest.len() + chunk.ids.len() > self.max_length - 1 {
                    let remaining = self.max_length - chunk.ids.len() - 1;
                    if splittable {
                        chunk.push_all(&rest[..remaining], weight);
                        rest = &rest[remaining..];
                        chunk.push(self.end, 1.0);
                    } else {
                        chunk.push(self.end, 1.0);
                        if self.pad_to_max_length {
                            chunk.push_n(self.pad, remaining);
                        }
                    }
                    chunks.push(std::mem::replace(&mut chunk, self.open()));
                } else {
                    chunk.push_all(rest, weight);
                    rest = &[];
                }
            }
        }
        chunk.push(self.end, 1.0);
        if self.pad_to_max_length && chunk.ids.len() < self.max_length {
            chunk.push_n(self.pad, self.max_length - chunk.ids.len());
        }
        if let Some(min) = self.min_length.filter(|&m| chunk.ids.len() < m) {
            chunk.push_n(self.pad, min - chunk.ids.len());
        }
        chunks.push(chunk);
        Ok(chunks)
    }

    fn open(&self) -> TokenChunk {
        let mut chunk = TokenChunk {
            ids: Vec::new(),
            weights: Vec::new(),
        };
        if let Some(start) = self.start {
            chunk.push(start, 1.0);
        }
        chunk
    }
}

impl TokenChunk {
    fn push(&mut self, id: u32, weight: f64) {
        self.ids.push(id);
        self.weights.push(weight);
    }

    fn push_all(&mut self, ids: &[u32], weight: f64) {
        self.ids.extend_from_slice(ids);
        self.weights.extend(std::iter::repeat_n(weight, ids.len()));
    }

    fn push_n(&mut self, id: u32, n: usize) {
        self.ids.extend(std::iter::repeat_n(id, n));
        self.weights.extend(std::iter::repeat_n(1.0, n));
    }
}
