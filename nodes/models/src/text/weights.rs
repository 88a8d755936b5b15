//! ComfyUI's prompt-weight syntax: `(word:1.2)` sets a weight, `(word)` multiplies by 1.1 per
//! level, `\(` and `\)` are literal parentheses. A port of `escape_important`, `parse_parentheses`
//! and `token_weights` in ComfyUI's `comfy/sd1_clip.py`, quirks included, so a prompt weighs the
//! same here as there.
//!
//! ComfyUI gives square brackets no meaning (A1111's `[word]` down-weighting is not ComfyUI
//! syntax): `[word]` is literal text here too. Unbalanced parentheses never fail: they stay in the
//! text as ComfyUI leaves them.

/// Stand-ins for escaped parentheses while parsing (ComfyUI uses the same two control pairs).
const ESCAPED_CLOSE: &str = "\0\u{1}";
const ESCAPED_OPEN: &str = "\0\u{2}";

/// Splits `prompt` into `(text, weight)` segments, in order. Weights are `f64` as in ComfyUI
/// (Python floats), so nested `((word))` gives exactly `1.1 * 1.1`.
///
/// ```
/// use weft_models::text::weights::parse_weights;
/// let s = parse_weights("a (cat:1.2) and ((dog))");
/// assert_eq!(s[0], ("a ".to_string(), 1.0));
/// assert_eq!(s[1], ("cat".to_string(), 1.2));
/// assert_eq!(s[3], ("dog".to_string(), 1.1 * 1.1));
/// ```
pub fn parse_weights(prompt: &str) -> Vec<(String, f64)> {
    let escaped = prompt
        .replace("\\)", ESCAPED_CLOSE)
        .replace("\\(", ESCAPED_OPEN);
    let mut out = Vec::new();
    token_weights(&escaped, 1.0, &mut out);
    for (text, _) in &mut out {
        if text.contains('\0') {
            *text = text.replace(ESCAPED_CLOSE, ")").replace(ESCAPED_OPEN, "(");
        }
    }
    out
}

fn token_weights(text: &str, weight: f64, out: &mut Vec<(String, f64)>) {
    for part in parse_parentheses(text) {
        if part.len() >= 2 && part.starts_with('(') && part.ends_with(')') {
            let inner = &part[1..part.len() - 1];
            let mut inner_weight = weight * 1.1;
            let mut inner_text = inner;
            // ComfyUI: the last ':' (not at position 0) starts a weight if Python's float() takes it.
            let colon = inner.rfind(':').filter(|&c| c > 0);
            if let Some((colon, w)) = colon.and_then(|c| Some((c, python_float(&inner[c + 1..])?)))
            {
                inner_weight = w;
                inner_text = &inner[..colon];
            }
            token_weights(inner_text, inner_weight, out);
        } else {
            out.push((part.to_string(), weight));
        }
    }
}

/// Top-level parenthesized groups and the text between them (ComfyUI's `parse_parentheses`).
/// A `)` without its `(` drives the depth negative, as in ComfyUI, and stays in the text.
fn parse_parentheses(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut depth: i64 = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => {
                if depth == 0 {
                    if i > start {
                        parts.push(&text[start..i]);
                    }
                    start = i;
                }
                depth += 1;
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    parts.push(&text[start..=i]);
                    start = i + 1;
                }
            }
            _ => {}
        }
    }
    if start < text.len() {
        parts.push(&text[start..]);
    }
    parts
}

/// Python's `float(s)` for the forms a prompt can hold: surrounding whitespace, a sign, digits
/// with single `_` between them, `.5`, `5.`, exponents, `inf`/`infinity`/`nan` in any case.
/// (Non-ASCII digits, which Python also accepts, are refused.)
pub fn python_float(s: &str) -> Option<f64> {
    // Python's str.strip() also strips the ASCII separators \x1c-\x1f, which Rust's trim keeps.
    let s = s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c));
    if s.is_empty() {
        return None;
    }
    let cleaned;
    let s = if s.contains('_') {
        let bytes = s.as_bytes();
        let ok = bytes.iter().enumerate().all(|(i, &b)| {
            b != b'_'
                || (i > 0
                    && i + 1 < bytes.len()
                    && bytes[i - 1].is_ascii_digit()
                    && bytes[i + 1].is_ascii_digit())
        });
        if !ok {
            return None;
        }
        cleaned = s.replace('_', "");
        cleaned.as_str()
    } else {
        s
    };
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return s.parse().ok();
    }
    // Rust's parser accepts exactly Python's numeric grammar once the specials are handled
    // (digits, one '.', an exponent); it refuses "1e", ".", "e5" as Python does.
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse().ok()
}

/// ComfyUI's split of a segment before tokenizing: at every `" embedding:"` or
/// `"\nembedding:"`, keeping `"embedding:"` on the following piece; empty pieces are dropped.
/// (Without an embeddings folder, ComfyUI then tokenizes each piece as text, as weft does.)
pub fn split_embedding_words(segment: &str) -> Vec<&str> {
    const IDENT: &str = "embedding:";
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let bytes = segment.as_bytes();
    while i < bytes.len() {
        if (bytes[i] == b' ' || bytes[i] == b'\n') && segment[i + 1..].starts_with(IDENT) {
            pieces.push(&segment[start..i]);
            start = i + 1;
            i += 1 + IDENT.len();
        } else {
            i += 1;
        }
    }
    pieces.push(&segment[start..]);
    pieces.retain(|p| !p.is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<(String, f64)> {
        parse_weights(s)
    }

    #[test]
    fn comfy_quirks() {
        assert_eq!(w("(word)"), vec![("word".into(), 1.1)]);
        assert_eq!(w("(a:b:1.3)"), vec![("a:b".into(), 1.3)]);
        assert_eq!(w("(:1.2)"), vec![(":1.2".into(), 1.1)]);
        assert_eq!(w("(word:abc)"), vec![("word:abc".into(), 1.1)]);
        assert_eq!(w("\\(x:2\\)"), vec![("(x:2)".into(), 1.0)]);
        assert_eq!(w(") a (b"), vec![(") a (b".into(), 1.0)]);
        assert_eq!(w("()"), vec![]);
        assert_eq!(w("[word]"), vec![("[word]".into(), 1.0)]);
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(" 1.25 "), Some(1.25));
        assert_eq!(python_float("1_5"), Some(15.0));
        assert_eq!(python_float("1__5"), None);
        assert_eq!(python_float("_1"), None);
        assert_eq!(python_float(".5"), Some(0.5));
        assert_eq!(python_float("5."), Some(5.0));
        assert_eq!(python_float("-1e-1"), Some(-0.1));
        assert_eq!(python_float("Infinity"), Some(f64::INFINITY));
        assert_eq!(python_float("1e"), None);
        assert_eq!(python_float(""), None);
        assert_eq!(python_float("0x10"), None);
    }

    #[test]
    fn embedding_split() {
        assert_eq!(
            split_embedding_words("a cat embedding:x, photo"),
            vec!["a cat", "embedding:x, photo"]
        );
        assert_eq!(split_embedding_words("embedding:x"), vec!["embedding:x"]);
        assert_eq!(
            split_embedding_words("a\nembedding:x b"),
            vec!["a", "embedding:x b"]
        );
    }
}
