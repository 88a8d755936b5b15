#!/usr/bin/env python3
"""Generate the text-encoder fixtures (CLIP-L and T5 tokenizers and encoders), with transformers
(and sentencepiece, as a second opinion on T5) as the reference.

Run from the repository root (CPU is enough; about half a minute):

    python3 tools/gen_text_encoder_fixtures.py                 # rewrite tests/fixtures/text
    python3 tools/gen_text_encoder_fixtures.py --out /tmp/fx   # write elsewhere (then diff -r)

Requirements (written against): torch 2.15 (CPU), transformers 5.24, tokenizers 0.23,
sentencepiece 0.2.3 (protobuf for its model proto), gguf 0.19.0, numpy, safetensors.
Every output is seeded; re-running rewrites the same values.

Vocabularies (shipped as data in nodes/models/data, read here from there):
- `bpe_simple_vocab_16e6.txt.gz`: OpenAI's CLIP BPE merges, copied from the PyPI wheel
  open_clip_torch 3.3.0 (`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT). The Hugging Face files are
  derived from it as OpenAI's `SimpleTokenizer` does: merges = lines[1 : 49152-256-2+1] (48894);
  vocab = the 256 byte-level symbols (GPT-2's bytes_to_unicode order), the same with `</w>`, one
  token per merge (the pair joined), then `<|startoftext|>` (49406) and `<|endoftext|>` (49407).
  merges.txt = "#version: 0.2" plus those merges; it equals the merges file transformers ships for
  openai/clip-vit-large-patch14 (checked against the copy embedded in stable-diffusion.cpp).
- `t5_tokenizer.json.gz`: the Hugging Face tokenizer.json of google/t5-v1_1-xxl (32000 SentencePiece
  pieces + 100 `<extra_id_N>`, the nmt_nfkc precompiled charsmap; Apache-2.0), extracted from the
  byte array `t5_tokenizer_json_str` in stable-diffusion.cpp's `src/tokenizers/vocab/clip_t5.hpp`,
  as vendored in the PyPI sdist stable-diffusion-cpp-python 0.4.7 (MIT).

References:
- CLIP: `transformers.CLIPTokenizer.from_pretrained(dir)` on the derived vocab.json/merges.txt
  (what ComfyUI's `sd1_tokenizer` folder holds).
- T5: `transformers.T5TokenizerFast.from_pretrained(dir)` on the tokenizer.json (what ComfyUI's
  `t5_tokenizer` folder holds). transformers 5 rebuilds its pipeline from the vocabulary (Precompiled
  normalizer; WhitespaceSplit + Metaspace); the script also reports how often the file's own pipeline
  (transformers 4's behaviour) and sentencepiece itself (a ModelProto rebuilt from the same pieces)
  disagree with it, so that the choice is visible.
- ComfyUI's prompt handling (`escape_important`, `token_weights`, `parse_parentheses`, the
  `tokenize_with_weights` batching of comfy/sd1_clip.py, and flux.py's T5XXLTokenizer settings) is
  re-stated below in `comfy_*` functions, driven by the transformers tokenizers.

What it writes (relative to tests/fixtures/text/):

prompts.json        {"cases": [...]}; per prompt: `clip` / `t5` = the tokenizers' input_ids (special
                    tokens included), `segments` = token_weights' [text, weight] pairs, and
                    `clip_chunks` / `t5_chunks` = ComfyUI's batches, each {"ids", "weights" (only
                    when some weight is not 1.0), "pad": how many pad tokens (weight 1.0) follow}.
t5_tokenizer.gguf   no tensors; `tokenizer.ggml.*` as llama.cpp's convert_hf_to_gguf.py writes them
                    for T5 (model "t5", tokens, scores, token_type, precompiled_charsmap, special ids).
clip_l.safetensors  tiny CLIPTextModel in transformers naming (`text_model.encoder.layers.N...`), f32.
clip_l.gguf         the same names in GGUF: F32 for 1-D and <= 1024-element tensors, F16 for the
                    embeddings and fc1, Q8_0 for attention projections and fc2.
t5.safetensors      tiny T5EncoderModel (v1.1: gated-gelu, untied RMSNorm) in transformers naming, f32.
t5.gguf             the same weights in llama.cpp naming (`token_embd`, `enc.blk.N.attn_q`, ...,
                    `enc.blk.0.attn_rel_b`, `enc.output_norm`), general.architecture = "t5encoder",
                    F32 norms and bias table, F16 embedding, Q8_0 attention, Q8_0/F16 FFN.
reference.safetensors  inputs and transformers outputs (f32), computed from the exact values weft
                    reads (the GGUF models' dequantized weights for the `*.gguf.*` entries):
                    `clip.ids` [2,77] (i64 stored as f32), `clip.{st,gguf}.{last,penultimate,
                    penultimate_normed,pooled}`; `t5.ids_short` [2,12], `t5.ids_long` [1,150],
                    `t5.{st,gguf}.{short,long}`.
"""
import argparse
import gzip
import json
import os
import random
import tempfile

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel,
                          T5TokenizerFast)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "nodes", "data")

