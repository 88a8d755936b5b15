//! Where things are in a workflow's source text: a lenient RON scanner that records the line and
//! column of every struct field and map entry by its key path (`nodes` → `sampler` → `params` →
//! `seed`). ron parses the file; this only points messages at the right spot.
use std::fmt;

/// A 1-based line and column (columns count characters, as ron's do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Open(char),
    Close(char),
    Colon,
    Comma,
    Str(String),
    Word(String),
    Other,
}

struct Token {
    tok: Tok,
    pos: Pos,
}

/// An entry of the index: a key path, where its key starts and where its value starts.
struct Entry {
    path: Vec<String>,
    key: Pos,
    value: Pos,
}

/// Positions of every field and map entry of a RON document, by key path.
pub(crate) struct Locator {
    entries: Vec<Entry>,
}

impl Locator {
    /// Indexes `source`; never fails (text it does not understand is skipped).
    pub(crate) fn new(source: &str) -> Self {
        let tokens = tokenize(source);
        let mut parser = Parser {
            tokens: &tokens,
            at: 0,
            entries: Vec::new(),
        };
        let mut path = Vec::new();
        while parser.at < parser.tokens.len() {
            parser.value(&mut path, 0);
        }
        Locator {
            entries: parser.entries,
        }
    }

    /// The key and value positions of the `nth` (from 0) occurrence of `path`.
    pub(crate) fn find_nth(&self, path: &[&str], nth: usize) -> Option<(Pos, Pos)> {
        self.entries
            .iter()
            .filter(|e| e.path.len() == path.len() && e.path.iter().zip(path).all(|(a, b)| a == b))
            .nth(nth)
            .map(|e| (e.key, e.value))
    }
}

const MAX_DEPTH: usize = 128;

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
    entries: Vec<Entry>,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.at)
    }

    fn peek_is(&self, offset: usize, tok: &Tok) -> bool {
        self.tokens
            .get(self.at + offset)
            .is_some_and(|t| &t.tok == tok)
    }

    fn value(&mut self, path: &mut Vec<String>, depth: usize) {
        let Some(token) = self.peek() else { return };
        if depth > MAX_DEPTH {
            self.at = self.tokens.len();
            return;
        }
        match &token.tok {
            Tok::Word(w) if w.starts_with('#') => {
                // An attribute, `#![enable(implicit_some)]`: skip its bracketed body.
                self.at += 1;
                if self.peek_is(0, &Tok::Open('[')) {
                    self.skip_group();
                }
            }
            Tok::Word(_) => {
                self.at += 1;
                if self.peek_is(0, &Tok::Open('(')) {
                    self.fields(path, depth);
                }
            }
            Tok::Open('(') => self.fields(path, depth),
            Tok::Open('{') => self.map(path, depth),
            Tok::Open('[') => self.list(path, depth),
            _ => self.at += 1,
        }
    }

    fn skip_group(&mut self) {
        let mut depth = 0usize;
        while let Some(token) = self.peek() {
            self.at += 1;
            match token.tok {
                Tok::Open(_) => depth += 1,
                Tok::Close(_) => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    fn record(&mut self, path: &[String], key: Pos) {
        let value = self.peek().map_or(key, |t| t.pos);
        self.entries.push(Entry {
            path: path.to_vec(),
            key,
            value,
        });
    }

    /// `( name: value, … )` or `( value, … )`.
    fn fields(&mut self, path: &mut Vec<String>, depth: usize) {
        self.at += 1;
        let mut index = 0usize;
        while let Some(token) = self.peek() {
            if matches!(token.tok, Tok::Close(_)) {
                self.at += 1;
                return;
            }
            let start = self.at;
            match &token.tok {
                Tok::Word(name) if self.peek_is(1, &Tok::Colon) => {
                    let (name, key) = (name.clone(), token.pos);
                    self.at += 2;
                    path.push(name);
                    self.record(path, key);
                }
                _ => path.push(index.to_string()),
            }
            self.value(path, depth + 1);
            path.pop();
            index += 1;
            self.after_item(start);
        }
    }

    /// `{ key: value, … }`.
    fn map(&mut self, path: &mut Vec<String>, depth: usize) {
        self.at += 1;
        while let Some(token) = self.peek() {
            if matches!(token.tok, Tok::Close(_)) {
                self.at += 1;
                return;
            }
            let start = self.at;
            let key = token.pos;
            let name = match &token.tok {
                Tok::Str(s) | Tok::Word(s) => {
                    let s = s.clone();
                    self.at += 1;
                    s
                }
                _ => {
                    self.value(path, depth + 1);
                    String::new()
                }
            };
            if self.peek_is(0, &Tok::Colon) {
                self.at += 1;
            }
            path.push(name);
            self.record(path, key);
            self.value(path, depth + 1);
            path.pop();
            self.after_item(start);
        }
    }

    /// `[ value, … ]`.
    fn list(&mut self, path: &mut Vec<String>, depth: usize) {
        self.at += 1;
        let mut index = 0usize;
        while let Some(token) = self.peek() {
            if matches!(token.tok, Tok::Close(_)) {
                self.at += 1;
                return;
            }
            let start = self.at;
            path.push(index.to_string());
            self.value(path, depth + 1);
            path.pop();
            index += 1;
            self.after_item(start);
        }
    }

    /// Eats the separating comma; guarantees progress on text it does not understand.
    fn after_item(&mut self, start: usize) {
        if self.peek_is(0, &Tok::Comma) || self.at == start {
            self.at += 1;
        }
    }
}

struct Chars<'s> {
    chars: std::iter::Peekable<std::str::Chars<'s>>,
    pos: Pos,
}

impl Chars<'_> {
    fn next(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn peek2(&self) -> Option<char> {
        self.chars.clone().nth(1)
    }
}

fn tokenize(source: &str) -> Vec<Token> {
    let mut chars = Chars {
        chars: source.chars().peekable(),
        pos: Pos { line: 1, col: 1 },
    };
    let mut tokens = Vec::new();
    while let Some(c) = chars.peek() {
        let pos = chars.pos;
        let tok = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '/' if chars.peek2() == Some('/') => {
                while chars.peek().is_some_and(|c| c != '\n') {
                    chars.next();
                }
                continue;
            }
            '/' if chars.peek2() == Some('*') => {
                block_comment(&mut chars);
                continue;
            }
            '(' | '[' | '{' => {
                chars.next();
                Tok::Open(c)
            }
            ')' | ']' | '}' => {
                chars.next();
                Tok::Close(c)
            }
            ':' => {
                chars.next();
                Tok::Colon
            }
            ',' => {
                chars.next();
                Tok::Comma
            }
            '"' => {
                chars.next();
                Tok::Str(quoted(&mut chars, '"'))
            }
            '\'' => {
                chars.next();
                quoted(&mut chars, '\'');
                Tok::Other
            }
            'r' | 'b' if matches!(chars.peek2(), Some('"' | '#')) => raw_or_byte_string(&mut chars),
            _ => {
                let mut word = String::new();
                while let Some(c) = chars.peek() {
                    if c.is_whitespace() || "()[]{}:,\"'".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                Tok::Word(word)
            }
        };
        tokens.push(Token { tok, pos });
    }
    tokens
}

fn block_comment(chars: &mut Chars<'_>) {
    chars.next();
    chars.next();
    let mut depth = 1usize;
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('*', Some('/')) => {
                chars.next();
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            ('/', Some('*')) => {
                chars.next();
                depth += 1;
            }
            _ => {}
        }
    }
}

