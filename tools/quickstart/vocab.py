"""Tokenizers of the quickstart's text encoders, and every caption of the dataset tokenized.

- CLIP-L: the real CLIP BPE (weft's nodes/models/data/bpe_simple_vocab_16e6.txt.gz) through transformers'
  CLIPTokenizer, framed as ComfyUI frames Flux's CLIP-L: <|startoftext|>, ids, <|endoftext|>,
  padded with <|endoftext|> to 77.
- T5: a T5-style SentencePiece unigram vocabulary made for the dataset's language: `<pad>`,
  `</s>`, `<unk>` (ids 0, 1, 2, as T5), one `▁word` piece per word of the language, the comma,
  and single characters as the fallback for other text; no normalizer. It ships inside the T5
  GGUF as `tokenizer.ggml.*` (tools/quickstart/export.py), where weft's CLIPLoaderGGUF reads it.
  Tokenized here with the `tokenizers` library configured as weft configures it
  (nodes/models/src/text/t5_tokenizer.rs): whitespace split, Metaspace `▁` prepended to every word,
  Unigram; framed as ComfyUI's Flux T5: ids, `</s>`, padded with `<pad>` to 256.

    python3 tools/quickstart/vocab.py --out .quickstart/tokens.json
"""
import argparse
import json
import os
import string
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import shapes  # noqa: E402

CLIP_LENGTH = 77
CLIP_BOS, CLIP_EOS = 49406, 49407
T5_MIN_LENGTH = 256
T5_PAD, T5_EOS, T5_UNK = 0, 1, 2


def language_words():
    words = {"a", "background"}
    for part in list(shapes.SIZES) + list(shapes.COLORS) + shapes.SHAPES + list(shapes.POSITIONS):
        words.update(part.split())
    return sorted(words)


def t5_pieces():
    """(piece, score, type) in id order; types as `tokenizer.ggml.token_type` (1 normal, 2 unknown,
    3 control)."""
    pieces = [("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2)]
    pieces += [("▁" + w, -2.0, 1) for w in language_words()]
    pieces += [(",", -3.0, 1), ("▁", -4.0, 1)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + ".-'!?"
    pieces += [(c, -10.0, 1) for c in chars]
    return pieces


def t5_tokenizer():
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import Unigram
    from tokenizers.pre_tokenizers import Metaspace, Sequence, WhitespaceSplit
    pieces = t5_pieces()
    tok = Tokenizer(Unigram([(p, s) for p, s, _ in pieces], unk_id=T5_UNK, byte_fallback=False))
    tok.pre_tokenizer = Sequence([WhitespaceSplit(), Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tok.add_special_tokens([AddedToken(p, special=True) for p, _, t in pieces if t in (2, 3)])
    return tok


def clip_tokenizer():
    import gen_text_encoder_fixtures as gt
    return gt.clip_tokenizer(tempfile.mkdtemp())


def comfy_words(text):
    """ComfyUI tokenizes a prompt word by word (split on spaces)."""
    return [w for w in text.replace("\n", " ").split(" ") if w]


def tokenize_all(captions):
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    out = {}
    for c in captions:
        clip_ids, t5_ids = [], []
        for w in comfy_words(c):
            clip_ids += clip(w, add_special_tokens=False)["input_ids"]
            t5_ids += t5.encode(w, add_special_tokens=False).ids
        out[c] = {"clip": [CLIP_BOS] + clip_ids + [CLIP_EOS], "t5": t5_ids + [T5_EOS]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    captions = shapes.all_captions()
    tokens = tokenize_all(captions)
    longest = max(len(t["clip"]) for t in tokens.values()), max(len(t["t5"]) for t in tokens.values())
    assert longest[0] <= CLIP_LENGTH and longest[1] <= T5_MIN_LENGTH, longest
    unk = sum(T5_UNK in t["t5"] for t in tokens.values())
    assert unk == 0, f"{unk} captions have <unk> pieces"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"captions": tokens, "t5_vocab": len(t5_pieces())}, f)
    print(f"{len(tokens)} captions, longest CLIP {longest[0]} / T5 {longest[1]} tokens, T5 vocabulary {len(t5_pieces())}")
    print(captions[1], tokens[captions[1]])


if __name__ == "__main__":
    main()