# ---------------------------------------------------------------------------------------------
# Tokenizers


def bytes_to_unicode():
    """GPT-2's byte → printable-character table, in its order (CLIP's vocabulary starts with it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer(tmp):
    lines = gzip.open(os.path.join(DATA, "bpe_simple_vocab_16e6.txt.gz")).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    d = os.path.join(tmp, "clip")
    os.makedirs(d)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(d)


def t5_tokenizer_json():
    return json.loads(gzip.open(os.path.join(DATA, "t5_tokenizer.json.gz")).read())


def t5_tokenizer(tmp, spec):
    d = os.path.join(tmp, "t5")
    os.makedirs(d)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    return T5TokenizerFast.from_pretrained(d)


def t5_charsmap(spec):
    import base64
    (pre,) = [n for n in spec["normalizer"]["normalizers"] if n["type"] == "Precompiled"]
    return base64.b64decode(pre["precompiled_charsmap"])


def sentencepiece_t5(spec):
    """sentencepiece's own processor over a ModelProto rebuilt from the tokenizer.json pieces."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.unk_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id, m.trainer_spec.bos_id = 2, 1, 0, -1
    m.normalizer_spec.name = "nmt_nfkc"
    m.normalizer_spec.precompiled_charsmap = t5_charsmap(spec)
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = True
    m.normalizer_spec.escape_whitespaces = True
    for i, (piece, score) in enumerate(spec["model"]["vocab"][:32000]):
        p = m.pieces.add()
        p.piece, p.score = piece, score
        p.type = {0: pb.ModelProto.SentencePiece.CONTROL, 1: pb.ModelProto.SentencePiece.CONTROL,
                  2: pb.ModelProto.SentencePiece.UNKNOWN}.get(i, pb.ModelProto.SentencePiece.NORMAL)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return lambda text: sp.EncodeAsIds(text) + [1]


def write_t5_tokenizer_gguf(path, spec):
    """tokenizer.ggml.* as llama.cpp's convert_hf_to_gguf.py (T5 set_vocab) writes them: the
    SentencePiece pieces with their scores, the added `<extra_id_N>` tokens with score -1000 and
    type USER_DEFINED, then `[PAD{i}]` (score -1000, UNUSED) up to the embedding's 32128 rows."""
    w = GGUFWriter(path, "t5encoder")
    pieces = [(p, float(s)) for p, s in spec["model"]["vocab"][:32000]]
    pieces += [(p, -1000.0) for p, _ in spec["model"]["vocab"][32000:]]
    # SentencePiece types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused.
    types = [3, 3, 2] + [1] * (32000 - 3) + [4] * (len(pieces) - 32000)
    for i in range(len(pieces), 32128):
        pieces.append(("[PAD%d]" % i, -1000.0))
        types.append(5)
    w.add_tokenizer_model("t5")
    w.add_token_list([p for p, _ in pieces])
    w.add_token_scores([s for _, s in pieces])
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_remove_extra_whitespaces(True)
    w.add_precompiled_charsmap(t5_charsmap(spec))
    w.add_pad_token_id(0)
    w.add_eos_token_id(1)
    w.add_unk_token_id(2)
    w.add_add_bos_token(False)
    w.add_add_eos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------------
# ComfyUI's prompt handling (comfy/sd1_clip.py, comfy/text_encoders/flux.py), re-stated.


def comfy_parse_parentheses(string):
    result, current, depth = [], "", 0
    for ch in string:
        if ch == "(":
            if depth == 0:
                if current:
                    result.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                result.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        result.append(current)
    return result