/// The rest of a quoted string (the opening quote already eaten), with the common escapes decoded.
fn quoted(chars: &mut Chars<'_>, quote: char) -> String {
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            c if c == quote => break,
            '\\' => match chars.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some('0') => text.push('\0'),
                Some(other) => text.push(other),
                None => break,
            },
            c => text.push(c),
        }
    }
    text
}

/// `r"…"`, `r#"…"#`, `b"…"` (and the word `r`/`b` followed by `#` that is not a string).
fn raw_or_byte_string(chars: &mut Chars<'_>) -> Tok {
    let prefix = chars.next();
    if prefix == Some('b') {
        chars.next();
        return Tok::Str(quoted(chars, '"'));
    }
    let mut hashes = 0usize;
    while chars.peek() == Some('#') {
        chars.next();
        hashes += 1;
    }
    if chars.peek() != Some('"') {
        // `r#ident`: a raw identifier.
        let mut word = String::new();
        while let Some(c) = chars.peek() {
            if c.is_whitespace() || "()[]{}:,\"'".contains(c) {
                break;
            }
            word.push(c);
            chars.next();
        }
        return Tok::Word(word);
    }
    chars.next();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut closing = 0usize;
            while closing < hashes && chars.peek() == Some('#') {
                chars.next();
                closing += 1;
            }
            if closing == hashes {
                break;
            }
            text.push('"');
            text.extend(std::iter::repeat_n('#', closing));
        } else {
            text.push(c);
        }
    }
    Tok::Str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_past_comments_and_strings() {
        let src = "#![enable(implicit_some)]\n// a comment with \"quotes\" and { braces\n(\n  version: 1,\n  nodes: {\n    /* block /* nested */ comment */\n    \"a\": (type: \"X\", params: { \"text\": r#\"he said \"hi\"\"#, \"n\": -1.5e3 }),\n  },\n)\n";
        let loc = Locator::new(src);
        assert_eq!(
            loc.find_nth(&["version"], 0),
            Some((Pos { line: 4, col: 3 }, Pos { line: 4, col: 12 }))
        );
        assert_eq!(
            loc.find_nth(&["nodes", "a"], 0).map(|p| p.0),
            Some(Pos { line: 7, col: 5 })
        );
        assert_eq!(
            loc.find_nth(&["nodes", "a", "type"], 0).map(|p| p.1),
            Some(Pos { line: 7, col: 17 })
        );
        assert_eq!(
            loc.find_nth(&["nodes", "a", "params", "n"], 0).map(|p| p.1),
            Some(Pos { line: 7, col: 64 })
        );
    }

    #[test]
    fn counts_duplicate_keys() {
        let loc = Locator::new("(nodes: { \"a\": (), \"a\": () })");
        assert_eq!(
            loc.find_nth(&["nodes", "a"], 1).map(|p| p.0),
            Some(Pos { line: 1, col: 20 })
        );
        assert_eq!(loc.find_nth(&["nodes", "a"], 2), None);
    }

    #[test]
    fn survives_garbage() {
        let loc = Locator::new("((({{{ ]]] :: ,, \"unterminated");
        assert_eq!(loc.find_nth(&["x"], 0), None);
    }
}
