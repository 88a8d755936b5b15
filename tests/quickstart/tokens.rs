//! weft's CLIP-L tokenizer (built-in BPE) and the T5 tokenizer rebuilt from the quickstart T5
//! GGUF's `tokenizer.ggml.*` frame the dataset's captions exactly as the trainer did
//! (tools/quickstart/vocab.py: transformers' CLIPTokenizer, the `tokenizers` library's Unigram).
use super::{json, model};
use weft_engine::formats::ModelFile;
use weft_models::text::{ClipTokenizer, T5Tokenizer};

/// `ids` without the trailing `pad` tokens.
fn unpadded(ids: &[u32], pad: u32) -> Vec<u32> {
    let end = ids.iter().rposition(|&t| t != pad).map_or(0, |i| i + 1);
    ids[..end].to_vec()
}

#[test]
fn captions_tokenize_as_in_training() {
    let clip = ClipTokenizer::builtin().unwrap();
    let t5 = match ModelFile::open(model("t5-shapes-Q8_0.gguf")).unwrap() {
        ModelFile::Gguf(file) => T5Tokenizer::from_gguf(&file).unwrap(),
        _ => panic!("t5-shapes-Q8_0.gguf is not a GGUF"),
    };
    let cases = json("tokens.json");
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 60);
    for case in cases {
        let caption = case["caption"].as_str().unwrap();
        let want = |key: &str| -> Vec<u32> {
            case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let clip_chunks = clip.tokenize_with_weights(caption).unwrap();
        assert_eq!(clip_chunks.len(), 1, "{caption:?}");
        assert_eq!(clip_chunks[0].ids.len(), 77);
        // The trainer's ids end at the first <|endoftext|>; ComfyUI pads with more of them.
        let eos = clip.end_token();
        let first_eos = clip_chunks[0].ids.iter().position(|&t| t == eos).unwrap();
        assert_eq!(
            clip_chunks[0].ids[..=first_eos],
            want("clip")[..],
            "CLIP ids of {caption:?}"
        );
        assert!(clip_chunks[0].ids[first_eos..].iter().all(|&t| t == eos));

        let t5_chunks = t5.tokenize_with_weights(caption, 256).unwrap();
        assert_eq!(t5_chunks.len(), 1, "{caption:?}");
        assert_eq!(t5_chunks[0].ids.len(), 256);
        let got = unpadded(&t5_chunks[0].ids, t5.pad_token());
        assert_eq!(got, want("t5"), "T5 ids of {caption:?}");
        assert!(!got.contains(&2), "<unk> in {caption:?}");
    }
}