def comfy_token_weights(string, weight):
    out = []
    for x in comfy_parse_parentheses(string):
        w = weight
        if len(x) >= 2 and x[-1] == ")" and x[0] == "(":
            x = x[1:-1]
            colon = x.rfind(":")
            w *= 1.1
            if colon > 0:
                try:
                    w = float(x[colon + 1:])
                    x = x[:colon]
                except ValueError:
                    pass
            out += comfy_token_weights(x, w)
        else:
            out += [(x, weight)]
    return out


def comfy_segments(text):
    text = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    return [(s.replace("\0\1", ")").replace("\0\2", "("), w) for s, w in comfy_token_weights(text, 1.0)]


class ComfyLayout:
    def __init__(self, tok, has_start, pad_with_end, max_length, pad_to_max, min_length):
        import re
        self.re = re
        empty = tok("")["input_ids"]
        self.tok = tok
        self.start = empty[0] if has_start else None
        self.end = empty[1] if has_start else empty[0]
        self.tokens_start = 1 if has_start else 0
        self.pad = self.end if pad_with_end else 0
        self.max_length, self.pad_to_max, self.min_length = max_length, pad_to_max, min_length

    def tokenize_with_weights(self, text):
        groups = []
        for segment, weight in comfy_segments(text):
            parts = self.re.split(" embedding:|\nembedding:", segment)
            words = [parts[0]] + ["embedding:" + p for p in parts[1:]]
            for word in (w for w in words if w != ""):
                groups.append([(t, weight) for t in self.tok(word)["input_ids"][self.tokens_start:-1]])
        batches, batch = [], []
        if self.start is not None:
            batch.append((self.start, 1.0))
        batches.append(batch)
        for group in groups:
            is_large = len(group) >= 8
            while group:
                if len(group) + len(batch) > self.max_length - 1:
                    remaining = self.max_length - len(batch) - 1
                    if is_large:
                        batch.extend(group[:remaining])
                        batch.append((self.end, 1.0))
                        group = group[remaining:]
                    else:
                        batch.append((self.end, 1.0))
                        if self.pad_to_max:
                            batch.extend([(self.pad, 1.0)] * remaining)
                    batch = []
                    if self.start is not None:
                        batch.append((self.start, 1.0))
                    batches.append(batch)
                else:
                    batch.extend(group)
                    group = []
        batch.append((self.end, 1.0))
        if self.pad_to_max and len(batch) < self.max_length:
            batch.extend([(self.pad, 1.0)] * (self.max_length - len(batch)))
        if self.min_length is not None and len(batch) < self.min_length:
            batch.extend([(self.pad, 1.0)] * (self.min_length - len(batch)))
        return batches


def compact(chunk, pad):
    """A batch as {"ids", "weights" (omitted when all 1.0), "pad": trailing pad tokens trimmed}."""
    n = len(chunk)
    while n > 0 and chunk[n - 1] == (pad, 1.0):
        n -= 1
    out = {"ids": [t for t, _ in chunk[:n]], "pad": len(chunk) - n}
    if any(w != 1.0 for _, w in chunk):
        out["weights"] = [w for _, w in chunk[:n]]
    return out


# ---------------------------------------------------------------------------------------------
# The prompt corpus


HANDWRITTEN = [
    "", " ", "a", "A photo of a cat", "a photo of a cat, highly detailed, 8k, trending on artstation",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
    "A cinematic shot of a baby racoon wearing an intricate italian priest robe.",
    "The quick brown fox jumps over the lazy dog.", "HELLO World", "It's a dog's life; we'll see, they've gone, I'm here, you're there, he'd go",
    "don't can't won't shouldn't", "rock'n'roll", "'quoted' \"double quoted\" `backticks`",
    "numbers 1234567890 3.14159 1e10 -42 +7 100% $5.99 #1 @user", "2024-01-01T12:00:00Z",
    "email@example.com https://example.com/path?q=1&r=2#frag", "C:\\Users\\name\\file.txt", "a/b\\c|d",
    "tabs\tand\nnewlines\r\nand   multiple    spaces", "  leading and trailing spaces  ", "\n\nnewlines only\n",
    "café naïve résumé façade jalapeño Ångström", "Straße Æsir œuvre ﬁnancial ﬂower", "ÀÉÎÕÜ àéîõü", "e\u0301 composed vs é",
    "日本語のテキスト、富士山と桜", "中文提示词：一只可爱的猫", "한국어 프롬프트 고양이", "Русский текст: кот на крыше",
    "Ελληνικά γράμματα αβγ", "עברית שלום", "العربية مرحبا", "हिन्दी नमस्ते", "ไทย สวัสดี", "tiếng Việt xin chào",
    "emoji 😀😃😄 🐱 🐶 🚀", "family 👨‍👩‍👧‍👦 and flags 🇯🇵🇺🇸 and skin 👍🏽", "❤️ ✨ ★ ☆ ♥ ⚡", "math ∑∫√∞≠≤≥ π θ",
    "fullwidth ＡＢＣ １２３ ｶﾀｶﾅ", "ligature ﬀ ﬃ and ① ② ③ and ½ ¼", "superscript x² y³ and subscript H₂O", "™ © ® ℃ № ℡",
    "zero\u200bwidth\u200cjoiner\u200d", "soft\u00adhyphen", "nbsp\u00a0space\u2003em\u3000ideographic", "control\x07bell\x1bescape",
    "<|startoftext|> inside <|endoftext|> text", "</s> and <pad> and <unk> and <extra_id_0>", "<extra_id_99><extra_id_5>",
    "(masterpiece:1.2), (best quality:1.4), (ultra-detailed), ((sharp focus))", "(word)", "((word))", "(((word)))",
    "(word:1.5)", "(word:0.5)", "(word:0)", "(word:-1)", "(word:2.0) and (other:0.8)", "(a (nested:1.3) group:0.9)",
    "(a (b (c:1.5) d) e)", "\\(escaped\\) parentheses", "\\(not weighted:1.5\\)", "(mixed \\(escape\\) inside:1.2)",
    "unbalanced ( open", "unbalanced ) close", ") starts with close", "((double open", "(open: 1.2", "close: 1.2)",
    "(word:abc)", "(word:)", "(:1.2)", "(a:b:1.3)", "(time: 12:30:1.1)", "(word: 1.25 )", "(word:1e-1)", "(word:1_5)",
    "(word:.5)", "(word:5.)", "[word]", "[[word]]", "[word:1.2]", "{word}", "(word)(word)", "()", "( )", "(())",
    "a (cat:1.2) and a (dog:0.8) in a (garden), [misty] morning", "embedding:my_style a cat", "a cat embedding:my_style, photo",
    "a cat\nembedding:foo bar", "(embedding:thing:1.2)", "photo\n(portrait:1.3)\nlandscape",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis " * 3, "a" * 300, "ab " * 40, "!!!???...,,,;;;:::", "----====____++++",
    "<html><body>tags</body></html>", "{\"json\": [1, 2, 3]}", "snake_case camelCase PascalCase kebab-case",
    "UPPER lower MiXeD", "l33t sp34k h4x0r", "x" * 77, "word " * 76, "word " * 75, "tok " * 150, "the " * 300,
]

VOCAB_WORDS = (
    "a an the photo painting portrait of cat dog woman man girl boy castle forest city night day sunset sunrise mountain "
    "river ocean sky cloud rain snow fire dragon robot car house tree flower garden street neon light shadow detailed "
    "intricate cinematic dramatic soft volumetric lighting 8k 4k hdr bokeh depth field wide angle lens 35mm 85mm f/1.8 "
    "oil watercolor sketch anime manga realistic photorealistic hyperrealistic surreal abstract style by greg rutkowski "
    "alphonse mucha artgerm wlop trending artstation masterpiece best quality ultra high resolution sharp focus octane "
    "render unreal engine blender colorful vibrant pastel dark moody golden hour blue red green yellow purple orange"
).split()
EXOTIC = ["café", "日本", "猫", "кот", "😀", "🐱", "👨‍👩‍👧", "ß", "ﬁ", "①", "½", "Ω", "é", "ñ", "ø", "—", "…", "“quoted”", "’s"]


def generated_prompts(rng, n):
    out = []
    for i in range(n):
        words = []
        for _ in range(rng.randint(1, 60 if i % 5 else 160)):
            r = rng.random()
            if r < 0.08:
                w = rng.choice(EXOTIC)
            else:
                w = rng.choice(VOCAB_WORDS)
            r = rng.random()
            if r < 0.06:
                w = "(%s:%s)" % (w, rng.choice(["1.1", "1.2", "1.3", "0.7", "0.9", "1.45", "2"]))
            elif r < 0.09:
                w = "(" + w + ")"
            elif r < 0.10:
                w = "((" + w + "))"
            elif r < 0.11:
                w = "[" + w + "]"
            elif r < 0.12:
                w = w.capitalize()
            words.append(w)
        sep = rng.choice([" ", ", ", " ", ",", "  ", " | "])
        out.append(sep.join(words))
    return out


# ---------------------------------------------------------------------------------------------
# Models


def store(arr, qtype):
    """(bytes for GGUFWriter, the values weft will read) for `arr` stored as `qtype`."""
    if qtype == T.F32:
        return arr, arr
    if qtype == T.F16:
        h = arr.astype(np.float16)
        return h, h.astype(np.float32)
    q = quantize(arr, qtype)
    return q, dequantize(q, qtype).reshape(arr.shape).astype(np.float32)


def write_gguf(path, arch, weights, choose_type):
    """Writes `weights` {gguf name: array}; returns the dequantized values by name."""
    w = GGUFWriter(path, arch)
    seen = {}
    for name, arr in weights.items():
        qtype = choose_type(name, arr)
        data, values = store(arr, qtype)
        w.add_tensor(name, data, raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
        seen[name] = values
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return seen


def randomize(model, seed):
    """Weights with a spread that keeps activations O(1) through every layer (norm scales near 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layer_norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                scale = 1.0 if "embed" in name or "shared" in name or "relative_attention_bias" in name else fan_in ** -0.5
                p.copy_(scale * torch.randn(p.shape, generator=g))


def clip_model():
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, bos_token_id=998, eos_token_id=2, pad_token_id=1)
    model = CLIPTextModel(cfg).eval().float()
    randomize(model, 7)
    return model


def clip_types(name, arr):
    if arr.ndim == 1 or arr.size <= 1024:
        return T.F32
    if "embedding" in name or "fc1" in name:
        return T.F16
    return T.Q8_0


def clip_outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        pen = out.hidden_states[-2]
        return {
            "last": out.last_hidden_state,
            "penultimate": pen,
            "penultimate_normed": model.final_layer_norm(pen),
            "pooled": out.pooler_output,
        }


def t5_model():
    cfg = T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                   dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    model = T5EncoderModel(cfg).eval().float()
    randomize(model, 11)
    return model


T5_GGUF_NAMES = {
    "layer.0.layer_norm.weight": "attn_norm.weight",
    "layer.0.SelfAttention.q.weight": "attn_q.weight",
    "layer.0.SelfAttention.k.weight": "attn_k.weight",
    "layer.0.SelfAttention.v.weight": "attn_v.weight",
    "layer.0.SelfAttention.o.weight": "attn_o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "attn_rel_b.weight",
    "layer.1.layer_norm.weight": "ffn_norm.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn_gate.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn_up.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn_down.weight",
}


def t5_gguf_name(name):
    """transformers → llama.cpp naming (gguf-py tensor_mapping.py, MODEL_ARCH.T5ENCODER)."""
    if name == "shared.weight":
        return "token_embd.weight"
    if name == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    _, _, block, rest = name.split(".", 3)
    return "enc.blk.%s.%s" % (block, T5_GGUF_NAMES[rest])


def t5_types(name, arr):
    if arr.ndim == 1 or arr.size <= 1024 or "attn_rel_b" in name:
        return T.F32
    if name == "token_embd.weight" or "ffn_down" in name:
        return T.F16
    return T.Q8_0


def t5_state(model):
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    sd.pop("encoder.embed_tokens.weight")  # tied to shared.weight; real files keep `shared.weight`
    return sd


def load_into(model, values):
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()}
    if "shared.weight" in sd and "encoder.embed_tokens.weight" in model.state_dict():
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    model.load_state_dict(sd, strict=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "text"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp()

    # Tokenizers ------------------------------------------------------------------------------
    clip_tok = clip_tokenizer(tmp)
    spec = t5_tokenizer_json()
    t5_tok = t5_tokenizer(tmp, spec)
    from tokenizers import Tokenizer
    t5_file_pipeline = Tokenizer.from_str(json.dumps(spec))
    t5_spm = sentencepiece_t5(spec)
    clip_layout = ComfyLayout(clip_tok, has_start=True, pad_with_end=True, max_length=77, pad_to_max=True, min_length=None)
    t5_layout = ComfyLayout(t5_tok, has_start=False, pad_with_end=False, max_length=99999999, pad_to_max=False, min_length=256)

    rng = random.Random(20240607)
    prompts = HANDWRITTEN + generated_prompts(rng, 130)
    cases, differ_file, differ_spm = [], [], []
    for p in prompts:
        t5_ids = t5_tok(p)["input_ids"]
        if t5_file_pipeline.encode(p).ids != t5_ids:
            differ_file.append(p)
        if t5_spm(p) != t5_ids:
            differ_spm.append(p)
        clip_chunks = clip_layout.tokenize_with_weights(p)
        t5_chunks = t5_layout.tokenize_with_weights(p)
        cases.append({
            "prompt": p,
            "clip": clip_tok(p)["input_ids"],
            "t5": t5_ids,
            "segments": [[s, w] for s, w in comfy_segments(p)],
            "clip_chunks": [compact(c, clip_layout.pad) for c in clip_chunks],
            "t5_chunks": [compact(c, t5_layout.pad) for c in t5_chunks],
        })
    with open(os.path.join(args.out, "prompts.json"), "w") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
    print("prompts: %d; T5 ids differing from tokenizer.json's own pipeline: %d, from sentencepiece: %d"
          % (len(prompts), len(differ_file), len(differ_spm)))
    for p in differ_file[:8]:
        print("  file pipeline differs:", repr(p[:60]))
    for p in differ_spm[:8]:
        print("  sentencepiece differs:", repr(p[:60]))
    write_t5_tokenizer_gguf(os.path.join(args.out, "t5_tokenizer.gguf"), spec)

    # Models ----------------------------------------------------------------------------------
    ref = {}
    torch.manual_seed(3)

    clip = clip_model()
    # transformers 5 names the module's keys without the `text_model.` that checkpoints carry
    # (openai/clip-vit-large-patch14, ComfyUI's clip_l.safetensors); files get the checkpoint names.
    clip_sd = {"text_model." + k: v.detach().numpy().astype(np.float32) for k, v in clip.state_dict().items()
               if not k.endswith("position_ids")}
    save_file(clip_sd, os.path.join(args.out, "clip_l.safetensors"))
    ids = torch.randint(0, 998, (2, 77), generator=torch.Generator().manual_seed(5))
    ids[:, 0] = 998                 # "start" token
    ids[0, 9:] = 999                # EOS (the largest id) then EOS padding, as ComfyUI pads
    ids[1, 40] = 999                # one EOS mid-sequence, pad with 0 after it
    ids[1, 41:] = 0
    ref["clip.ids"] = ids.float().numpy()
    for k, v in clip_outputs(clip, ids).items():
        ref["clip.st." + k] = v.numpy()
    clip_deq = write_gguf(os.path.join(args.out, "clip_l.gguf"), "clip", clip_sd, clip_types)
    load_into(clip, {k.removeprefix("text_model."): v for k, v in clip_deq.items()})
    for k, v in clip_outputs(clip, ids).items():
        ref["clip.gguf." + k] = v.numpy()

    t5 = t5_model()
    t5_sd = t5_state(t5)
    save_file(t5_sd, os.path.join(args.out, "t5.safetensors"))
    g = torch.Generator().manual_seed(9)
    short = torch.randint(0, 300, (2, 12), generator=g)
    long = torch.randint(0, 300, (1, 150), generator=g)
    ref["t5.ids_short"] = short.float().numpy()
    ref["t5.ids_long"] = long.float().numpy()
    with torch.no_grad():
        ref["t5.st.short"] = t5(input_ids=short).last_hidden_state.numpy()
        ref["t5.st.long"] = t5(input_ids=long).last_hidden_state.numpy()
    t5_deq = write_gguf(os.path.join(args.out, "t5.gguf"), "t5encoder",
                        {t5_gguf_name(k): v for k, v in t5_sd.items()}, t5_types)
    back = {k: t5_deq[t5_gguf_name(k)] for k in t5_sd}
    load_into(t5, back)
    with torch.no_grad():
        ref["t5.gguf.short"] = t5(input_ids=short).last_hidden_state.numpy()
        ref["t5.gguf.long"] = t5(input_ids=long).last_hidden_state.numpy()

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ref.items()},
              os.path.join(args.out, "reference.safetensors"))
    for name in sorted(os.listdir(args.out)):
        print("%-24s %9d bytes" % (name, os.path.getsize(os.path.join(args.out, name))))


if __name__ == "__main__":
    main()
